/**
 * The ML jobs a stage activity runs in a worker thread, by name (`JOBS`). Each is written once for every
 * architecture family: it reaches its family's runtime (families.ts) through `withFamily`, or
 * `withStudentFamily` for the WeightFormer's jobs (every family), so the MLP path calls exactly the
 * functions it always called and gives the same bytes.
 */
import type { AugmentSpec, ModelArchitecture, PipelineSpec } from '../spec/types';
import { InputError } from '../util/errors';
import type { ArtifactStore } from '../store/store';
import type { JobProgress } from './protocol';
import { initBackend } from '../ml/backend';
import { datasetDigest, selectExamples, type Dataset } from '../ml/data';
import { pipelineSplit, sourceData } from './data-source';
import { deriveSeed, Rng } from '../ml/rng';
import type { TrainOptionsOf } from '../ml/train-engine';
import type { TrainStateOf } from '../ml/train-state';
import { trainWithEarlyStopping, serializeEarlyStoppingState, deserializeEarlyStoppingState, secondsToReach, type EpochTiming } from '../ml/early-stopping';
import {
  metaTrain,
  generateStudent as generateWithWeightformer,
  serializeWeightformer,
  deserializeWeightformer,
  serializeMetaTrainState,
  deserializeMetaTrainState,
  weightformerConfig,
  zooReferenceWith,
  alignmentContext,
  type ParamsOf,
  type StudentParams,
} from '../ml/weightformer';
import { alignmentImages } from '../ml/align-activations';
import { alignmentRecordOf, checkModelAlignment } from './alignment';
import { withFamily, withStudentFamily, type FamilyRuntime, type TeacherFileFormat } from './families';

/** What a job may do besides computing: report progress, checkpoint, read what the last attempt saved. */
export interface JobContext {
  store: ArtifactStore;
  resume: unknown;
  progress(p: JobProgress): void;
  checkpoint(step: number, resume: unknown): void;
}

export type Job<I, O> = (input: I, ctx: JobContext) => Promise<O>;

export interface TeacherJobResult {
  params: string;
  valAccuracy: number;
  curve: Array<{ step: number; loss: number }>;
  backend: string;
}
export interface GenerateJobResult {
  student: string;
  seconds: number;
  backend: string;
}
export interface TrainJobResult {
  params: string;
  curve: Array<{ step: number; loss: number }>;
  seconds: number;
  backend: string;
}
export interface BaselinesJobResult {
  avgNaive: string;
  avgAligned: string;
}
export interface EvaluateJobResult {
  metrics: Record<string, number>;
  backend: string;
}

/** Evaluated teachers, zoo teachers (meta-training pool), and held-out validation teachers. */
export type TeacherRole = 'teacher' | 'zoo' | 'validation';

interface TrainCheckpoint {
  state: string;
}

/**
 * The data split every stage of one spec sees: identical in every job, since it depends only on the spec.
 * Evaluated ensemble e uses the disjoint shard group e; test, validation and consolidation never change.
 */
// The split every job of a pipeline sees (its source is read once per thread).
const splitFor = pipelineSplit;

/** The training data of one teacher: its own shard, or (zoo, validation) its own random draw from the pool. */
async function teacherData(spec: PipelineSpec, role: TeacherRole, index: number): Promise<Dataset> {
  const split = await splitFor(spec);
  if (role === 'teacher') {
    const shard = split.shards[spec.teachers.ensembleIndex * spec.teachers.count + index];
    if (!shard) throw new Error(`no data shard for teacher ${index}`);
    return shard;
  }
  const pool = split.teacherPool;
  const order = new Rng(deriveSeed(spec.seed, role, index, 'data')).permutation(pool.n);
  return selectExamples(pool, order.subarray(0, spec.data.shardSize));
}

