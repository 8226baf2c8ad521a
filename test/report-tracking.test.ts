import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { ArtifactStore } from '../src/store/store';
import { MlflowClient } from '../src/tracking/mlflow';
import { StageTracker } from '../activities/tracking';
import { readRunCurves, reportActivities, REPORT_ARTIFACT } from '../activities/report';
import { saveRunReport } from '../src/report/save';
import { parseCharts } from '../src/report/browser-check';
import type { PipelineResult, StageStatus } from '../workflows/types';
import type { StageName } from '../src/spec/types';
import { sharedMlflow } from './helpers/mlflow';
import { tinySpec } from './helpers/specs';

const points = (n: number, f: (i: number) => number) => Array.from({ length: n }, (_, i) => ({ step: i * 5, value: f(i) }));

describe('HTML report of a tracked run (real MLflow server)', function () {
  this.timeout(180_000);
  let url: string;
  let dir: string;
  let store: ArtifactStore;
  let tracker: StageTracker;

  before(async () => {
    url = (await sharedMlflow()).url;
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'report-tracking-'));
    store = new ArtifactStore(path.join(dir, 'store'));
    tracker = new StageTracker(new MlflowClient(url), store);
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('reads the curves back from the stage runs, logs report/report.html, and the CLI copies it to <state>/reports/', async () => {
    const name = `report-${randomUUID().slice(0, 8)}`;
    const loaded = tinySpec(`tracking: {enabled: true, experiment: ${name}}`, name);
    const spec = loaded.spec;
    const workflowId = `wf-${randomUUID()}`;
    const handle = await tracker.startPipelineRun({ spec, specHash: loaded.hash, workflowId, file: null, parentRunId: null });
    const teacherCurves = { 'teacher_0.loss': points(12, (i) => 2 / (i + 1)), 'teacher_1.loss': points(12, (i) => 2.2 / (i + 1)), 'teacher_10.loss': points(3, (i) => 1 - i / 10) };
    await tracker.logStage(handle, workflowId, 'teachers', { metrics: { 'acc_val.teacher_0': 0.8 }, curves: teacherCurves, tags: {} });
    const wfLoss = points(40, (i) => 1.5 - i / 50);
    const wfVal = points(4, (i) => 0.7 + i / 50);
    await tracker.logStage(handle, workflowId, 'weightformer', { metrics: { 'weightformer.steps': 200 }, curves: { 'weightformer.loss': wfLoss, 'weightformer.val_acc': wfVal }, tags: {} });
    const stages: Partial<Record<StageName, StageStatus>> = {
      teachers: { state: 'completed', seconds: 3 },
      weightformer: { state: 'completed', seconds: 9 },
      finetune: { state: 'skipped', note: 'finetune.enabled is false' },
    };

    const curves = await readRunCurves(tracker.client, handle, stages);
    // Exactly what was logged, teachers in numeric order (teacher_10 after teacher_1).
    assert.deepEqual(curves.teachers.map((c) => c.name), ['teacher_0.loss', 'teacher_1.loss', 'teacher_10.loss']);
    assert.deepEqual(curves.teachers[1]!.points, teacherCurves['teacher_1.loss']);
    assert.deepEqual(curves.weightformerLoss[0]!.points.map((p) => p.value), wfLoss.map((p) => p.value));
    assert.deepEqual(curves.weightformerValidation[0]!.points, wfVal);
    assert.deepEqual(curves.finetune, []);
    assert.match(curves.missing.finetune!, /finetune stage was skipped: finetune\.enabled is false/);

    const metrics = { 'acc.teacher_0': 0.8, 'acc.teacher_mean': 0.8, 'acc.ensemble': 0.85, 'acc.student_zero_shot': 0.83 };
    const out = await reportActivities({ store, tracker }).writeReport({ spec, specHash: loaded.hash, workflowId, tracking: handle, metrics, tags: {}, stages });
    assert.equal(out.mlflowRunId, handle.runId);
    assert.equal(out.artifactPath, REPORT_ARTIFACT);
    const html = Buffer.from(await store.getBytes(out.ref as `sha256:${string}`)).toString('utf8');
    assert.equal((await tracker.client.downloadArtifact(handle.runId, REPORT_ARTIFACT)).toString('utf8'), html);
    assert.deepEqual(parseCharts(html).map((c) => c.id), ['accuracy', 'teacher-curves', 'weightformer-loss', 'weightformer-validation']);
    assert.match(html, /finetune\.enabled is false/);

    // The CLI's copy: from the store when the worker shares it, else downloaded from MLflow.
    const result: PipelineResult = {
      status: 'completed', workflowId, mlflowRunId: handle.runId, mlflowExperimentId: handle.experimentId, metrics, tags: {}, stages, artifacts: { report: out.ref },
      report: { state: 'written', ref: out.ref, mlflowRunId: out.mlflowRunId, artifactPath: out.artifactPath },
    };
    const fromStore = await saveRunReport(result, { stateDir: path.join(dir, 'state'), storeRoot: store.root, mlflowUrl: null });
    assert.equal(fromStore.file, path.join(dir, 'state', 'reports', `${handle.runId}.html`));
    assert.equal(await fs.readFile(fromStore.file!, 'utf8'), html);
    const fromMlflow = await saveRunReport(result, { stateDir: path.join(dir, 'remote'), storeRoot: path.join(dir, 'empty-store'), mlflowUrl: url });
    assert.equal(await fs.readFile(fromMlflow.file!, 'utf8'), html);
    const failed = await saveRunReport({ ...result, report: { state: 'failed', note: 'MLflow was down' } }, { stateDir: dir, storeRoot: store.root, mlflowUrl: url });
    assert.deepEqual(failed, { file: null, note: 'the report could not be written: MLflow was down' });
  });

  it('a WeightFormer taken from the registry: the report points to the run that trained it for its curves', async () => {
    const name = `report-reuse-${randomUUID().slice(0, 8)}`;
    const loaded = tinySpec(`tracking: {enabled: true, experiment: ${name}}`, name);
    const workflowId = `wf-${randomUUID()}`;
    const handle = await tracker.startPipelineRun({ spec: loaded.spec, specHash: loaded.hash, workflowId, file: null, parentRunId: null });
    await tracker.logStage(handle, workflowId, 'weightformer', {
      metrics: { 'weightformer.steps': 10 }, curves: {}, tags: { 'weightformer.reuse': 'auto', 'weightformer.registered_version': 'models:/weightformer-mlp-abc/2' },
    });
    const curves = await readRunCurves(tracker.client, handle, { weightformer: { state: 'cached' } });
    assert.deepEqual(curves.weightformerLoss, []);
    assert.equal(curves.missing.weightformerLoss, 'the WeightFormer was taken from the registry (models:/weightformer-mlp-abc/2): its training curves are in the run that trained it');
    assert.equal(curves.missing.weightformerValidation, curves.missing.weightformerLoss);
  });

  it('without tracking: the report is still rendered, and says where the curves would have been', async () => {
    const loaded = tinySpec('', `report-off-${randomUUID().slice(0, 8)}`);
    const out = await reportActivities({ store, tracker: null }).writeReport({
      spec: loaded.spec, specHash: loaded.hash, workflowId: 'wf-off', tracking: null, metrics: { 'acc.ensemble': 0.9, 'acc.student_finetuned': 0.88 }, tags: {}, stages: {},
    });
    assert.deepEqual({ mlflowRunId: out.mlflowRunId, artifactPath: out.artifactPath }, { mlflowRunId: null, artifactPath: null });
    const html = Buffer.from(await store.getBytes(out.ref as `sha256:${string}`)).toString('utf8');
    assert.deepEqual(parseCharts(html).map((c) => c.id), ['accuracy']);
    assert.match(html, /tracking is off: training curves are kept only as MLflow metric histories/);
  });
});
