import { loadPipelineText } from '../../src/spec/load';
import type { LoadedSpec } from '../../src/spec/types';

/** A pipeline small enough for tests: a few hundred digits, tiny MLPs, tracking off unless asked. */
export function tinySpec(overrides = '', name = 'test-tiny'): LoadedSpec {
  const text = `version: 1
name: ${name}
seed: 3
data: {shardSize: 200, consolidationSize: 300, validationSize: 200, testSize: 500}
architecture: {hidden: [16]}
teachers: {count: 3, train: {epochs: 2, batchSize: 50, checkpointEvery: 2}}
finetune: {epochs: 1, batchSize: 50}
compute: {backend: wasm}
tracking: {enabled: false}
${overrides}`;
  return loadPipelineText(mergeTopLevel(text), `${name}.yaml`);
}

/** Later top-level keys replace earlier ones, so overrides can restate a whole block. */
function mergeTopLevel(text: string): string {
  const blocks = new Map<string, string>();
  let current = '';
  for (const line of text.split('\n')) {
    const m = /^([a-z]+):/.exec(line);
    if (m) {
      current = m[1]!;
      blocks.set(current, line);
    } else if (current && line.trim()) {
      blocks.set(current, `${blocks.get(current)}\n${line}`);
    }
  }
  return [...blocks.values()].join('\n') + '\n';
}