/**
 * Every model (teacher, student, baseline) is stored in its family's store format (families.ts: the
 * TF.js layers format for MLPs and CNNs, the parameter file for ResNets and ViTs), so anything a pipeline
 * writes loads elsewhere as it is; reading checks the family, the shapes against the pipeline's
 * architecture, and finiteness.
 */
async function loadParams<A extends ModelArchitecture, P>(rt: FamilyRuntime<A, P>, arch: A, store: ArtifactStore, ref: string): Promise<P> {
  return rt.unpack(await store.getBytes(ref as `sha256:${string}`), arch);
}

async function saveParams<A extends ModelArchitecture, P>(rt: FamilyRuntime<A, P>, store: ArtifactStore, params: P): Promise<string> {
  return store.putBytes(rt.pack(params));
}

async function resumeState<A extends ModelArchitecture, P>(rt: FamilyRuntime<A, P>, store: ArtifactStore, ref: string | undefined): Promise<TrainStateOf<P> | undefined> {
  return ref ? rt.deserializeTrainState(await store.getBytes(ref as `sha256:${string}`)) : undefined;
}

/**
 * Trains with progress and checkpoint hooks wired to the job context: each checkpoint's state is written
 * to the store first and only its reference is reported, so a heartbeat never carries tensors.
 */
async function trainWithHooks<A extends ModelArchitecture, P>(
  rt: FamilyRuntime<A, P>,
  ctx: JobContext,
  phase: string,
  options: TrainOptionsOf<A, P>,
  checkpointEvery: number,
  resumeFrom: TrainStateOf<P> | undefined,
) {
  return rt.train(
    { ...options, checkpointEvery },
    {
      onStep: (info) => ctx.progress({ phase, step: info.step, totalSteps: info.totalSteps, loss: info.loss }),
      onCheckpoint: async (state) => {
        const ref = await ctx.store.putBytes(rt.serializeTrainState(state));
        ctx.checkpoint(state.step, { state: ref } satisfies TrainCheckpoint);
      },
    },
    resumeFrom,
  );
}

/**
 * The trainer's augmentation option for a pipeline's `augment` block (image families; the spec semantics
 * refuse it for MLPs, and this says so again for callers that skip them). Absent block: no option at all,
 * so runs without augmentation keep their fingerprints.
 */
function augmentOf(augment: AugmentSpec | undefined, arch: ModelArchitecture): { augment?: NonNullable<TrainOptionsOf<unknown, unknown>['augment']> } {
  if (!augment) return {};
  if (!('inputShape' in arch)) throw new InputError('image augmentation needs an image family (cnn, resnet or vit), not mlp');
  const [h, w, c] = arch.inputShape;
  return { augment: { options: { flip: augment.flip, cropPadding: augment.cropPadding }, inputShape: [h, w, c] } };
}

/**
 * The aligned average of `params` (each aligned to the first) as the pipeline's `alignment` block says:
 * weight matching (`rt.alignedAverage`, no data), or activation matching on the first `alignment.samples`
 * consolidation examples. The avg_aligned baseline and `generate.method: aligned-average` both come here.
 */
async function alignedAverageFor<A extends ModelArchitecture, P>(rt: FamilyRuntime<A, P>, params: P[], spec: PipelineSpec): Promise<P> {
  if (spec.alignment?.method !== 'activations') return rt.alignedAverage(params);
  if (!rt.alignedAverageByActivations) throw new InputError(`alignment.method 'activations' is not implemented for the ${rt.family} family`);
  return rt.alignedAverageByActivations(params, alignmentImages((await splitFor(spec)).consolidation, spec.alignment.samples));
}

