import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { runCli } from './helpers/cli';
import { sharedMlflow } from './helpers/mlflow';
import { MlflowClient } from '../src/tracking/mlflow';

describe('end to end: `weightformer run --json` on the embedded Temporal stack into a real MLflow', function () {
  this.timeout(600_000);

  it('runs a small pipeline and the numbers read back from MLflow equal the ones printed', async () => {
    const { url } = await sharedMlflow();
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'e2e-'));
    const file = path.join(dir, 'e2e.yaml');
    const experiment = `e2e-${Date.now()}`;
    await fs.writeFile(
      file,
      `version: 1
name: e2e-small
seed: 5
data: {shardSize: 200, consolidationSize: 300, validationSize: 200, testSize: 500}
architecture: {hidden: [16]}
teachers: {count: 2, train: {epochs: 2, batchSize: 50}}
finetune: {epochs: 1, batchSize: 50}
compute: {backend: wasm}
tracking: {experiment: ${experiment}, registerModel: e2e-student}
`,
    );
    const { code, stdout, stderr } = await runCli(['run', file, '--json', '--state-dir', path.join(dir, 'state')], {
      MLFLOW_TRACKING_URI: url,
      TEMPORAL_ADDRESS: '',
    });
    assert.equal(code, 0, stderr);
    const printed = JSON.parse(stdout.trim()) as { status: string; workflowId: string; mlflowRunId: string; metrics: Record<string, number> };
    assert.equal(printed.status, 'completed');
    assert.match(printed.mlflowRunId, /^[0-9a-f]{32}$/);
    assert.match(stderr, /stage teachers: completed/);

    const client = new MlflowClient(url);
    const run = await client.getRun(printed.mlflowRunId);
    assert.equal(run.info.status, 'FINISHED');
    const logged = Object.fromEntries((run.data.metrics ?? []).map((m) => [m.key, m.value]));
    for (const key of ['acc.teacher_mean', 'acc.ensemble', 'acc.avg_naive', 'acc.avg_aligned', 'acc.student_zero_shot', 'acc.student_finetuned']) {
      assert.equal(logged[key], printed.metrics[key], key);
    }
    // Who saw which data is on record: every split part as a dataset input with its digest.
    const inputs = run.inputs.dataset_inputs.map((d) => ({ name: d.dataset.name, context: d.tags.find((t) => t.key === 'mlflow.data.context')?.value }));
    assert.ok(inputs.some((d) => d.name === 'mnist-embedded/test' && d.context === 'test'), JSON.stringify(inputs));
    assert.ok(inputs.some((d) => d.name === 'mnist-embedded/consolidation' && d.context === 'train'));
    const tags = Object.fromEntries((run.data.tags ?? []).map((t) => [t.key, t.value]));
    assert.equal(tags['weightformer.workflow_id'], printed.workflowId);
    // One nested run per stage that ran, each exactly once.
    const nested = await client.searchRuns({ experimentIds: [run.info.experiment_id], filter: `tags.\`mlflow.parentRunId\` = '${printed.mlflowRunId}'` });
    const stages = nested.map((r) => (r.data.tags ?? []).find((t) => t.key === 'weightformer.stage')?.value).sort();
    assert.deepEqual(stages, ['baselines', 'evaluate', 'finetune', 'generate', 'teachers']);
    // The teacher loss curve is logged with steps.
    const teachersRun = nested.find((r) => (r.data.tags ?? []).some((t) => t.key === 'weightformer.stage' && t.value === 'teachers'))!;
    const curve = await client.getMetricHistory(teachersRun.info.run_id, 'teacher_0.loss');
    assert.ok(curve.length >= 4);
    assert.deepEqual(curve.map((p) => p.step), [...curve.map((p) => p.step)].sort((a, b) => a - b));
    // The student is a registered model version of this run.
    const versions = await client.searchModelVersions(`name = 'e2e-student' and run_id = '${printed.mlflowRunId}'`);
    assert.equal(versions.length, 1);
    // …stored as TF.js loads it.
    const modelJson = JSON.parse((await client.downloadArtifact(printed.mlflowRunId, 'student/model.json')).toString('utf8'));
    assert.equal(modelJson.format, 'layers-model');
    assert.deepEqual(modelJson.weightsManifest[0].paths, ['weights.bin']);
    const weights = await client.downloadArtifact(printed.mlflowRunId, 'student/weights.bin');
    assert.equal(weights.length, (784 * 16 + 16 + 16 * 10 + 10) * 4);
  });
});
