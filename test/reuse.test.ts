import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { WorkflowFailedError } from '@temporalio/client';
import { sharedTemporal } from './helpers/temporal';
import { sharedMlflow } from './helpers/mlflow';
import { tinySpec } from './helpers/specs';
import { runCli } from './helpers/cli';
import { createPipelineWorker } from '../src/worker/worker';
import { MlflowClient, tagsOf } from '../src/tracking/mlflow';
import { loadPipelineText } from '../src/spec/load';
import { SpecError } from '../src/util/errors';
import { registeredWeightformerName, WF_TAGS } from '../activities/registry';
import type { PipelineInput, PipelineResult } from '../workflows/types';
import { taskQueueName } from '../workflows/queues';
import type { LoadedSpec } from '../src/spec/types';

const PREFIX = 'reuse-test';
const QUEUE = taskQueueName('cpu', PREFIX);

/** The zoo and WeightFormer settings a trained model is keyed by (tiny: seconds of meta-training). */
const META = `zoo: {count: 3, train: {epochs: 2, batchSize: 50}}
weightformer: {mode: train, validationTeachers: 2, validationEnsembles: 1, model: {d: 16, heads: 2, blocks: 1}, train: {steps: 10, batchSize: 50, tMin: 2, tMax: 3, evalEvery: 5}}
generate: {method: weightformer}`;
const BASELINES = 'baselines: {include: [teachers, ensemble, avg_naive, avg_aligned, teacher_ablation]}';

/** `weightformer:` of META with one more key. */
const metaWith = (extra: string) => META.replace('weightformer: {mode: train,', `weightformer: {mode: train, ${extra},`);

function specError(text: string): string {
  try {
    loadPipelineText(text, 'p.yaml');
  } catch (err) {
    assert.ok(err instanceof SpecError, String(err));
    return err.message;
  }
  assert.fail('the pipeline loaded');
}

describe('weightformer.reuse and trigger in pipeline files', () => {
  const base = `version: 1\nname: p\n${META}\n`;

  it('reuse accepts auto and models:/ references, and refuses anything else at its position', () => {
    assert.equal(loadPipelineText(`version: 1\nname: p\n${metaWith('reuse: auto')}\n`, 'p.yaml').spec.weightformer.reuse, 'auto');
    assert.equal(loadPipelineText(`version: 1\nname: p\n${metaWith("reuse: 'models:/wf/3'")}\n`, 'p.yaml').spec.weightformer.reuse, 'models:/wf/3');
    assert.equal(loadPipelineText(`version: 1\nname: p\n${metaWith("reuse: 'models:/wf@champion'")}\n`, 'p.yaml').spec.weightformer.reuse, 'models:/wf@champion');
    assert.match(specError(`version: 1\nname: p\n${metaWith('reuse: latest')}\n`), /^p\.yaml:4:\d+: \/weightformer\/reuse: /m);
    assert.match(specError(`version: 1\nname: p\n${metaWith("reuse: 'models:/wf'")}\n`), /^p\.yaml:4:\d+: \/weightformer\/reuse: /m);
    assert.match(
      specError('version: 1\nname: p\nweightformer: {reuse: auto}\n'),
      /^p\.yaml:3:\d+: \/weightformer\/reuse: needs weightformer\.mode 'train' or 'reuse'/m,
    );
  });

  it('a pipeline without reuse or trigger gets neither key (its spec and hash are what they were)', () => {
    const { spec } = loadPipelineText(base, 'p.yaml');
    assert.equal('reuse' in spec.weightformer, false);
    assert.equal('trigger' in spec, false);
  });

  it('a trigger is filled with its defaults, and its requirements are positioned errors', () => {
    const ok = loadPipelineText(
      `version: 1\nname: p\n${metaWith('reuse: auto')}\ntracking: {registerModel: student}\ntrigger: {registeredModel: teachers, teacherAlias: teacher}\n`,
      'p.yaml',
    );
    assert.deepEqual(ok.spec.trigger, { registeredModel: 'teachers', teacherAlias: 'teacher', pollInterval: '30s', pollsPerRun: 100 });

    const message = specError(
      `version: 1\nname: p\n${META}\nteachers: {count: 1}\ntracking: {enabled: false}\ntrigger: {registeredModel: teachers, teacherAlias: t, teacherTag: {key: role, value: teacher}}\n`,
    );
    assert.match(message, /p\.yaml:8:\d+: \/trigger: must name its teachers by exactly one of teacherTag and teacherAlias/);
    assert.match(message, /p\.yaml:7:\d+: \/tracking\/enabled: must be true with a trigger/);
    assert.match(message, /\/tracking\/registerModel: must name the registered model/);
    assert.match(message, /p\.yaml:6:\d+: \/teachers\/count: must be ≥ 2 with a trigger/);
    assert.match(message, /p\.yaml:4:\d+: \/weightformer\/mode: a pipeline with a trigger must take its WeightFormer from the registry/);
    assert.match(specError('version: 1\nname: p\ntrigger: {teacherAlias: t}\n'), /\/trigger: .*registeredModel/);
  });

  it('the registry name is keyed by the architecture and the zoo, not by the evaluated teachers or the pipeline name', () => {
    const name = (text: string, meta = META, pipeline = 'p') =>
      registeredWeightformerName(loadPipelineText(`version: 1\nname: ${pipeline}\n${meta}\n${text}`, 'p.yaml').spec, true);
    const a = name('teachers: {count: 3}\n');
    assert.match(a, /^weightformer-mlp-[0-9a-f]{12}$/);
    assert.equal(name('teachers: {count: 5, ensembleIndex: 1}\n'), a);
    assert.equal(name('', META, 'other'), a);
    assert.notEqual(name('architecture: {hidden: [8]}\n'), a);
    assert.notEqual(name('', META.replace('zoo: {count: 3,', 'zoo: {count: 4,')), a);
    assert.notEqual(name('seed: 9\n'), a);
  });
});