const trainTeacher: Job<{ spec: PipelineSpec; role: TeacherRole; index: number }, TeacherJobResult> = async ({ spec, role, index }, ctx) => {
  const { backend } = await initBackend(spec.compute.backend);
  const train = role === 'teacher' ? spec.teachers.train : spec.zoo.train;
  const count = role === 'teacher' ? spec.teachers.count : role === 'zoo' ? spec.zoo.count : spec.weightformer.validationTeachers;
  const previous = ctx.resume as TrainCheckpoint | undefined;
  const data = await teacherData(spec, role, index);
  const validation = (await splitFor(spec)).validation;
  return withFamily(spec.architecture, async (rt, arch) => {
    const result = await trainWithHooks(
      rt,
      ctx,
      `${role} ${index + 1}/${count}`,
      {
        arch,
        init: rt.init(arch, deriveSeed(spec.seed, role, index, 'init')),
        train: data,
        epochs: train.epochs,
        batchSize: train.batchSize,
        learningRate: train.learningRate,
        seed: deriveSeed(spec.seed, role, index, 'train'),
        ...augmentOf(train.augment, arch),
      },
      train.checkpointEvery,
      await resumeState(rt, ctx.store, previous?.state),
    );
    return {
      params: await saveParams(rt, ctx.store, result.params),
      valAccuracy: await rt.accuracy(result.params, validation),
      curve: result.curve,
      backend,
    };
  });
};

const generateStudent: Job<{ spec: PipelineSpec; teachers: string[]; weightformer: string | null }, GenerateJobResult> = async (
  { spec, teachers, weightformer },
  ctx,
) => {
  const { backend } = await initBackend(spec.compute.backend);
  if (spec.generate.method === 'aligned-average') {
    return withFamily(spec.architecture, async (rt, arch) => {
      const params = await Promise.all(teachers.map((t) => loadParams(rt, arch, ctx.store, t)));
      const started = performance.now();
      const student = await alignedAverageFor(rt, params, spec);
      return { student: await saveParams(rt, ctx.store, student), seconds: (performance.now() - started) / 1000, backend };
    });
  }
  if (!weightformer) throw new InputError("generate.method 'weightformer' needs a WeightFormer (weightformer.mode train or reuse)");
  return withStudentFamily(spec.architecture, async (rt, arch) => {
    const params = await Promise.all(teachers.map((t) => loadParams(rt, arch, ctx.store, t)));
    const model = deserializeWeightformer(await ctx.store.getBytes(weightformer as `sha256:${string}`));
    // A model from the registry may have been trained with another alignment than this pipeline's.
    checkModelAlignment(model.alignment, spec, `the WeightFormer ${weightformer.slice(0, 19)}…`);
    // The data only when the model reads it (probe tokens, activation matching): a weight-matching model
    // without probe tokens generates without loading the dataset, as it always did.
    const consolidation = model.config.probeTokens || model.alignment ? (await splitFor(spec)).consolidation : undefined;
    const probe = model.config.probeTokens ? consolidation : undefined;
    // Timed: the forward pass that consolidates (alignment to the stored reference included; activation
    // matching reads the first alignment.samples consolidation examples).
    const started = performance.now();
    const generated = await generateWithWeightformer(model, params as StudentParams[], probe, consolidation);
    const seconds = (performance.now() - started) / 1000;
    // generateStudent checked every teacher against the model's architecture, so the student is of this family.
    return { student: await saveParams(rt, ctx.store, generated as ParamsOf<typeof arch>), seconds, backend };
  });
};

/** The ensemble's averaged softmax at the distillation temperature: the KD target of fine-tuning. */
async function teacherTargets<A extends ModelArchitecture, P>(
  rt: FamilyRuntime<A, P>,
  arch: A,
  store: ArtifactStore,
  teachers: string[],
  data: Dataset,
  temperature: number,
): Promise<Float32Array> {
  const params = await Promise.all(teachers.map((t) => loadParams(rt, arch, store, t)));
  return rt.ensembleProbs(params, data, temperature);
}

