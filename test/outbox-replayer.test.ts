import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { ArtifactStore } from '../src/store/store';
import { MlflowClient } from '../src/tracking/mlflow';
import { StageTracker } from '../activities/tracking';
import { createPipelineWorker } from '../src/worker/worker';
import { sharedMlflow } from './helpers/mlflow';
import { sharedTemporal } from './helpers/temporal';
import { tinySpec } from './helpers/specs';

/*
 * Records buffered while MLflow was down are sent by the worker on its own once MLflow is back: no pipeline,
 * no tracking call is needed (real MLflow server and Temporal dev server; the worker runs no workflow).
 */
describe("a worker replays the store's tracking outbox on its own", function () {
  this.timeout(180_000);
  let env: TestWorkflowEnvironment;
  let url: string;
  let dir: string;

  before(async () => {
    [env, { url }] = await Promise.all([sharedTemporal(), sharedMlflow()]);
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'outbox-replayer-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('sends a stage log buffered during an outage within its replay interval', async () => {
    const store = new ArtifactStore(path.join(dir, 'store'));
    const name = `outbox-${randomUUID().slice(0, 8)}`;
    const loaded = tinySpec(`tracking: {enabled: true, experiment: ${name}}`, name);
    const client = new MlflowClient(url);
    const workflowId = `wf-${randomUUID()}`;
    const handle = await new StageTracker(client, store).startPipelineRun({ spec: loaded.spec, specHash: loaded.hash, workflowId, file: null, parentRunId: null });
    // MLflow "down" (nothing listens on port 9): the stage's log goes to the outbox.
    const down = new StageTracker(new MlflowClient('http://127.0.0.1:9', { retry: { attempts: 2, initialDelayMs: 1, maxDelayMs: 2 } }), store);
    await down.logStage(handle, workflowId, 'teachers', { metrics: { 'acc_val.teacher_0': 0.75 }, curves: {}, tags: {} });
    assert.equal(await down.outbox.pendingCount(), 1);

    const worker = await createPipelineWorker({
      temporalAddress: env.address,
      connection: env.nativeConnection,
      taskQueue: 'cpu',
      queuePrefix: `outbox-${randomUUID().slice(0, 8)}`,
      storeRoot: store.root,
      mlflowUrl: url,
      outboxReplayInterval: '1s',
    });
    const started = Date.now();
    await worker.runUntil(async () => {
      while ((await down.outbox.pendingCount()) > 0) {
        assert.ok(Date.now() - started < 30_000, 'the worker did not replay the outbox within 30 s');
        await new Promise((r) => setTimeout(r, 200));
      }
    });
    const runs = await client.searchRuns({ experimentIds: [handle.experimentId], filter: `tags.\`weightformer.stage\` = 'teachers'` });
    assert.equal(runs.length, 1);
    assert.deepEqual(runs[0]!.data.metrics?.map((m) => [m.key, m.value]), [['acc_val.teacher_0', 0.75]]);
  });
});
