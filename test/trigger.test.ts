import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { CancelledFailure } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import { sharedTemporal } from './helpers/temporal';
import { sharedMlflow } from './helpers/mlflow';
import { tinySpec } from './helpers/specs';
import { runCli } from './helpers/cli';
import { createPipelineWorker, workflowBundle } from '../src/worker/worker';
import { ArtifactStore } from '../src/store/store';
import { MlflowClient, type ModelVersion } from '../src/tracking/mlflow';
import { studentRegistryFiles } from '../src/runner/families';
import { consolidationSpec, isTeacherVersion, LINEAGE_TAGS, registryActivities } from '../activities/registry';
import { StageTracker } from '../activities/tracking';
import { watchStatusQuery, stopWatchSignal } from '../workflows/watch';
import type { PipelineInput, PipelineResult, WatchInput, WatchStatus } from '../workflows/types';
import { taskQueueName } from '../workflows/queues';
import type { ModelArchitecture, TriggerSpec } from '../src/spec/types';

const PREFIX = 'trigger-test';
const QUEUE = taskQueueName('cpu', PREFIX);

const version = (tags: Record<string, string>, v = '1'): ModelVersion => ({
  name: 'teachers', version: v, source: '', run_id: '', status: 'READY', current_stage: 'None', description: '',
  tags: Object.entries(tags).map(([key, value]) => ({ key, value })), aliases: [],
});

describe('which registry versions are teachers, and the consolidation spec built from them', () => {
  const byTag: TriggerSpec = { registeredModel: 'teachers', teacherTag: { key: 'role', value: 'teacher' }, pollInterval: '1s', pollsPerRun: 5 };
  const byAlias: TriggerSpec = { registeredModel: 'teachers', teacherAlias: 'teacher', pollInterval: '1s', pollsPerRun: 5 };

  it('a tag marks a teacher only with its exact value; an alias by its name or its `<alias>-` prefix', () => {
    assert.equal(isTeacherVersion(version({ role: 'teacher' }), byTag, []), true);
    assert.equal(isTeacherVersion(version({ role: 'student' }), byTag, []), false);
    assert.equal(isTeacherVersion(version({}), byTag, ['teacher']), false);
    assert.equal(isTeacherVersion(version({}), byAlias, ['teacher']), true);
    assert.equal(isTeacherVersion(version({}), byAlias, ['champion', 'teacher-3']), true);
    assert.equal(isTeacherVersion(version({}), byAlias, ['teachers', 'teacher_3']), false);
    assert.equal(isTeacherVersion(version({ role: 'teacher' }), byAlias, []), false);
  });

  it('the child pipeline reads those versions as its teachers and has no trigger', () => {
    const { spec } = tinySpec(`weightformer: {mode: train, reuse: auto, validationTeachers: 2, model: {d: 16, heads: 2, blocks: 1}, train: {tMin: 2, tMax: 3}}
zoo: {count: 3}
generate: {method: weightformer}
tracking: {registerModel: student}
trigger: {registeredModel: teachers, teacherTag: {key: role, value: teacher}}`);
    const child = consolidationSpec(spec, ['teachers/3', 'teachers/5']);
    assert.deepEqual(child.teachers.files, ['models:/teachers/3', 'models:/teachers/5']);
    assert.equal(child.teachers.source, 'files');
    assert.equal(child.teachers.count, 2);
    assert.equal('trigger' in child, false);
    assert.equal(child.weightformer.reuse, 'auto');
    assert.equal(spec.teachers.source, 'train', 'the watcher spec is not changed');
  });
});