const finetune: Job<{ spec: PipelineSpec; init: string; teachers: string[] }, TrainJobResult> = async ({ spec, init, teachers }, ctx) => {
  const { backend } = await initBackend(spec.compute.backend);
  const split = await splitFor(spec);
  const ft = spec.finetune;
  const started = performance.now();
  const previous = ctx.resume as TrainCheckpoint | undefined;
  return withFamily(spec.architecture, async (rt, arch) => {
    const result = await trainWithHooks(
      rt,
      ctx,
      'fine-tune',
      {
        arch,
        init: await loadParams(rt, arch, ctx.store, init),
        train: split.consolidation,
        epochs: ft.epochs,
        batchSize: ft.batchSize,
        learningRate: ft.learningRate,
        seed: deriveSeed(spec.seed, 'finetune'),
        kd: { teacherProbs: await teacherTargets(rt, arch, ctx.store, teachers, split.consolidation, ft.temperature), weight: ft.kdWeight, temperature: ft.temperature },
      },
      ft.checkpointEvery,
      await resumeState(rt, ctx.store, previous?.state),
    );
    return {
      params: await saveParams(rt, ctx.store, result.params),
      curve: result.curve,
      seconds: (performance.now() - started) / 1000,
      backend,
    };
  });
};

const weightAverages: Job<{ spec: PipelineSpec; teachers: string[] }, BaselinesJobResult> = async ({ spec, teachers }, ctx) => {
  await initBackend(spec.compute.backend);
  return withFamily(spec.architecture, async (rt, arch) => {
    const params = await Promise.all(teachers.map((t) => loadParams(rt, arch, ctx.store, t)));
    return {
      avgNaive: await saveParams(rt, ctx.store, rt.naiveAverage(params)),
      avgAligned: await saveParams(rt, ctx.store, await alignedAverageFor(rt, params, spec)),
    };
  });
};

interface EvaluateModels {
  teachers: string[];
  student: string;
  studentFinetuned: string | null;
  avgNaive: string;
  avgAligned: string;
  avgAlignedFinetuned: string | null;
  kd: string | null;
  kdEpochCurve: string | null;
  dataOnly: string | null;
  ablationStudent: string | null;
}

/** Gain captured = (model − mean single teacher) / (ensemble − mean single teacher). */
export function ensembleGainCaptured(model: number, teacherMean: number, ensemble: number): number {
  return (model - teacherMean) / (ensemble - teacherMean);
}

/** KD's wall-time budget is capped at this multiple of what consolidation took (generate + fine-tune). */
export const KD_TO_MATCH_CAP_FACTOR = 20;

/**
 * The models whose BN running statistics are re-estimated for the `…_bn_recomputed` metrics: those that
 * come out of averaging or generating (their running statistics are averaged or predicted, not measured).
 * Trained and fine-tuned models measured their own and are left as they are.
 */
const BN_RECOMPUTED: ReadonlyArray<[metric: string, model: keyof EvaluateModels]> = [
  ['acc.avg_naive_bn_recomputed', 'avgNaive'],
  ['acc.avg_aligned_bn_recomputed', 'avgAligned'],
  ['acc.teacher_ablation_bn_recomputed', 'ablationStudent'],
  ['acc.student_zero_shot_bn_recomputed', 'student'],
];

