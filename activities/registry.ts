/**
 * The MLflow model registry as the pipelines use it beyond the student:
 *
 * - **Trained WeightFormers** are registered under a name derived from the architecture family and the
 *   zoo/meta-training settings (`weightformer-<family>-<key>`, the teacher ablation under
 *   `weightformer-ablation-<family>-<key>`), so another pipeline file finds and reuses one with
 *   `weightformer.reuse: auto` (or names it, `models:/<name>/<version>`) and never trains it again.
 * - **Triggered consolidation**: the watcher workflow asks here which versions of a registered model are
 *   teachers, gets the child pipeline's spec for the newest of them, and records the registered student's
 *   lineage as version tags.
 */
import { Context } from '@temporalio/activity';
import type { MetaTrainJobResult } from '../src/runner/jobs';
import { alignmentKey, alignmentLabel, alignmentRecordOf } from '../src/runner/alignment';
import { architectureKey } from '../src/runner/families';
import { specHash } from '../src/spec/hash';
import type { PipelineSpec, TriggerSpec } from '../src/spec/types';
import { MlflowRequestError, filterValue, type MlflowClient, type ModelVersion } from '../src/tracking/mlflow';
import type { ArtifactStore } from '../src/store/store';
import { contentHash } from '../src/util/canonical';
import { InputError } from '../src/util/errors';
import { codeVersion } from '../src/runner/code-version';
import type { ActivityDeps } from './common';
import type { ConsolidationPlan, StudentLineage, TeacherPoll } from '../workflows/types';

/** Version tags of a registered WeightFormer. */
export const WF_TAGS = {
  kind: 'weightformer.kind',
  key: 'weightformer.registry_key',
  architecture: 'weightformer.architecture_key',
  family: 'weightformer.family',
  modelRef: 'weightformer.model_ref',
  zoo: 'weightformer.zoo_digest',
  code: 'weightformer.code_version',
  specHash: 'weightformer.spec_hash',
  workflowId: 'weightformer.workflow_id',
  /** `weights` or `activations:<samples>`: how its teachers were aligned (missing on versions from before the option: weights). */
  alignment: 'weightformer.alignment',
} as const;

/** Lineage tags of a student registered by a triggered consolidation. */
export const LINEAGE_TAGS = {
  teacherVersions: 'weightformer.lineage.teacher_versions',
  weightformerVersion: 'weightformer.lineage.weightformer_version',
  specHash: 'weightformer.lineage.spec_hash',
  workflowId: 'weightformer.lineage.workflow_id',
  watcherWorkflowId: 'weightformer.lineage.watcher_workflow_id',
} as const;

function lineageTags(lineage: StudentLineage): Record<string, string> {
  return {
    [LINEAGE_TAGS.teacherVersions]: lineage.teacherVersions.map((v) => `models:/${v}`).join(','),
    [LINEAGE_TAGS.weightformerVersion]: lineage.weightformerVersion ?? 'none',
    [LINEAGE_TAGS.specHash]: lineage.specHash,
    [LINEAGE_TAGS.workflowId]: lineage.workflowId,
    [LINEAGE_TAGS.watcherWorkflowId]: lineage.watcherWorkflowId,
  };
}

/**
 * The lineage tags a student version is registered with, from its pipeline run's tags: a watcher's
 * consolidation tags its run with the teacher versions and the watcher (workflows/watch.ts), the
 * WeightFormer stage with the registered version it reused. Registering with them makes the lineage part
 * of the registration, so it is there however late that happens (a finish replayed from the outbox after
 * an MLflow outage, when the watcher never learnt the version). {} for a run no watcher started.
 */
