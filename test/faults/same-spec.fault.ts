import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from '../helpers/temporal';
import { tinySpec } from '../helpers/specs';
import { ArtifactStore, type ArtifactRef } from '../../src/store/store';
import type { PipelineInput, PipelineResult } from '../../workflows/types';
import { taskQueueName } from '../../workflows/queues';
import { recordFault } from './rows';
import { killProcess, startWorkerProcess, withoutWallClock, withoutWallClockArtifacts, type WorkerProcess } from './harness';

const PREFIX = 'faults-same-spec';
const QUEUE = taskQueueName('cpu', PREFIX);
const SPEC = tinySpec(`teachers: {count: 2, train: {epochs: 20, batchSize: 10, checkpointEvery: 100}}\ngenerate: {method: aligned-average}\nweightformer: {mode: none}`, 'faults-same-spec');

/** Every object in the store re-hashed: a corrupted or half-written artifact fails its content address. */
async function corruptObjects(store: ArtifactStore): Promise<string[]> {
  const bad: string[] = [];
  const objects = path.join(store.root, 'objects');
  for (const dir of fs.existsSync(objects) ? fs.readdirSync(objects) : []) {
    for (const name of fs.readdirSync(path.join(objects, dir))) {
      if (name.includes('.tmp-')) {
        bad.push(`${dir}/${name} (half-written)`);
        continue;
      }
      await store.getBytes(`sha256:${dir}${name}` as ArtifactRef).catch((e: Error) => bad.push(e.message));
    }
  }
  return bad;
}

describe('fault: the same spec run twice at once', function () {
  this.timeout(900_000);
  let env: TestWorkflowEnvironment;

  before(async () => {
    env = await sharedTemporal();
  });

  it('two runs on two workers sharing one store: each result computed once, the other reuses it, nothing corrupt', async () => {
    const storeRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-same-spec-'));
    const store = new ArtifactStore(storeRoot);
    const workers: WorkerProcess[] = [];
    try {
      // Two worker processes, as two machines sharing the store would be; both poll the one queue.
      for (let i = 0; i < 2; i++) workers.push(startWorkerProcess({ temporalAddress: env.address, store: storeRoot, prefix: PREFIX, mlflowUrl: null }));
      const input: PipelineInput = { spec: SPEC.spec, specHash: SPEC.hash, noCache: false, queuePrefix: PREFIX };
      const stamp = Date.now();
      const [a, b] = (await Promise.all(
        [0, 1].map((i) => env.client.workflow.execute('pipeline', { taskQueue: QUEUE, workflowId: `faults-same-spec-${i}-${stamp}`, args: [input] })),
      )) as [PipelineResult, PipelineResult];

      const computed = await store.computedKeys();
      const duplicated = [...computed.values()].reduce((n, c) => n + (c - 1), 0);
      const corrupt = await corruptObjects(store);
      const metricsDiffer = JSON.stringify(withoutWallClock(a.metrics)) !== JSON.stringify(withoutWallClock(b.metrics));
      const artifactsDiffer = JSON.stringify(withoutWallClockArtifacts(a.artifacts)) !== JSON.stringify(withoutWallClockArtifacts(b.artifacts));
      const hits = (r: PipelineResult) => Object.values(r.stages).filter((s) => s.cacheHit).length;
      recordFault({
        scenario: 'same spec run twice at once (shared store, two workers)',
        tried: 1,
        survived: duplicated === 0 && corrupt.length === 0 && !metricsDiffer && !artifactsDiffer && computed.size > 0 ? 1 : 0,
        work_redone_steps: 0,
        checkpoint_interval_steps: 0,
        data_lost: corrupt.length + (metricsDiffer ? 1 : 0) + (artifactsDiffer ? 1 : 0),
        note: `${computed.size} results computed, ${duplicated} computed twice; stages served from cache: run A ${hits(a)}, run B ${hits(b)}`,
      });
      assert.ok(computed.size > 0, 'no computation journalled');
      assert.equal(duplicated, 0, `work duplicated: ${JSON.stringify([...computed])}`);
      assert.deepEqual(corrupt, []);
      assert.deepEqual(withoutWallClock(a.metrics), withoutWallClock(b.metrics));
      assert.deepEqual(withoutWallClockArtifacts(a.artifacts), withoutWallClockArtifacts(b.artifacts));
    } finally {
      for (const w of workers) await killProcess(w);
      fs.rmSync(storeRoot, { recursive: true, force: true });
    }
  });
});