const evaluate: Job<{ spec: PipelineSpec; models: EvaluateModels; consolidationSeconds: number | null }, EvaluateJobResult> = async (
  { spec, models, consolidationSeconds },
  ctx,
) => {
  const { backend } = await initBackend(spec.compute.backend);
  const split = await splitFor(spec);
  const test = split.test;
  return withFamily(spec.architecture, async (rt, arch) => {
    const load = (ref: string) => loadParams(rt, arch, ctx.store, ref);
    const teachers = await Promise.all(models.teachers.map(load));
    const metrics: Record<string, number> = {};
    // Progress after every scored model: each is a heartbeat, so a long evaluation (many models, BN
    // re-estimation, a slow or busy machine) is not taken for a dead worker.
    const bnModels = rt.hasBatchNorm(arch) ? new Set(BN_RECOMPUTED.map(([, key]) => models[key]).filter((r) => typeof r === 'string')).size : 0;
    const optionalModels = [models.avgNaive, models.avgAligned, models.avgAlignedFinetuned, models.kd, models.dataOnly, models.ablationStudent, models.student, models.studentFinetuned];
    const totalSteps = teachers.length + 1 + optionalModels.filter((r) => r).length + bnModels + 1;
    let step = 0;
    const scored = (): void => ctx.progress({ phase: 'evaluate', step: ++step, totalSteps });
    const teacherAccs: number[] = [];
    for (const [i, t] of teachers.entries()) {
      const acc = await rt.accuracy(t, test);
      teacherAccs.push(acc);
      metrics[`acc.teacher_${i}`] = acc;
      scored();
    }
    const teacherMean = teacherAccs.reduce((a, b) => a + b, 0) / teacherAccs.length;
    metrics['acc.teacher_mean'] = teacherMean;
    metrics['acc.ensemble'] = await rt.ensembleAccuracy(teachers, test);
    scored();
    const testAccuracy = async (ref: string) => {
      const acc = await rt.accuracy(await load(ref), test);
      scored();
      return acc;
    };
    const optional: Array<[string, string | null]> = [
      ['acc.avg_naive', models.avgNaive],
      ['acc.avg_aligned', models.avgAligned],
      ['acc.avg_aligned_finetuned', models.avgAlignedFinetuned],
      ['acc.kd', models.kd],
      ['acc.data_only', models.dataOnly],
      ['acc.teacher_ablation', models.ablationStudent],
      ['acc.student_zero_shot', models.student],
      ['acc.student_finetuned', models.studentFinetuned],
    ];
    for (const [name, ref] of optional) if (ref) metrics[name] = await testAccuracy(ref);
    metrics['gain_captured.zero_shot'] = ensembleGainCaptured(metrics['acc.student_zero_shot']!, teacherMean, metrics['acc.ensemble']);
    if (metrics['acc.student_finetuned'] !== undefined) {
      metrics['gain_captured.finetuned'] = ensembleGainCaptured(metrics['acc.student_finetuned'], teacherMean, metrics['acc.ensemble']);
    }
    // Batch norm: averaged or generated running statistics are not those of the new network (REPAIR).
    // Re-estimating them on the consolidation set takes forward passes only, no gradient step, so the
    // model stays zero-shot; both numbers are reported, the plain names keep the un-recomputed models.
    if (rt.hasBatchNorm(arch)) {
      // Chunks of the fine-tune's batch size: the batch size the running statistics are otherwise made at.
      const bnBatch = Math.max(2, spec.finetune.batchSize);
      const byRef = new Map<string, number>();
      for (const [name, key] of BN_RECOMPUTED) {
        const ref = models[key] as string | null;
        if (!ref) continue;
        let acc = byRef.get(ref);
        if (acc === undefined) {
          acc = await rt.accuracy(await rt.recomputeBn(await load(ref), split.consolidation, bnBatch), test);
          byRef.set(ref, acc);
          scored();
        }
        metrics[name] = acc;
      }
      const recomputed = metrics['acc.student_zero_shot_bn_recomputed'];
      if (recomputed !== undefined) metrics['gain_captured.zero_shot_bn_recomputed'] = ensembleGainCaptured(recomputed, teacherMean, metrics['acc.ensemble']);
    }
    // How long KD from scratch needs to match the fine-tuned student, judged on validation (never test).
    if (models.kdEpochCurve && models.studentFinetuned && consolidationSeconds !== null) {
      const target = await rt.accuracy(await load(models.studentFinetuned), split.validation);
      scored();
      const curve = await ctx.store.getJson<EpochTiming[]>(models.kdEpochCurve as `sha256:${string}`);
      const cap = KD_TO_MATCH_CAP_FACTOR * consolidationSeconds;
      const reach = secondsToReach(curve, target, cap);
      const kdSeconds = curve.at(-1)?.secondsElapsed ?? 0;
      // Not reached within a KD run shorter than the cap: its whole run time is a lower bound, not the cap.
      metrics['seconds.kd_to_match'] = reach.reached || kdSeconds >= cap ? reach.seconds : kdSeconds;
      metrics['kd_to_match.reached'] = reach.reached ? 1 : 0;
      metrics['acc_val.student_finetuned'] = target;
    }
    metrics['data.test_size'] = test.n;
    return { metrics, backend };
  });
};

