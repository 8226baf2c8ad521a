import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from './helpers/temporal';
import { tinySpec } from './helpers/specs';
import { startCli } from './helpers/cli';
import { createPipelineWorker } from '../src/worker/worker';
import { readLiveStatus } from '../src/cli/follow';
import type { PipelineInput, PipelineResult } from '../workflows/types';

// Long enough that the kill lands mid-teacher; fast heartbeat timeout so the retry starts quickly.
const SPEC = tinySpec(
  `teachers: {count: 2, train: {epochs: 100, batchSize: 10, checkpointEvery: 100}}
stages: {default: {heartbeatTimeout: '4s', retry: {initialInterval: '500ms'}}}`,
  'test-sigkill',
);

describe('SIGKILL of the worker process mid-stage', function () {
  this.timeout(300_000);
  let env: TestWorkflowEnvironment;

  before(async () => {
    env = await sharedTemporal();
  });

  it('finishes from the last checkpoint on a new worker, with the metrics of an uninterrupted run', async () => {
    const input: PipelineInput = { spec: SPEC.spec, specHash: SPEC.hash, noCache: true };

    // Uninterrupted reference, in-process, own store.
    const refStore = await fs.mkdtemp(path.join(os.tmpdir(), 'sigkill-ref-'));
    const refWorker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', storeRoot: refStore, mlflowUrl: null });
    const reference = (await refWorker.runUntil(
      env.client.workflow.execute('pipeline', { taskQueue: 'cpu', workflowId: `sigkill-ref-${Date.now()}`, args: [input] }),
    )) as PipelineResult;

    // The real thing: a worker process, killed with SIGKILL while it trains the second teacher.
    const store = await fs.mkdtemp(path.join(os.tmpdir(), 'sigkill-store-'));
    const workerEnv = { TEMPORAL_ADDRESS: env.address, WEIGHTFORMER_STORE: store, MLFLOW_TRACKING_URI: '' };
    const first = startCli(['worker', '--queue', 'cpu'], workerEnv);
    const workflowId = `sigkill-${Date.now()}`;
    const handle = await env.client.workflow.start('pipeline', { taskQueue: 'cpu', workflowId, args: [input] });
    let killedAt: { phase: string; step: number; checkpoint: unknown } | undefined;
    for (let i = 0; i < 600 && !killedAt; i++) {
      const live = await readLiveStatus(handle);
      const hb = live.heartbeat;
      if (hb?.phase === 'teacher 2/2' && hb.checkpoint && (hb.checkpoint as { teacher: number }).teacher === 1) {
        first.kill('SIGKILL');
        killedAt = { phase: hb.phase, step: hb.step, checkpoint: hb.checkpoint };
      } else await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(killedAt, `never saw a checkpoint of teacher 2; worker output:\n${first.output()}`);
    await new Promise((r) => first.once('exit', r));

    const second = startCli(['worker', '--queue', 'cpu'], workerEnv);
    try {
      const result = (await handle.result()) as PipelineResult;
      // Every number but wall-clock times must be identical.
      const withoutTimes = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).filter(([k]) => !k.startsWith('seconds.')));
      assert.deepEqual(withoutTimes(result.metrics), withoutTimes(reference.metrics));
      assert.ok(Object.keys(withoutTimes(result.metrics)).length >= 10);
      assert.deepEqual(result.artifacts.teachers, reference.artifacts.teachers);
      // The teachers stage really was retried (attempt 2) rather than run once.
      const history = await handle.fetchHistory();
      const attempts = history.events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
      assert.ok(attempts.some((a) => a! >= 2), `attempts: ${attempts}`);
    } finally {
      second.kill('SIGTERM');
      await new Promise((r) => second.once('exit', r));
    }
  });
});