describe('a WeightFormer registered by one pipeline is reused by another (real Temporal dev server and MLflow)', function () {
  this.timeout(600_000);
  let env: TestWorkflowEnvironment;
  let mlflowUrl: string;
  let client: MlflowClient;
  const roots: string[] = [];
  const suffix = randomUUID().slice(0, 8);
  const experiment = `reuse-${suffix}`;

  before(async () => {
    env = await sharedTemporal();
    mlflowUrl = (await sharedMlflow()).url;
    client = new MlflowClient(mlflowUrl);
  });
  after(async () => {
    for (const root of roots) await fs.rm(root, { recursive: true, force: true });
  });

  /** A fresh store: as if the pipeline ran on another machine that never trained anything. */
  async function freshStore(): Promise<string> {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'reuse-store-'));
    roots.push(root);
    return root;
  }

  async function run(loaded: LoadedSpec, storeRoot: string, id: string): Promise<{ result: PipelineResult; activities: string[] }> {
    const worker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot, mlflowUrl });
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: false, queuePrefix: PREFIX };
    return worker.runUntil(async () => {
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: `${id}-${suffix}`, args: [input] });
      const result = (await handle.result()) as PipelineResult;
      const history = await handle.fetchHistory();
      const activities = history.events!.flatMap((e) => (e.activityTaskScheduledEventAttributes ? [e.activityTaskScheduledEventAttributes.activityType!.name!] : []));
      return { result, activities };
    });
  }

  /** Runs a pipeline expected to fail; returns the innermost failure's type and message and the activity attempts. */
  async function runFailing(loaded: LoadedSpec, storeRoot: string, id: string): Promise<{ type: string; message: string; attempts: number[] }> {
    const worker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot, mlflowUrl });
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: false, queuePrefix: PREFIX };
    return worker.runUntil(async () => {
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: `${id}-${suffix}`, args: [input] });
      const err = await handle.result().then(() => assert.fail('the pipeline completed'), (e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError, String(err));
      let cause: unknown = err.cause;
      while (cause instanceof Error && cause.cause instanceof Error) cause = cause.cause;
      const history = await handle.fetchHistory();
      const attempts = history.events!.flatMap((e) => (e.activityTaskStartedEventAttributes ? [e.activityTaskStartedEventAttributes.attempt!] : []));
      return { type: (cause as { type?: string }).type ?? '', message: (cause as Error).message, attempts };
    });
  }

  const pipelineText = (name: string, extra: string, meta = META) => tinySpec(`${meta}\n${BASELINES}\ntracking: {experiment: ${experiment}}\n${extra}`, name);

  it('trains and registers once; a second pipeline on a fresh store downloads it (cache hit, no zoo, no meta-training) and generates the same student; bad references are clear non-retryable errors', async () => {
    const trainer = pipelineText('reuse-trainer', '');
    const trained = await run(trainer, await freshStore(), 'reuse-trainer');
    const wfName = registeredWeightformerName(trainer.spec, true);
    assert.equal(trained.result.tags['weightformer.cache'], 'miss');
    assert.match(trained.result.tags['weightformer.registered_version'] ?? '', new RegExp(`^models:/${wfName}/\\d+$`));
    assert.ok(trained.activities.includes('trainZoo') && trained.activities.includes('trainWeightformer'), trained.activities.join(','));
    const registered = trained.result.tags['weightformer.registered_version']!;
    const version = await client.getModelVersion(wfName, registered.split('/').pop()!);
    const versionTags = Object.fromEntries(version.tags.map((t) => [t.key, t.value]));
    assert.equal(versionTags[WF_TAGS.kind], 'weightformer');
    assert.equal(versionTags[WF_TAGS.modelRef], trained.result.artifacts.weightformer);
    assert.equal(versionTags[WF_TAGS.workflowId], `reuse-trainer-${suffix}`);
    // The ablation is registered beside it, so a reusing pipeline can report that baseline too.
    const ablations = await client.searchModelVersions({ filter: `name = '${registeredWeightformerName(trainer.spec, false)}'` });
    assert.equal(ablations.length, 1);

    // Another pipeline file (another name, so another workflow and run) on a fresh store: `reuse: auto`.
    const reuser = pipelineText('reuse-auto', '', metaWith('reuse: auto'));
    const reused = await run(reuser, await freshStore(), 'reuse-auto');
    assert.equal(reused.result.stages.zoo?.state, 'skipped');
    assert.equal(reused.result.stages.weightformer?.state, 'cached');
    assert.equal(reused.result.tags['weightformer.cache'], 'hit');
    assert.equal(reused.result.tags['weightformer.registered_version'], registered);
    for (const name of ['trainZoo', 'trainWeightformer']) assert.ok(!reused.activities.includes(name), `${name} ran: ${reused.activities.join(',')}`);
    assert.ok(reused.activities.includes('reuseRegisteredWeightformer'));
    // Same model bytes, same (deterministically retrained) teachers → the same student, bit for bit; the
    // ablation baseline came from the registry too.
    assert.equal(reused.result.artifacts.weightformer, trained.result.artifacts.weightformer);
    assert.equal(reused.result.artifacts.student, trained.result.artifacts.student);
    assert.equal(reused.result.metrics['acc.teacher_ablation'], trained.result.metrics['acc.teacher_ablation']);
    const runTags = tagsOf(await client.getRun(reused.result.mlflowRunId!));
    assert.equal(runTags['weightformer.cache'], 'hit');
    assert.equal(runTags['weightformer.reuse'], 'auto');
    // Reusing does not register the model again.
    assert.equal((await client.searchModelVersions({ filter: `name = '${wfName}'` })).length, 1);

    // By explicit reference (its store already has the teachers: only the consolidation runs again).
    const store = await freshStore();
    const byRef = await run(pipelineText('reuse-ref', '', metaWith(`reuse: '${registered}'`)), store, 'reuse-ref');
    assert.equal(byRef.result.tags['weightformer.cache'], 'hit');
    assert.equal(byRef.result.artifacts.student, trained.result.artifacts.student);

    // Nothing registered for these zoo settings: a clear error that names the field, never training.
    const noMatch = await runFailing(pipelineText('reuse-missing', '', metaWith('reuse: auto').replace('zoo: {count: 3,', 'zoo: {count: 4,')), store, 'reuse-missing');
    assert.equal(noMatch.type, 'InputError');
    assert.match(noMatch.message, /^weightformer\.reuse: auto found no registered WeightFormer 'weightformer-mlp-[0-9a-f]{12}' for this architecture and zoo/);
    assert.ok(noMatch.attempts.every((a) => a === 1), `retried: ${noMatch.attempts}`);

    const missingVersion = await runFailing(pipelineText('reuse-no-version', '', metaWith(`reuse: 'models:/${wfName}/99'`)), store, 'reuse-no-version');
    assert.equal(missingVersion.type, 'InputError');
    assert.match(missingVersion.message, new RegExp(`^weightformer\\.reuse: models:/${wfName}/99 does not exist in the MLflow registry`));

    // A WeightFormer of another architecture: refused before anything is generated.
    const otherArch = await runFailing(
      pipelineText('reuse-other-arch', 'architecture: {hidden: [8]}', metaWith(`reuse: '${registered}'`)), store, 'reuse-other-arch',
    );
    assert.equal(otherArch.type, 'InputError');
    assert.match(otherArch.message, new RegExp(`^weightformer\\.reuse: ${registered.replace(/[/.]/g, '\\$&')} was trained for the architecture .*, incompatible with this pipeline's architecture`));
    assert.ok(otherArch.attempts.every((a) => a === 1), `retried: ${otherArch.attempts}`);
  });

  it('`weightformer run` checks weightformer.reuse before submitting: a missing model is reported at its line (exit 2)', async () => {
    const trainerName = registeredWeightformerName(pipelineText('reuse-trainer', '').spec, true);
    const dir = await freshStore();
    const file = path.join(dir, 'reuse.yaml');
    await fs.writeFile(file, `version: 1
name: reuse-cli-${suffix}
zoo: {count: 3}
weightformer: {mode: train, reuse: 'models:/${trainerName}/99', validationTeachers: 2, model: {d: 16, heads: 2, blocks: 1}, train: {tMin: 2, tMax: 3}}
generate: {method: weightformer}
baselines: {include: [teachers, ensemble]}
tracking: {experiment: ${experiment}}
`);
    const out = await runCli(['run', file], { TEMPORAL_ADDRESS: env.address, MLFLOW_TRACKING_URI: mlflowUrl, WEIGHTFORMER_QUEUE_PREFIX: `reuse-cli-${suffix}` });
    assert.equal(out.code, 2, out.stderr);
    const col = 'weightformer: {mode: train, reuse: '.length + 1;
    assert.equal(out.stderr.trim(), `${file}:4:${col}: /weightformer/reuse: models:/${trainerName}/99 does not exist in the MLflow registry`);
  });
});