export interface MetaTrainJobResult {
  model: string;
  curve: Array<{ step: number; loss: number }>;
  valCurve: Array<{ step: number; accuracy: number }>;
  bestStep: number;
  steps: number;
  seconds: number;
  backend: string;
}

/**
 * Validation ensembles: random subsets (of the evaluated ensemble's size) of the held-out validation
 * teachers, fixed by the seed, so every checkpoint is scored on the same ensembles.
 */
function validationEnsembles<T>(spec: PipelineSpec, teachers: T[]): T[][] {
  const size = Math.min(spec.teachers.count, teachers.length);
  const rng = new Rng(deriveSeed(spec.seed, 'validation-ensembles'));
  return Array.from({ length: spec.weightformer.validationEnsembles }, () =>
    Array.from(rng.permutation(teachers.length).subarray(0, size), (i) => teachers[i]!),
  );
}

const metaTrainJob: Job<{ spec: PipelineSpec; zoo: string[]; validation: string[]; teacherInput: boolean }, MetaTrainJobResult> = async (
  { spec, zoo, validation, teacherInput },
  ctx,
) => {
  const { backend } = await initBackend(spec.compute.backend);
  const split = await splitFor(spec);
  const m = spec.weightformer.model;
  const t = spec.weightformer.train;
  const previous = ctx.resume as TrainCheckpoint | undefined;
  const resumeFrom = previous ? deserializeMetaTrainState(await ctx.store.getBytes(previous.state as `sha256:${string}`)) : undefined;
  const phase = teacherInput ? 'meta-training' : 'meta-training (ablation)';
  return withStudentFamily(spec.architecture, async (rt, arch) => {
    const zooParams = await Promise.all(zoo.map((z) => loadParams(rt, arch, ctx.store, z)));
    const validationParams = await Promise.all(validation.map((v) => loadParams(rt, arch, ctx.store, v)));
    const started = performance.now();
    // Alignment: the zoo's reference and every teacher meta-training reads are matched as the pipeline's
    // `alignment` block says (weight matching when absent), and the model records it for generation.
    const alignment = alignmentRecordOf(spec);
    // A resumed run keeps the reference its checkpoint was trained against: recomputing it (activation
    // matching runs forward passes) could differ in the last bit on a backend whose kernels are not
    // bit-reproducible, and fail the resume; the fingerprint (zoo, data, alignment) ties the checkpoint to
    // this run all the same.
    const reference = resumeFrom?.model.reference ?? (await zooReferenceWith(zooParams as StudentParams[], alignmentContext(alignment, split.consolidation)));
    const result = await metaTrain(
      {
        arch,
        config: weightformerConfig({ d: m.d, heads: m.heads, blocks: m.blocks, mlpRatio: m.mlpRatio, mixing: m.mixing, probeTokens: m.probeTokens, agreementStats: m.agreementStats, contentGate: m.contentGate, teacherInput }),
        zoo: zooParams,
        // The zoo's barycenter is the alignment reference, stored with the model (see zooReference for why);
        // it is of the zoo's family, this one.
        reference: reference as ParamsOf<typeof arch>,
        ...(alignment ? { alignment } : {}),
        consolidation: split.consolidation,
        validation: { ensembles: validationEnsembles(spec, validationParams), data: split.validation },
        steps: t.steps,
        batchSize: t.batchSize,
        learningRate: t.learningRate,
        tMin: t.tMin,
        tMax: t.tMax,
        temperature: t.temperature,
        kdWeight: t.kdWeight,
        // The ablation is trained identically: same seed, same subsets, same batches.
        seed: deriveSeed(spec.seed, 'weightformer'),
        checkpointEvery: t.checkpointEvery,
        evalEvery: t.evalEvery,
      },
      {
        onStep: (info) => ctx.progress({ phase, step: info.step, totalSteps: info.totalSteps, loss: info.loss }),
        onCheckpoint: async (state) => {
          const ref = await ctx.store.putBytes(serializeMetaTrainState(state));
          ctx.checkpoint(state.step, { state: ref } satisfies TrainCheckpoint);
        },
      },
      resumeFrom,
    );
    return {
      model: await ctx.store.putBytes(serializeWeightformer(result.model)),
      curve: result.curve,
      valCurve: result.valCurve.map((p) => ({ step: p.step, accuracy: p.accuracy })),
      bestStep: result.bestStep,
      steps: result.steps,
      seconds: (performance.now() - started) / 1000,
      backend,
    };
  });
};

