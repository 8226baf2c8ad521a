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
import type { PipelineInput, PipelineResult, StageHeartbeat } from '../workflows/types';
import { taskQueueName } from '../workflows/queues';
import { isWallClockMetric } from '../src/util/metric-names';
import type { ChildProcess } from 'node:child_process';

const PREFIX = 'sigkill-test';
const QUEUE = taskQueueName('cpu', PREFIX);

// Long enough that the kill lands mid-teacher; a short heartbeat timeout so the retry starts soon after the
// kill, but not so short that a busy 2-core machine misses heartbeats of the live worker (2 s did, in CI
// under load: 'activity Heartbeat timeout' on every attempt).
const SPEC = tinySpec(
  `teachers: {count: 2, train: {epochs: 250, batchSize: 10, checkpointEvery: 200}}
stages: {default: {heartbeatTimeout: '6s', retry: {initialInterval: '500ms'}}}`,
  'test-sigkill',
);

describe('SIGKILL of the worker process mid-stage', function () {
  this.timeout(300_000);
  let env: TestWorkflowEnvironment;

  before(async () => {
    env = await sharedTemporal();
  });

  it('finishes from the last checkpoint on a new worker, with the metrics of an uninterrupted run', async () => {
    const input: PipelineInput = { spec: SPEC.spec, specHash: SPEC.hash, noCache: true, queuePrefix: PREFIX };

    // Uninterrupted reference, in-process, own store.
    const refStore = await fs.mkdtemp(path.join(os.tmpdir(), 'sigkill-ref-'));
    const refWorker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot: refStore, mlflowUrl: null });
    const reference = (await refWorker.runUntil(
      env.client.workflow.execute('pipeline', { taskQueue: QUEUE, workflowId: `sigkill-ref-${Date.now()}`, args: [input] }),
    )) as PipelineResult;

    // The real thing: a worker process, killed with SIGKILL while it trains the second teacher.
    const store = await fs.mkdtemp(path.join(os.tmpdir(), 'sigkill-store-'));
    const workerEnv = { TEMPORAL_ADDRESS: env.address, WEIGHTFORMER_STORE: store, MLFLOW_TRACKING_URI: '', WEIGHTFORMER_QUEUE_PREFIX: PREFIX };
    const workers: ChildProcess[] = [];
    try {
      const first = startCli(['worker', '--queue', 'cpu'], workerEnv);
      workers.push(first);
      const workflowId = `sigkill-${Date.now()}`;
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId, args: [input] });
      let killedAt: StageHeartbeat | undefined;
      let lastSeen: StageHeartbeat | null = null;
      while (!killedAt) {
        const live = await readLiveStatus(handle);
        lastSeen = live.heartbeat ?? lastSeen;
        const checkpoint = live.heartbeat?.checkpoint as { unit?: string } | undefined;
        if (checkpoint?.unit === 'trainTeacher:teacher:1') {
          first.kill('SIGKILL');
          killedAt = live.heartbeat!;
        } else if (live.progress && live.progress.state !== 'running') {
          assert.fail(`pipeline ended (${live.progress.state}) before a checkpoint of teacher 2 was seen; last heartbeat ${JSON.stringify(lastSeen)}; worker output:\n${first.output()}`);
        } else await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => first.once('exit', r));

      workers.push(startCli(['worker', '--queue', 'cpu'], workerEnv));
      const result = (await handle.result()) as PipelineResult;
      // Every number but wall-clock times must be identical.
      const withoutTimes = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).filter(([k]) => !isWallClockMetric(k)));
      assert.deepEqual(withoutTimes(result.metrics), withoutTimes(reference.metrics));
      assert.ok(Object.keys(withoutTimes(result.metrics)).length >= 10);
      assert.deepEqual(result.artifacts.teachers, reference.artifacts.teachers);
      // The teachers stage really was retried (attempt 2) rather than run once.
      const history = await handle.fetchHistory();
      const attempts = history.events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
      assert.ok(attempts.some((a) => a! >= 2), `attempts: ${attempts}`);
    } finally {
      // Never leave a worker polling the shared server, whatever happened above.
      for (const w of workers) {
        if (w.exitCode === null && w.signalCode === null) {
          w.kill('SIGKILL');
          await new Promise((r) => w.once('exit', r));
        }
      }
    }
  });
});