describe('the watch workflow with stub registry activities (real Temporal dev server)', function () {
  this.timeout(120_000);

  it('clears a registry-poll error once a poll succeeds, and a cancelled watcher ends cancelled', async () => {
    const env = await sharedTemporal();
    const prefix = `watch-stub-${randomUUID().slice(0, 8)}`;
    const { spec, hash } = tinySpec(`weightformer: {mode: train, reuse: auto, validationTeachers: 2, model: {d: 16, heads: 2, blocks: 1}, train: {tMin: 2, tMax: 3}}
zoo: {count: 3}
generate: {method: weightformer}
teachers: {count: 2}
tracking: {enabled: true, registerModel: student}
stages: {track: {retry: {maximumAttempts: 1}}}
trigger: {registeredModel: teachers, teacherTag: {key: role, value: teacher}, pollInterval: 100ms, pollsPerRun: 1000}`);
    let polls = 0;
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: taskQueueName('cpu', prefix),
      workflowBundle: await workflowBundle(),
      activities: {
        // The registry is down for the first poll only; no teachers after that.
        pollTeacherVersions: async () => {
          polls++;
          if (polls === 1) throw new Error('registry unreachable');
          return { teacherVersions: [], plan: null };
        },
        recordStudentLineage: async () => undefined,
      },
    });
    await worker.runUntil(async () => {
      const input: WatchInput = { spec, specHash: hash, queuePrefix: prefix };
      const handle = await env.client.workflow.start('watch', { taskQueue: taskQueueName('cpu', prefix), workflowId: `${prefix}-watch`, args: [input] });
      const seen: Array<string | undefined> = [];
      for (const deadline = Date.now() + 60_000; Date.now() < deadline; ) {
        const s = await handle.query(watchStatusQuery);
        seen.push(s.lastError);
        if (s.polls >= 3) {
          assert.equal(s.lastError, undefined, 'the poll error outlived a successful poll');
          break;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(seen.some((e) => e?.startsWith('registry poll: ') && e.includes('registry unreachable')), JSON.stringify(seen));
      await handle.cancel();
      const err = await handle.result().then(() => null, (e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError && err.cause instanceof CancelledFailure, String(err));
    });
  });
});

describe('registry-triggered consolidation: a new teacher version yields a new student version with its lineage, reusing the WeightFormer (real Temporal dev server and MLflow)', function () {
  this.timeout(600_000);
  let env: TestWorkflowEnvironment;
  let mlflowUrl: string;
  let client: MlflowClient;
  const roots: string[] = [];
  const suffix = randomUUID().slice(0, 8);
  const teachersModel = `teachers-${suffix}`;
  const studentModel = `student-${suffix}`;

  before(async () => {
    env = await sharedTemporal();
    mlflowUrl = (await sharedMlflow()).url;
    client = new MlflowClient(mlflowUrl);
  });
  after(async () => {
    for (const root of roots) await fs.rm(root, { recursive: true, force: true });
  });

  async function freshStore(): Promise<string> {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'trigger-store-'));
    roots.push(root);
    return root;
  }

  const META = `zoo: {count: 3, train: {epochs: 2, batchSize: 50}}
generate: {method: weightformer}
baselines: {include: [teachers, ensemble, avg_naive, avg_aligned]}
tracking: {experiment: trigger-${suffix}, registerModel: ${studentModel}}`;
  const WF = (extra: string) =>
    `weightformer: {mode: train, ${extra}validationTeachers: 2, validationEnsembles: 1, model: {d: 16, heads: 2, blocks: 1}, train: {steps: 10, batchSize: 50, tMin: 2, tMax: 3, evalEvery: 5}}`;

  /** Registers a stored MLP as a new version of the teachers' model, as a team would (TF.js files in a run). */
  async function registerTeacher(store: ArtifactStore, ref: string, arch: ModelArchitecture, tags: Record<string, string>): Promise<string> {
    const experimentId = await client.getOrCreateExperiment(`trigger-teachers-${suffix}`);
    const run = await client.createRun({ experimentId, runName: 'teacher' });
    for (const file of studentRegistryFiles(await store.getBytes(ref as `sha256:${string}`), arch)) {
      await client.logArtifact(run.info.run_id, `teacher/${file.path}`, file.content);
    }
    await client.createRegisteredModel(teachersModel);
    const v = await client.createModelVersion({ name: teachersModel, source: `${run.info.artifact_uri}/teacher`, runId: run.info.run_id, tags });
    return v.version;
  }

  async function waitFor(handle: WorkflowHandle, what: string, done: (s: WatchStatus) => boolean): Promise<WatchStatus> {
    const deadline = Date.now() + 300_000;
    let last: WatchStatus | null = null;
    while (Date.now() < deadline) {
      last = await handle.query(watchStatusQuery).catch(() => last);
      if (last && done(last)) return last;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.fail(`timed out waiting for ${what}; last status ${JSON.stringify(last)}`);
  }

  async function activitiesOf(workflowId: string): Promise<string[]> {
    const history = await env.client.workflow.getHandle(workflowId).fetchHistory();
    return history.events!.flatMap((e) => (e.activityTaskScheduledEventAttributes ? [e.activityTaskScheduledEventAttributes.activityType!.name!] : []));
  }

  it('registers teachers, watches, and consolidates again when a new teacher version appears, never training a WeightFormer', async () => {
    // 1. A pipeline meta-trains the WeightFormer and registers it (its teachers become the registry's teachers).
    const trainer = tinySpec(`${META}\n${WF('')}`, 'trigger-trainer');
    const trainerStore = await freshStore();
    const trainerWorker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot: trainerStore, mlflowUrl });
    const trained = await trainerWorker.runUntil(async () => {
      const input: PipelineInput = { spec: trainer.spec, specHash: trainer.hash, noCache: false, queuePrefix: PREFIX };
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: `trigger-trainer-${suffix}`, args: [input] });
      return (await handle.result()) as PipelineResult;
    });
    const weightformerVersion = trained.tags['weightformer.registered_version'];
    assert.ok(weightformerVersion, `registered: ${JSON.stringify(trained.tags)}`);
    const teacherRefs = trained.artifacts.teachers as string[];
    const store = new ArtifactStore(trainerStore);
    const arch = trainer.spec.architecture;

    // 2. Teacher versions in the registry: two tagged as teachers, one (a student, say) that is not.
    const v1 = await registerTeacher(store, teacherRefs[0]!, arch, { role: 'teacher' });
    await registerTeacher(store, teacherRefs[1]!, arch, { role: 'student' });
    const v3 = await registerTeacher(store, teacherRefs[1]!, arch, { role: 'teacher' });

    // 3. The watcher, on a worker with its own empty store (another machine): polls every 200 ms and
    // continues as new every 3 polls.
    const watchSpec = tinySpec(
      `${META}\n${WF('reuse: auto, ')}\nteachers: {count: 2}\ntrigger: {registeredModel: ${teachersModel}, teacherTag: {key: role, value: teacher}, pollInterval: 200ms, pollsPerRun: 3}`,
      'trigger-watch',
    );
    const watcherStore = await freshStore();
    const worker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot: watcherStore, mlflowUrl });
    const watcherId = `trigger-watch-${suffix}`;
    await worker.runUntil(async () => {
      const input: WatchInput = { spec: watchSpec.spec, specHash: watchSpec.hash, queuePrefix: PREFIX };
      const handle = await env.client.workflow.start('watch', { taskQueue: QUEUE, workflowId: watcherId, args: [input] });
      const firstRunId = handle.firstExecutionRunId;
      const first = await waitFor(handle, 'the first consolidation', (s) => s.consolidations.length >= 1 || s.lastError !== undefined);
      assert.equal(first.lastError, undefined);
      assert.deepEqual(first.consolidations[0]!.teacherVersions, [`${teachersModel}/${v1}`, `${teachersModel}/${v3}`]);
      const studentA = first.consolidations[0]!.studentVersion;
      assert.match(studentA ?? '', new RegExp(`^${studentModel}/\\d+$`));

      // No new teacher: polls go on (across continue-as-new) without consolidating again.
      const idle = await waitFor(handle, 'polls after the first consolidation', (s) => s.polls >= first.polls + 4);
      assert.equal(idle.consolidations.length, 1);
      const described = await env.client.workflow.getHandle(watcherId).describe();
      assert.notEqual(described.runId, firstRunId, 'the watcher continued as new');

      // 4. A new teacher version appears → a new student version.
      const v4 = await registerTeacher(store, teacherRefs[2]!, arch, { role: 'teacher' });
      const second = await waitFor(handle, 'the second consolidation', (s) => s.consolidations.length >= 2 || s.lastError !== undefined);
      assert.equal(second.lastError, undefined);
      const record = second.consolidations[1]!;
      assert.deepEqual(record.teacherVersions, [`${teachersModel}/${v3}`, `${teachersModel}/${v4}`]);
      assert.notEqual(record.studentVersion, studentA);
      assert.equal(record.weightformerVersion, weightformerVersion);

      // Its lineage, on the registered version.
      const [name, studentVersion] = record.studentVersion!.split('/') as [string, string];
      const mv = await client.getModelVersion(name, studentVersion);
      const tags = Object.fromEntries(mv.tags.map((t) => [t.key, t.value]));
      assert.equal(tags[LINEAGE_TAGS.teacherVersions], `models:/${teachersModel}/${v3},models:/${teachersModel}/${v4}`);
      assert.equal(tags[LINEAGE_TAGS.weightformerVersion], weightformerVersion);
      assert.equal(tags[LINEAGE_TAGS.workflowId], record.workflowId);
      assert.equal(tags[LINEAGE_TAGS.watcherWorkflowId], watcherId);
      assert.match(tags[LINEAGE_TAGS.specHash] ?? '', /^[0-9a-f]{64}$/);
      assert.equal(tags['weightformer.workflow_id'], record.workflowId);
      assert.equal(tags['weightformer.spec_hash'], tags[LINEAGE_TAGS.specHash]);

      // 5. No WeightFormer training in between: neither consolidation trained a zoo or meta-trained; each
      // downloaded the registered model, and its run says so.
      for (const c of second.consolidations) {
        const activities = await activitiesOf(c.workflowId);
        assert.ok(activities.includes('reuseRegisteredWeightformer'), activities.join(','));
        for (const training of ['trainZoo', 'trainWeightformer']) assert.ok(!activities.includes(training), `${c.workflowId} ran ${training}`);
        const result = (await env.client.workflow.getHandle(c.workflowId).result()) as PipelineResult;
        assert.equal(result.tags['weightformer.cache'], 'hit');
        assert.equal(result.stages.zoo?.state, 'skipped');
        const runTags = Object.fromEntries((await client.getRun(result.mlflowRunId!)).data.tags!.map((t) => [t.key, t.value]));
        assert.equal(runTags['weightformer.cache'], 'hit');
        assert.equal(runTags[LINEAGE_TAGS.watcherWorkflowId], watcherId);
        // A working student from a 10-step WeightFormer: above chance (0.1), not a quality bar.
        assert.ok(result.metrics['acc.student_zero_shot']! > 0.15, `zero-shot ${result.metrics['acc.student_zero_shot']}`);
      }
      // The watcher's own history holds no activity but registry polls and lineage tagging.
      assert.deepEqual([...new Set(await activitiesOf(watcherId))].sort().filter((a) => a !== 'pollTeacherVersions' && a !== 'recordStudentLineage'), []);

      await handle.signal(stopWatchSignal);
      const final = (await handle.result()) as WatchStatus;
      assert.equal(final.state, 'stopped');
      assert.equal(final.consolidations.length, 2);
    });
  });

  it('a poll finds teachers by alias in the real registry: none before the model exists, then the newest teachers.count', async () => {
    const model = `alias-teachers-${suffix}`;
    const { spec } = tinySpec(`weightformer: {mode: train, reuse: auto, validationTeachers: 2, model: {d: 16, heads: 2, blocks: 1}, train: {tMin: 2, tMax: 3}}
zoo: {count: 3}
generate: {method: weightformer}
teachers: {count: 2}
tracking: {registerModel: ${studentModel}}
trigger: {registeredModel: ${model}, teacherAlias: teacher}`);
    const storeRoot = await freshStore();
    const { pollTeacherVersions } = registryActivities({ store: new ArtifactStore(storeRoot), tracker: new StageTracker(client, new ArtifactStore(storeRoot)) });
    assert.deepEqual(await pollTeacherVersions({ spec }), { teacherVersions: [], plan: null });

    const experimentId = await client.getOrCreateExperiment(`trigger-teachers-${suffix}`);
    const run = await client.createRun({ experimentId, runName: 'alias-teachers' });
    await client.createRegisteredModel(model);
    const versions: string[] = [];
    for (let i = 0; i < 4; i++) versions.push((await client.createModelVersion({ name: model, source: `${run.info.artifact_uri}/t${i}`, runId: run.info.run_id })).version);
    await client.setRegisteredModelAlias(model, 'teacher-a', versions[0]!);
    await client.setRegisteredModelAlias(model, 'champion', versions[1]!);
    const one = await pollTeacherVersions({ spec });
    assert.deepEqual(one, { teacherVersions: [`${model}/${versions[0]}`], plan: null }, 'one teacher is not an ensemble');
    await client.setRegisteredModelAlias(model, 'teacher', versions[2]!);
    await client.setRegisteredModelAlias(model, 'teacher-b', versions[3]!);
    const three = await pollTeacherVersions({ spec });
    assert.deepEqual(three.teacherVersions, [0, 2, 3].map((i) => `${model}/${versions[i]}`));
    assert.deepEqual(three.plan?.teacherVersions, [2, 3].map((i) => `${model}/${versions[i]}`));
    assert.deepEqual(three.plan?.spec.teachers.files, [2, 3].map((i) => `models:/${model}/${versions[i]}`));
    assert.match(three.plan?.specHash ?? '', /^[0-9a-f]{64}$/);
  });

  it('`weightformer watch FILE` starts the watcher once and signals it when run again; a file without a trigger is refused', async () => {
    const dir = await freshStore();
    const file = path.join(dir, 'watch.yaml');
    await fs.writeFile(file, `version: 1
name: cli-watch-${suffix}
zoo: {count: 3}
weightformer: {mode: train, reuse: auto, validationTeachers: 2, model: {d: 16, heads: 2, blocks: 1}, train: {tMin: 2, tMax: 3}}
generate: {method: weightformer}
tracking: {registerModel: ${studentModel}}
trigger: {registeredModel: ${teachersModel}, teacherAlias: teacher}
`);
    // No worker serves this prefix: the watcher only has to exist (and not start twice).
    const cliEnv = { TEMPORAL_ADDRESS: env.address, WEIGHTFORMER_QUEUE_PREFIX: `cli-watch-${suffix}` };
    const first = await runCli(['watch', file], cliEnv);
    assert.equal(first.code, 0, first.stderr);
    const id = /in workflow (\S+)/.exec(first.stderr)?.[1];
    assert.ok(id?.startsWith(`watch-cli-watch-${suffix}-`), first.stderr);
    const handle = env.client.workflow.getHandle(id!);
    try {
      const started = await handle.describe();
      assert.equal(started.status.name, 'RUNNING');
      const again = await runCli(['watch', file], cliEnv);
      assert.equal(again.code, 0, again.stderr);
      assert.equal((await handle.describe()).runId, started.runId, 'signalled, not started a second time');
      const signals = (await handle.fetchHistory()).events!.filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'pollNow');
      assert.equal(signals.length, 2);
    } finally {
      await handle.terminate('test done');
    }
    const plain = path.join(dir, 'plain.yaml');
    await fs.writeFile(plain, 'version: 1\nname: plain\n');
    const refused = await runCli(['watch', plain], cliEnv);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /no trigger block/);
  });
});
