import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from '../helpers/temporal';
import { tinySpec } from '../helpers/specs';
import { startMlflowServer, type MlflowServer } from '../../src/stack/mlflow-server';
import { createPipelineWorker } from '../../src/worker/worker';
import { readLiveStatus } from '../../src/cli/follow';
import { TrackingOutbox } from '../../src/tracking/outbox';
import type { PipelineInput, PipelineResult } from '../../workflows/types';
import { taskQueueName } from '../../workflows/queues';
import { recordFault } from './rows';
import { auditMlflow, compareAudits, killProcess, mlflowClient, startWorkerProcess, withoutWallClock, type WorkerProcess } from './harness';

const PREFIX = 'faults-mlflow-down';
const QUEUE = taskQueueName('cpu', PREFIX);
const EXPERIMENT = 'faults-mlflow-down';
/** Longer than the client's whole retry window (5 attempts, 0.5 s doubling to 10 s: about 4–8 s). */
const OUTAGE_MS = 20_000;

const SPEC = tinySpec(
  `teachers: {count: 2, train: {epochs: 20, batchSize: 10, checkpointEvery: 100}}
generate: {method: aligned-average}
weightformer: {mode: none}
finetune: {epochs: 10, batchSize: 10, checkpointEvery: 100}
baselines: {include: [teachers, ensemble, avg_naive, avg_aligned, avg_aligned_finetuned, kd], kd: {epochs: 10, batchSize: 10}}
tracking: {enabled: true, experiment: ${EXPERIMENT}}`,
  'faults-mlflow-down',
);

describe('fault: MLflow down mid-run', function () {
  this.timeout(900_000);
  let env: TestWorkflowEnvironment;
  let stateDir: string;
  let server: MlflowServer | undefined;

  before(async () => {
    env = await sharedTemporal();
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-mlflow-'));
    server = await startMlflowServer({ stateDir, timeoutMs: 300_000 });
  });
  after(async () => {
    await server?.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('stays down past the retry window: the pipeline completes, records wait in the store and are replayed, nothing lost', async () => {
    const url = server!.url;
    const input: PipelineInput = { spec: SPEC.spec, specHash: SPEC.hash, noCache: true, queuePrefix: PREFIX };
    // Reference: the same pipeline with MLflow up throughout.
    const refStore = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-mlflow-ref-'));
    const refWorker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot: refStore, mlflowUrl: url });
    const refId = `faults-mlflow-ref-${Date.now()}`;
    const reference = (await refWorker.runUntil(env.client.workflow.execute('pipeline', { taskQueue: QUEUE, workflowId: refId, args: [input] }))) as PipelineResult;
    const refAudit = await auditMlflow(mlflowClient(url), EXPERIMENT, refId);
    fs.rmSync(refStore, { recursive: true, force: true });

    const storeRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-mlflow-store-'));
    const outbox = new TrackingOutbox(storeRoot);
    let worker: WorkerProcess | undefined;
    try {
      // The worker replays the outbox on its own every 2 s (30 s by default).
      worker = startWorkerProcess({ temporalAddress: env.address, store: storeRoot, prefix: PREFIX, mlflowUrl: url, extraEnv: { WEIGHTFORMER_OUTBOX_REPLAY_INTERVAL: '2s' } });
      const workflowId = `faults-mlflow-down-${Date.now()}`;
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId, args: [input] });
      // Down once the teachers are logged, while the later stages run and log.
      for (;;) {
        const live = await readLiveStatus(handle);
        if (live.progress?.stages.teachers?.state === 'completed') break;
        if (live.progress && live.progress.state !== 'running') assert.fail(`pipeline ${live.progress.state} before the outage`);
        await new Promise((r) => setTimeout(r, 250));
      }
      const port = server!.port;
      await server!.stop();
      server = undefined;
      const downAt = Date.now();
      let buffered = 0;
      while (Date.now() - downAt < OUTAGE_MS) {
        buffered = Math.max(buffered, await outbox.pendingCount());
        await new Promise((r) => setTimeout(r, 250));
      }
      server = await startMlflowServer({ stateDir, port, timeoutMs: 300_000 });
      const downMs = Date.now() - downAt;
      const result = (await handle.result()) as PipelineResult;
      // Records still waiting (the finish, when the pipeline ended before MLflow was back) are sent by the
      // worker's own periodic replay, with no other pipeline or call needed: wait up to a minute for it.
      const leftAfterPipeline = await outbox.pendingCount();
      let left = leftAfterPipeline;
      const waitUntil = Date.now() + 60_000;
      while (left > 0 && Date.now() < waitUntil) {
        buffered = Math.max(buffered, left);
        await new Promise((r) => setTimeout(r, 500));
        left = await outbox.pendingCount();
      }
      const audit = compareAudits(refAudit, await auditMlflow(mlflowClient(url), EXPERIMENT, workflowId));
      const metricsSame = JSON.stringify(withoutWallClock(result.metrics)) === JSON.stringify(withoutWallClock(reference.metrics));
      const failedDir = path.join(outbox.dir, 'failed');
      const failed = fs.existsSync(failedDir) ? fs.readdirSync(failedDir).filter((f) => f.endsWith('.json')).length : 0;
      recordFault({
        scenario: 'MLflow down mid-run past the retry window',
        tried: 1,
        survived: result.status === 'completed' && audit.lost === 0 && audit.duplicated === 0 && left === 0 && failed === 0 && metricsSame && buffered > 0 ? 1 : 0,
        work_redone_steps: 0,
        checkpoint_interval_steps: 0,
        data_lost: audit.lost + left + failed,
        note: `down ${Math.round(downMs / 1000)} s; up to ${buffered} records buffered in the store's outbox, ${leftAfterPipeline} still waiting when the pipeline ended (left to the worker's periodic replay), ${left} never replayed; ${audit.duplicated} duplicated${audit.problems.length ? `: ${audit.problems.slice(0, 2).join('; ')}` : ''}`,
      });
      assert.equal(result.status, 'completed');
      assert.ok(buffered > 0, 'nothing was buffered: the outage missed every tracking call');
      assert.equal(left, 0, 'records left in the outbox');
      assert.equal(failed, 0, 'records MLflow refused on replay');
      assert.deepEqual(audit.problems, []);
      assert.ok(metricsSame);
    } finally {
      if (worker) await killProcess(worker);
      fs.rmSync(storeRoot, { recursive: true, force: true });
    }
  });
});