export interface EarlyStoppedJobResult {
  params: string;
  bestEpoch: number;
  /** Per-epoch validation accuracy and cumulative seconds, stored as JSON. */
  epochCurve: string;
  curve: Array<{ step: number; loss: number }>;
  seconds: number;
  backend: string;
}

/** Trains on the consolidation set, keeping the epoch that is best on validation; checkpointed. */
async function trainEarlyStopped(
  ctx: JobContext,
  spec: PipelineSpec,
  phase: string,
  options: { epochs: number; batchSize: number; learningRate: number; seed: number; checkpointEvery: number; kd?: { weight: number; temperature: number; teachers: string[] } },
): Promise<EarlyStoppedJobResult> {
  const { backend } = await initBackend(spec.compute.backend);
  const split = await splitFor(spec);
  const previous = ctx.resume as TrainCheckpoint | undefined;
  const resumeBytes = previous ? await ctx.store.getBytes(previous.state as `sha256:${string}`) : undefined;
  return withFamily(spec.architecture, async (rt, arch) => {
    const resumeFrom = resumeBytes ? deserializeEarlyStoppingState(resumeBytes, rt) : undefined;
    const kd = options.kd
      ? { teacherProbs: await teacherTargets(rt, arch, ctx.store, options.kd.teachers, split.consolidation, options.kd.temperature), weight: options.kd.weight, temperature: options.kd.temperature }
      : undefined;
    const started = performance.now();
    const result = await trainWithEarlyStopping(
      {
        arch,
        init: rt.init(arch, deriveSeed(options.seed, 'init')),
        train: split.consolidation,
        validation: split.validation,
        epochs: options.epochs,
        batchSize: options.batchSize,
        learningRate: options.learningRate,
        seed: deriveSeed(options.seed, 'train'),
        checkpointEvery: options.checkpointEvery,
        ...(kd ? { kd } : {}),
      },
      {
        onStep: (info) => ctx.progress({ phase, step: info.step, totalSteps: info.totalSteps, loss: info.loss }),
        onCheckpoint: async (state) => {
          const ref = await ctx.store.putBytes(serializeEarlyStoppingState(state, rt));
          ctx.checkpoint(state.train.step, { state: ref } satisfies TrainCheckpoint);
        },
      },
      resumeFrom,
      rt,
    );
    return {
      params: await saveParams(rt, ctx.store, result.params),
      bestEpoch: result.bestEpoch,
      epochCurve: await ctx.store.putJson(result.epochCurve),
      curve: result.curve,
      seconds: (performance.now() - started) / 1000,
      backend,
    };
  });
}

/** KD from scratch: a random student trained with CE + KD to the ensemble on the consolidation set. */
const kdFromScratch: Job<{ spec: PipelineSpec; teachers: string[] }, EarlyStoppedJobResult> = async ({ spec, teachers }, ctx) => {
  const kd = spec.baselines.kd;
  return trainEarlyStopped(ctx, spec, 'KD from scratch', {
    epochs: kd.epochs,
    batchSize: kd.batchSize,
    learningRate: kd.learningRate,
    seed: deriveSeed(spec.seed, 'kd'),
    checkpointEvery: kd.checkpointEvery,
    kd: { weight: kd.kdWeight, temperature: kd.temperature, teachers },
  });
};

