import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { sharedTemporal } from './helpers/temporal';
import { sharedMlflow } from './helpers/mlflow';
import { tinySpec } from './helpers/specs';
import { expandMatrix } from '../src/spec/load';
import { Worker } from '@temporalio/worker';
import { createPipelineWorker, workflowBundle } from '../src/worker/worker';
import { createActivities } from '../activities';
import { ArtifactStore } from '../src/store/store';
import { MlflowClient } from '../src/tracking/mlflow';
import { parseCharts } from '../src/report/browser-check';
import { REPORT_ARTIFACT } from '../activities/report';
import { gainPoints } from '../src/report';
import { taskQueueName } from '../workflows/queues';
import type { PipelineResult } from '../workflows/types';

const PREFIX = 'report-test';

describe('report of a tracked sweep over teachers.count (real Temporal and MLflow)', function () {
  this.timeout(600_000);

  it('each cell logs its report with training curves; the sweep report charts gain captured against T', async () => {
    const env = await sharedTemporal();
    const { url } = await sharedMlflow();
    const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'report-sweep-store-'));
    const name = `report-sweep-${randomUUID().slice(0, 8)}`;
    const loaded = tinySpec(`matrix: {teachers.count: [2, 3]}\ntracking: {enabled: true, experiment: ${name}}`, name);
    const cells = expandMatrix(loaded.spec);
    const worker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot, mlflowUrl: url });
    const id = `${name}-${Date.now()}`;
    try {
      const result = (await worker.runUntil(
        env.client.workflow.execute('pipeline', { taskQueue: taskQueueName('cpu', PREFIX), workflowId: id, args: [{ spec: loaded.spec, specHash: loaded.hash, noCache: false, cells, queuePrefix: PREFIX }] }),
      )) as PipelineResult;
      assert.equal(result.report?.state, 'written', JSON.stringify(result.report));
      assert.equal(result.artifacts.report, result.report!.ref);
      const client = new MlflowClient(url);
      const sweepHtml = Buffer.from(await new ArtifactStore(storeRoot).getBytes(result.report!.ref as `sha256:${string}`)).toString('utf8');
      assert.equal((await client.downloadArtifact(result.report!.mlflowRunId!, REPORT_ARTIFACT)).toString('utf8'), sweepHtml);
      assert.deepEqual(parseCharts(sweepHtml).map((c) => c.id), ['accuracy', 'gain-vs-teachers']);
      // One point per T and variant, at the T values swept.
      const gainFigure = sweepHtml.slice(sweepHtml.indexOf('data-chart="gain-vs-teachers"'));
      assert.match(gainFigure, /number of teachers T/);
      const expected = gainPoints(result.cells!.map((c) => ({ cell: c.cell, workflowId: c.workflowId, mlflowRunId: c.mlflowRunId, metrics: c.metrics })));
      assert.deepEqual([...new Set(expected.map((g) => g.teachers))], [2, 3]);
      const symbols = /<g class="mark-symbol role-mark[^"]*"[^>]*>([\s\S]*?)<\/g>/.exec(gainFigure)?.[1] ?? '';
      assert.equal(symbols.match(/<path\b/g)?.length ?? 0, expected.length);

      // Each cell's own report: the curves its stages logged (two teachers in cell 0, three in cell 1).
      for (const [index, teachers] of [[0, 2], [1, 3]] as const) {
        const cell = result.cells![index]!;
        const html = (await client.downloadArtifact(cell.mlflowRunId!, REPORT_ARTIFACT)).toString('utf8');
        const charts = parseCharts(html);
        // The tiny spec trains no WeightFormer (no zoo): its curves are replaced by the stage's skip reason.
        assert.deepEqual(charts.map((c) => c.id), ['accuracy', 'teacher-curves', 'finetune-curves']);
        assert.match(html, /the weightformer stage was skipped: weightformer\.mode is none/);
        const teacherFigure = html.slice(html.indexOf('data-chart="teacher-curves"'), html.indexOf('data-chart="finetune-curves"'));
        assert.equal(teacherFigure.match(/<g class="mark-line role-mark/g)?.length, teachers, `cell ${index}`);
      }
    } finally {
      await fs.rm(storeRoot, { recursive: true, force: true });
    }
  });

  it('a report that cannot be written leaves the pipeline completed, with the reason in its result', async () => {
    const env = await sharedTemporal();
    const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'report-fail-store-'));
    const loaded = tinySpec("stages: {track: {retry: {maximumAttempts: 2, initialInterval: '100ms'}}}", `report-fail-${randomUUID().slice(0, 8)}`);
    let attempts = 0;
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: taskQueueName('cpu', PREFIX),
      workflowBundle: await workflowBundle(),
      activities: {
        ...createActivities({ store: new ArtifactStore(storeRoot), tracker: null }),
        writeReport: async () => {
          attempts++;
          throw new Error('disk full while writing the report');
        },
      },
    });
    try {
      const result = (await worker.runUntil(
        env.client.workflow.execute('pipeline', { taskQueue: taskQueueName('cpu', PREFIX), workflowId: `report-fail-${Date.now()}`, args: [{ spec: loaded.spec, specHash: loaded.hash, noCache: false, queuePrefix: PREFIX }] }),
      )) as PipelineResult;
      assert.equal(result.status, 'completed');
      assert.equal(attempts, 2, 'retried under the track stage policy, then given up');
      assert.equal(result.report?.state, 'failed');
      assert.match(result.report!.note!, /disk full while writing the report/);
      assert.equal(result.artifacts.report, undefined);
      assert.equal(result.stages.evaluate?.state, 'completed');
      assert.ok(result.metrics['acc.ensemble']! > 0);
    } finally {
      await fs.rm(storeRoot, { recursive: true, force: true });
    }
  });
});
