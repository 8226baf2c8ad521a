import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from '../helpers/temporal';
import { runCli } from '../helpers/cli';
import { ArtifactStore } from '../../src/store/store';
import { recordFault } from './rows';
import { killProcess, startWorkerProcess, withoutWallClock } from './harness';

const PREFIX = 'faults-determinism';

function pipelineText(backend: 'wasm' | 'cpu'): string {
  return `version: 1
name: faults-determinism-${backend}
seed: 5
data: {shardSize: 200, consolidationSize: 300, validationSize: 200, testSize: 500}
architecture: {hidden: [16]}
teachers: {count: 2, train: {epochs: 3, batchSize: 50, checkpointEvery: 5}}
zoo: {count: 4, train: {epochs: 1, batchSize: 50}}
weightformer: {mode: train, validationTeachers: 2, validationEnsembles: 1, train: {steps: 30, batchSize: 32, tMin: 2, tMax: 3, checkpointEvery: 10, evalEvery: 15}}
generate: {method: weightformer}
finetune: {epochs: 1, batchSize: 50}
baselines: {include: [teachers, ensemble, avg_naive, avg_aligned, avg_aligned_finetuned, kd], kd: {epochs: 2, batchSize: 50}}
compute: {backend: ${backend}}
tracking: {enabled: false}
`;
}

describe('fault: determinism with --no-cache', function () {
  this.timeout(900_000);
  let env: TestWorkflowEnvironment;
  before(async () => {
    env = await sharedTemporal();
  });

  for (const backend of ['wasm', 'cpu'] as const) {
    it(`the same file and seed twice with --no-cache: identical metrics on ${backend}, every stage recomputed`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), `faults-det-${backend}-`));
      const file = path.join(dir, `det-${backend}.yaml`);
      fs.writeFileSync(file, pipelineText(backend));
      const storeRoot = path.join(dir, 'store');
      const worker = startWorkerProcess({ temporalAddress: env.address, store: storeRoot, prefix: PREFIX, mlflowUrl: null });
      try {
        const runs: Array<{ metrics: Record<string, number>; backend: string }> = [];
        const computedAfter: number[] = [];
        for (let i = 0; i < 2; i++) {
          const r = await runCli(['run', file, '--no-cache', '--json', '--wait'], { TEMPORAL_ADDRESS: env.address, WEIGHTFORMER_QUEUE_PREFIX: PREFIX, MLFLOW_TRACKING_URI: '' });
          assert.equal(r.code, 0, `run ${i + 1} failed:\n${r.stdout}\n${r.stderr}\nworker:\n${worker.output()}`);
          const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { status: string; metrics: Record<string, number>; backend: string };
          assert.equal(out.status, 'completed');
          runs.push(out);
          computedAfter.push([...(await new ArtifactStore(storeRoot).computedKeys()).values()].reduce((a, b) => a + b, 0));
        }
        const [a, b] = runs.map((r) => withoutWallClock(r.metrics)) as [Record<string, number>, Record<string, number>];
        const differing = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => a[k] !== b[k]);
        // --no-cache: the second run computed as much as the first, reusing nothing.
        const recomputed = computedAfter[1]! - computedAfter[0]! === computedAfter[0]!;
        recordFault({
          scenario: `determinism: same file + seed twice, --no-cache, ${backend}`,
          tried: 2,
          survived: differing.length === 0 && recomputed && runs.every((r) => r.backend === backend) ? 2 : 0,
          work_redone_steps: 0,
          checkpoint_interval_steps: 0,
          data_lost: differing.length,
          note: `${Object.keys(a).length} metrics compared (wall-clock excluded), ${differing.length} differ; results computed per run: ${computedAfter[0]}, ${computedAfter[1]! - computedAfter[0]!}; backend ${runs.map((r) => r.backend).join('/')}`,
        });
        assert.deepEqual(differing, []);
        assert.ok(Object.keys(a).length >= 10);
        assert.ok(recomputed, `computations per run: ${computedAfter}`);
        assert.deepEqual(runs.map((r) => r.backend), [backend, backend]);
      } finally {
        await killProcess(worker);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