export function lineageFromRunTags(runTags: Record<string, string>, specHash: string, workflowId: string): Record<string, string> {
  const teachers = runTags[LINEAGE_TAGS.teacherVersions];
  const watcher = runTags[LINEAGE_TAGS.watcherWorkflowId];
  if (!teachers || !watcher) return {};
  return lineageTags({
    teacherVersions: teachers.split(',').map((v) => v.replace(/^models:\//, '')),
    weightformerVersion: runTags['weightformer.registered_version'] ?? null,
    specHash,
    workflowId,
    watcherWorkflowId: watcher,
  });
}

type WeightformerKind = 'weightformer' | 'teacher_ablation';
const kindOf = (teacherInput: boolean): WeightformerKind => (teacherInput ? 'weightformer' : 'teacher_ablation');
/** Artifact folder of each kind in the pipeline run that trained it. */
const artifactDir = (kind: WeightformerKind) => (kind === 'weightformer' ? 'weightformer' : 'weightformer-ablation');

/**
 * What identifies a trained WeightFormer across pipelines: the architecture, how the zoo and the validation
 * teachers are made (data, zoo training, seed, backend) and how the model is built and meta-trained. The
 * evaluated teachers are not part of it: one WeightFormer serves every ensemble of its family. The
 * alignment block is, when the pipeline has one (absent: the key it always had), so `reuse: auto` never
 * finds a WeightFormer trained on teachers aligned another way. The zoo's
 * exact content (the digest of its teachers) and the code version are version tags, for the record.
 */
export function weightformerRegistryKey(spec: PipelineSpec, teacherInput: boolean): string {
  return contentHash({
    architecture: architectureKey(spec.architecture),
    data: spec.data,
    seed: spec.seed,
    zoo: spec.zoo,
    validationTeachers: spec.weightformer.validationTeachers,
    validationEnsembles: spec.weightformer.validationEnsembles,
    model: spec.weightformer.model,
    train: spec.weightformer.train,
    backend: spec.compute.backend,
    teacherInput,
    ...alignmentKey(spec),
  });
}

/** The registered-model name `reuse: auto` looks for, e.g. `weightformer-mlp-0123456789ab`. */
export function registeredWeightformerName(spec: PipelineSpec, teacherInput: boolean): string {
  return modelName(teacherInput, spec.architecture.family, weightformerRegistryKey(spec, true));
}

/** The registered-model name of a kind, family and registry key (the WeightFormer and its ablation share the key). */
function modelName(teacherInput: boolean, family: string, key: string): string {
  return `${teacherInput ? 'weightformer' : 'weightformer-ablation'}-${family}-${key.slice(0, 12)}`;
}

/**
 * Registers a WeightFormer this pipeline trained (or found in its store): its bytes and job result go into
 * the pipeline run's artifacts, and a version of its derived name points at them. The same model bytes are
 * registered once: a later run with a store cache hit, or a retried attempt, finds that version again.
 * Returns `models:/<name>/<version>`.
 */
export async function registerWeightformer(
  client: MlflowClient,
  store: ArtifactStore,
  args: { runId: string; spec: PipelineSpec; specHash: string; workflowId: string; result: MetaTrainJobResult; zoo: string[]; teacherInput: boolean },
): Promise<string> {
  const kind = kindOf(args.teacherInput);
  const name = registeredWeightformerName(args.spec, args.teacherInput);
  const key = weightformerRegistryKey(args.spec, true);
  await client.createRegisteredModel(name, {
    description: `${kind === 'weightformer' ? 'WeightFormer' : 'WeightFormer teacher ablation'} for the ${args.spec.architecture.family} family, registry key ${key}`,
    tags: { [WF_TAGS.kind]: kind, [WF_TAGS.key]: key, [WF_TAGS.family]: args.spec.architecture.family },
  });
  // Filtered here rather than by a tag filter, which not every MLflow store supports for model versions.
  const same = (await client.searchModelVersions({ filter: `name = ${filterValue(name)}` })).filter((v) => tagOf(v, WF_TAGS.modelRef) === args.result.model);
  const existing = same.sort((a, b) => Number(a.version) - Number(b.version))[0];
  if (existing) return `models:/${name}/${existing.version}`;
  const dir = artifactDir(kind);
  await client.logArtifact(args.runId, `${dir}/model.bin`, await store.getBytes(args.result.model as `sha256:${string}`));
  await client.logArtifact(args.runId, `${dir}/result.json`, JSON.stringify(args.result, null, 2));
  const run = await client.getRun(args.runId);
  const { version } = await client.findOrCreateModelVersion({
    name,
    source: `${run.info.artifact_uri}/${dir}`,
    runId: args.runId,
    tags: {
      [WF_TAGS.kind]: kind,
      [WF_TAGS.key]: key,
      [WF_TAGS.architecture]: architectureKey(args.spec.architecture),
      [WF_TAGS.family]: args.spec.architecture.family,
      [WF_TAGS.modelRef]: args.result.model,
      [WF_TAGS.zoo]: contentHash(args.zoo),
      [WF_TAGS.code]: codeVersion(),
      [WF_TAGS.specHash]: args.specHash,
      [WF_TAGS.workflowId]: args.workflowId,
      [WF_TAGS.alignment]: alignmentLabel(alignmentRecordOf(args.spec)),
    },
  });
  return `models:/${name}/${version.version}`;
}

const tagOf = (v: ModelVersion, key: string): string | undefined => v.tags?.find((t) => t.key === key)?.value;

function notFound(err: unknown): boolean {
  return err instanceof MlflowRequestError && (err.errorCode === 'RESOURCE_DOES_NOT_EXIST' || err.status === 404);
}

/** The model version `weightformer.reuse` names (or, for the ablation, its sibling of the same key). */
async function resolveReuse(client: MlflowClient, spec: PipelineSpec, teacherInput: boolean): Promise<ModelVersion> {
  const reuse = spec.weightformer.reuse!;
  const field = 'weightformer.reuse';
  const what = teacherInput ? 'WeightFormer' : 'teacher ablation (baselines.include has teacher_ablation)';
  let name: string;
  let pick: { version?: string; alias?: string } = {};
  if (reuse === 'auto') {
    name = registeredWeightformerName(spec, teacherInput);
  } else {
    const m = /^models:\/([^/@]+)(?:\/(\d+)|@(.+))$/.exec(reuse);
    if (!m) throw new InputError(`${field}: ${JSON.stringify(reuse)} is neither 'auto' nor models:/<name>/<version> or models:/<name>@<alias>`);
    name = m[1]!;
    pick = m[2] !== undefined ? { version: m[2] } : { alias: m[3]! };
    if (!teacherInput) {
      // The ablation was registered beside the WeightFormer under the same key: find it through that key.
      const named = await resolveNamed(client, name, pick, field, reuse);
      const key = tagOf(named, WF_TAGS.key);
      if (!key) throw new InputError(`${field}: ${reuse} is not a WeightFormer registered by a pipeline (no ${WF_TAGS.key} tag)`);
      name = modelName(false, spec.architecture.family, key);
      pick = {};
    }
  }
  let version: ModelVersion;
  if (pick.version !== undefined || pick.alias !== undefined) {
    version = await resolveNamed(client, name, pick, field, reuse);
  } else {
    const versions = (await client.searchModelVersions({ filter: `name = ${filterValue(name)}` })).filter((v) => v.status === 'READY');
    const newest = versions.sort((a, b) => Number(b.version) - Number(a.version))[0];
    if (!newest) {
      throw new InputError(
        `${field}: ${reuse === 'auto' ? 'auto' : reuse} found no registered ${what} '${name}' for this architecture and zoo ` +
          `(registry key ${weightformerRegistryKey(spec, true).slice(0, 12)}: architecture, data, seed, zoo, weightformer.model, weightformer.train and alignment must match); ` +
          'register one by running a pipeline with these settings, weightformer.mode train and tracking enabled',
      );
    }
    version = newest;
  }
  const label = `models:/${version.name}/${version.version}`;
  const kind = tagOf(version, WF_TAGS.kind);
  if (kind !== kindOf(teacherInput)) {
    throw new InputError(`${field}: ${label} is not a registered ${what} (its ${WF_TAGS.kind} tag is ${kind === undefined ? 'missing' : JSON.stringify(kind)})`);
  }
  const theirs = tagOf(version, WF_TAGS.architecture);
  const ours = architectureKey(spec.architecture);
  if (theirs !== ours) {
    throw new InputError(
      `${field}: ${label} was trained for the architecture ${theirs ?? '(unknown)'}, incompatible with this pipeline's architecture ${ours} ` +
        '(a WeightFormer reads and writes the rows of one architecture)',
    );
  }
  // A WeightFormer only reads teachers aligned the way it was trained (a version without the tag predates
  // the option: weight matching). The generate job checks the model file's own record again.
  const theirAlignment = tagOf(version, WF_TAGS.alignment) ?? 'weights';
  const ourAlignment = alignmentLabel(alignmentRecordOf(spec));
  if (theirAlignment !== ourAlignment) {
    throw new InputError(
      `${field}: ${label} was meta-trained on teachers aligned by ${theirAlignment}, but this pipeline aligns by ${ourAlignment} (alignment block): ` +
        'a WeightFormer only reads teachers aligned the way it was trained; reuse one trained with the same alignment, or train one',
    );
  }
  return version;
}

async function resolveNamed(client: MlflowClient, name: string, pick: { version?: string; alias?: string }, field: string, reuse: string): Promise<ModelVersion> {
  try {
    return pick.version !== undefined ? await client.getModelVersion(name, pick.version) : await client.getModelVersionByAlias(name, pick.alias!);
  } catch (err) {
    if (notFound(err)) throw new InputError(`${field}: ${reuse} does not exist in the MLflow registry`);
    throw err;
  }
}

/**
 * Checks, before a pipeline is submitted, that `weightformer.reuse` resolves to a compatible registered
 * WeightFormer (and teacher ablation, when `baselines.include` asks for it): the InputError the stage
 * would raise later, raised while the CLI can still point at the line. Returns what it found.
 */
export async function checkWeightformerReuse(client: MlflowClient, spec: PipelineSpec): Promise<string[]> {
  if (spec.weightformer.reuse === undefined || spec.weightformer.mode === 'none') return [];
  const kinds = [true, ...(spec.baselines.include.includes('teacher_ablation') ? [false] : [])];
  const found: string[] = [];
  for (const teacherInput of kinds) {
    const v = await resolveReuse(client, spec, teacherInput);
    found.push(`models:/${v.name}/${v.version}`);
  }
  return found;
}

/** The artifact folder (relative to its run's root) a version's source names. */
async function versionFolder(client: MlflowClient, v: ModelVersion): Promise<string> {
  const root = (await client.getRun(v.run_id)).info.artifact_uri.replace(/\/+$/, '');
  if (v.source.startsWith(`${root}/`)) return v.source.slice(root.length + 1);
  throw new InputError(`weightformer.reuse: models:/${v.name}/${v.version} has source ${JSON.stringify(v.source)} outside its run's artifacts ${root}`);
}

/**
 * Downloads the registered WeightFormer (or ablation) `weightformer.reuse` selects into the store; checks
 * the bytes against the version's content tag. Never trains: every failure is an InputError or an MLflow
 * error. Returns the job result as the training run stored it, with `model` the local reference.
 */
export async function fetchRegisteredWeightformer(
  client: MlflowClient,
  store: ArtifactStore,
  spec: PipelineSpec,
  teacherInput: boolean,
): Promise<{ result: MetaTrainJobResult; registered: string }> {
  const version = await resolveReuse(client, spec, teacherInput);
  const label = `models:/${version.name}/${version.version}`;
  const folder = await versionFolder(client, version);
  const bytes = await client.downloadArtifact(version.run_id, `${folder}/model.bin`);
  const ref = await store.putBytes(bytes);
  const expected = tagOf(version, WF_TAGS.modelRef);
  if (expected !== undefined && expected !== ref) {
    throw new InputError(`weightformer.reuse: ${label}'s model.bin has digest ${ref}, not the ${expected} it was registered with`);
  }
  const result = JSON.parse((await client.downloadArtifact(version.run_id, `${folder}/result.json`)).toString('utf8')) as MetaTrainJobResult;
  return { result: { ...result, model: ref }, registered: label };
}

// ----- triggered consolidation ----------------------------------------------------------------------------

/** Whether a version is a teacher by the trigger's tag or alias. */
export function isTeacherVersion(v: ModelVersion, trigger: TriggerSpec, aliases: string[]): boolean {
  if (trigger.teacherTag) return tagOf(v, trigger.teacherTag.key) === trigger.teacherTag.value;
  const alias = trigger.teacherAlias!;
  return aliases.some((a) => a === alias || a.startsWith(`${alias}-`));
}

/**
 * The spec of one consolidation: the watcher's pipeline with the given registry versions as its teachers
 * (oldest first), without the trigger: the child is a plain pipeline.
 */
export function consolidationSpec(spec: PipelineSpec, teacherVersions: string[]): PipelineSpec {
  const { trigger, ...rest } = spec;
  void trigger;
  const child: PipelineSpec = structuredClone(rest);
  child.teachers = { ...child.teachers, source: 'files', files: teacherVersions.map((v) => `models:/${v}`), count: teacherVersions.length };
  return child;
}

/** The registry activities of the watcher workflow. */
export function registryActivities(deps: ActivityDeps) {
  const client = () => {
    if (!deps.tracker) throw new InputError('trigger: this worker has no MLflow server (set MLFLOW_TRACKING_URI): the teachers come from its registry');
    return deps.tracker.client;
  };
  return {
    /**
     * One poll: the teacher versions of the trigger's registered model, and the consolidation of the newest
     * `teachers.count` of them (null while fewer than 2 exist). Versions still registering are left for
     * the next poll.
     */
    async pollTeacherVersions(args: { spec: PipelineSpec }): Promise<TeacherPoll> {
      const trigger = args.spec.trigger;
      if (!trigger) throw new InputError('trigger: the pipeline has no trigger block');
      const c = client();
      let aliases: Array<{ alias: string; version: string }> = [];
      try {
        aliases = (await c.getRegisteredModel(trigger.registeredModel)).aliases ?? [];
      } catch (err) {
        if (notFound(err)) {
          // Not registered yet: the watcher keeps waiting for its first teachers.
          return { teacherVersions: [], plan: null };
        }
        throw err;
      }
      const versions = await c.searchModelVersions({ filter: `name = ${filterValue(trigger.registeredModel)}` });
      const teachers = versions
        .filter((v) => v.status === 'READY')
        .filter((v) => isTeacherVersion(v, trigger, aliases.filter((a) => a.version === v.version).map((a) => a.alias)))
        .map((v) => Number(v.version))
        .sort((a, b) => a - b)
        .map((n) => `${trigger.registeredModel}/${n}`);
      const chosen = teachers.slice(-args.spec.teachers.count);
      if (chosen.length < 2) return { teacherVersions: teachers, plan: null };
      const spec = consolidationSpec(args.spec, chosen);
      const plan: ConsolidationPlan = { teacherVersions: chosen, spec, specHash: specHash(spec) };
      return { teacherVersions: teachers, plan };
    },

    /**
     * Tags the registered student version with its lineage (idempotent: tags are set, not added). The
     * registration already carries it (`lineageFromRunTags`); this covers versions registered before that.
     */
    async recordStudentLineage(args: { registeredModel: string; version: string; lineage: StudentLineage }): Promise<void> {
      const c = client();
      const tags = lineageTags(args.lineage);
      for (const [key, value] of Object.entries(tags)) await c.setModelVersionTag(args.registeredModel, args.version, key, value);
      Context.current().log.info('student lineage recorded', { model: `models:/${args.registeredModel}/${args.version}`, ...tags });
    },
  };
}
