import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';

/** The library's sources, read as text (tests run from dist/test, the sources live in src/ml). */
function mlSources(): Array<{ file: string; text: string }> {
  const root = path.resolve(__dirname, '..', '..', 'src', 'ml');
  const out: Array<{ file: string; text: string }> = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const full = path.join(dir, name);
      if (statSync(full).isDirectory()) walk(full);
      else if (name.endsWith('.ts')) out.push({ file: path.relative(root, full), text: readFileSync(full, 'utf8') });
    }
  };
  walk(root);
  return out;
}

function offending(pattern: RegExp): string[] {
  const hits: string[] = [];
  for (const { file, text } of mlSources()) {
    text.split('\n').forEach((line, i) => {
      if (pattern.test(line)) hits.push(`src/ml/${file}:${i + 1}: ${line.trim()}`);
    });
  }
  return hits;
}

describe('ml library source rules', () => {
  it('finds the sources it checks', () => {
    assert.ok(mlSources().length >= 5);
  });

  // Synchronous tensor reads throw on the webgpu backend in Node (they need OffscreenCanvas);
  // the library reads tensors with `await t.data()` only.
  it('never reads tensors synchronously (dataSync / arraySync / bufferSync)', () => {
    assert.deepEqual(offending(/\b(dataSync|arraySync|bufferSync)\s*\(/), []);
  });

  // The library must run anywhere (worker thread, CLI, test) without Temporal.
  it('never imports Temporal', () => {
    assert.deepEqual(offending(/(from\s+|require\(\s*|import\(\s*)['"]@temporalio\//), []);
  });
});