/** Data-only: a network trained on the consolidation set alone, for as many optimiser steps as meta-training. */
const dataOnly: Job<{ spec: PipelineSpec }, EarlyStoppedJobResult> = async ({ spec }, ctx) => {
  const d = spec.baselines.dataOnly;
  const stepsPerEpoch = Math.ceil(spec.data.consolidationSize / d.batchSize);
  return trainEarlyStopped(ctx, spec, 'data-only', {
    epochs: Math.max(1, Math.round(spec.weightformer.train.steps / stepsPerEpoch)),
    batchSize: d.batchSize,
    learningRate: d.learningRate,
    seed: deriveSeed(spec.seed, 'data-only'),
    checkpointEvery: d.checkpointEvery,
  });
};

export interface DatasetDescription {
  name: string;
  digest: string;
  examples: number;
  context: 'train' | 'validation' | 'test';
  role: string;
  /** Where the whole dataset came from (MLflow's dataset source type and source). */
  sourceType: string;
  source: Record<string, unknown>;
}

/**
 * A teacher brought as a file (already fetched to a local path by the activity): read in its format by its
 * family's reader, checked against the architecture (shapes, dtype, finite values), scored on the
 * validation set, and stored in the family's store format like every trained teacher, so the stages after
 * it cannot tell the difference.
 */
const importTeacher: Job<{ spec: PipelineSpec; file: string; format: TeacherFileFormat }, TeacherJobResult> = async ({ spec, file, format }, ctx) => {
  const { backend } = await initBackend(spec.compute.backend);
  const validation = (await splitFor(spec)).validation;
  return withFamily(spec.architecture, async (rt, arch) => {
    const params = await rt.readTeacher(file, format, arch);
    return {
      params: await saveParams(rt, ctx.store, params),
      valAccuracy: await rt.accuracy(params, validation),
      curve: [],
      backend,
    };
  });
};

/** The parts of the split this pipeline reads, with digests: logged as MLflow dataset inputs. */
const describeData: Job<{ spec: PipelineSpec }, DatasetDescription[]> = async ({ spec }) => {
  const split = await splitFor(spec);
  const { origin } = await sourceData(spec);
  const group = spec.teachers.ensembleIndex * spec.teachers.count;
  const parts: Array<[string, Dataset, DatasetDescription['context'], string]> = [
    ['test', split.test, 'test', 'final numbers only'],
    ['validation', split.validation, 'validation', 'checkpoint choice and early stopping'],
    ['consolidation', split.consolidation, 'train', 'the only data consolidation may use'],
    ['teacher-pool', split.teacherPool, 'train', 'zoo and validation teachers draw from it'],
    ...split.shards.slice(group).map((shard, i): [string, Dataset, DatasetDescription['context'], string] => [`teacher-${i}-shard`, shard, 'train', `teacher ${i}'s own data`]),
  ];
  return parts.map(([part, ds, context, role]) => ({
    name: `${spec.data.source}/${part}`,
    digest: datasetDigest(ds).slice(0, 32),
    examples: ds.n,
    context,
    role,
    sourceType: origin.sourceType,
    source: { ...origin.source, splitSeed: spec.data.splitSeed },
  }));
};

/** Every job a stage activity can run in a worker thread, by name. */
export const JOBS: Record<string, Job<never, unknown>> = {
  describeData,
  trainTeacher,
  importTeacher,
  generateStudent,
  finetune,
  weightAverages,
  metaTrain: metaTrainJob,
  kdFromScratch,
  dataOnly,
  evaluate,
} as Record<string, Job<never, unknown>>;
