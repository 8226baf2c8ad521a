import type { PipelineSpec } from '../spec/types';
import { InputError } from '../util/errors';
import type { ArtifactStore } from '../store/store';
import type { JobProgress } from './protocol';
import { initBackend } from '../ml/backend';
import { loadEmbeddedMnist, splitDataset, type Dataset } from '../ml/data';
import { deriveSeed } from '../ml/rng';
import { accuracy, ensembleAccuracy, ensembleProbs, initMlp, serializeParams, deserializeParams, type MlpParams } from '../ml/mlp';
import { trainMlp, serializeTrainState, deserializeTrainState, type TrainState } from '../ml/train';
import { alignedAverage, naiveAverage } from '../ml/align';

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

interface TeacherCheckpoint {
  teacher: number;
  state: string;
}
interface TrainCheckpoint {
  state: string;
}

/** The data split every stage of one spec sees: identical in every job, since it depends only on the spec. */
function splitFor(spec: PipelineSpec) {
  return splitDataset(loadEmbeddedMnist(), spec.data, spec.teachers.count + spec.zoo.count);
}

async function loadParams(store: ArtifactStore, ref: string): Promise<MlpParams> {
  return deserializeParams(await store.getBytes(ref as `sha256:${string}`));
}

async function resumeState(store: ArtifactStore, ref: string | undefined): Promise<TrainState | undefined> {
  return ref ? deserializeTrainState(await store.getBytes(ref as `sha256:${string}`)) : undefined;
}

/**
 * Trains with progress and checkpoint hooks wired to the job context: each checkpoint's state is written
 * to the store first and only its reference is reported, so a heartbeat never carries tensors.
 */
async function trainWithHooks(
  ctx: JobContext,
  phase: string,
  options: Parameters<typeof trainMlp>[0],
  checkpointEvery: number,
  resumeFrom: TrainState | undefined,
  describeCheckpoint: (stateRef: string) => unknown,
) {
  return trainMlp(
    { ...options, checkpointEvery },
    {
      onStep: (info) => ctx.progress({ phase, step: info.step, totalSteps: info.totalSteps, loss: info.loss }),
      onCheckpoint: async (state) => {
        const ref = await ctx.store.putBytes(serializeTrainState(state));
        ctx.checkpoint(state.step, describeCheckpoint(ref));
      },
    },
    resumeFrom,
  );
}

const trainTeacher: Job<{ spec: PipelineSpec; index: number }, TeacherJobResult> = async ({ spec, index }, ctx) => {
  const { backend } = await initBackend(spec.compute.backend);
  const split = splitFor(spec);
  const shard = split.shards[index];
  if (!shard) throw new Error(`no data shard for teacher ${index}`);
  const previous = ctx.resume as TeacherCheckpoint | undefined;
  const resumeFrom = await resumeState(ctx.store, previous?.teacher === index ? previous.state : undefined);
  const result = await trainWithHooks(
    ctx,
    `teacher ${index + 1}/${spec.teachers.count}`,
    {
      arch: spec.architecture,
      init: initMlp(spec.architecture, deriveSeed(spec.seed, 'teacher', index, 'init')),
      train: shard,
      epochs: spec.teachers.train.epochs,
      batchSize: spec.teachers.train.batchSize,
      learningRate: spec.teachers.train.learningRate,
      seed: deriveSeed(spec.seed, 'teacher', index, 'train'),
    },
    spec.teachers.train.checkpointEvery,
    resumeFrom,
    (state): TeacherCheckpoint => ({ teacher: index, state }),
  );
  return {
    params: await ctx.store.putBytes(serializeParams(result.params)),
    valAccuracy: await accuracy(result.params, split.validation),
    curve: result.curve,
    backend,
  };
};

const generateStudent: Job<{ spec: PipelineSpec; teachers: string[] }, GenerateJobResult> = async ({ spec, teachers }, ctx) => {
  const { backend } = await initBackend(spec.compute.backend);
  const params = await Promise.all(teachers.map((t) => loadParams(ctx.store, t)));
  if (spec.generate.method !== 'aligned-average') {
    throw new InputError(`generate.method '${spec.generate.method}' needs a trained WeightFormer, which this version cannot train yet`);
  }
  const started = performance.now();
  const student = alignedAverage(params);
  const seconds = (performance.now() - started) / 1000;
  return { student: await ctx.store.putBytes(serializeParams(student)), seconds, backend };
};

/** The ensemble's averaged softmax at the distillation temperature: the KD target of fine-tuning. */
async function teacherTargets(store: ArtifactStore, teachers: string[], data: Dataset, temperature: number): Promise<Float32Array> {
  const params = await Promise.all(teachers.map((t) => loadParams(store, t)));
  return ensembleProbs(params, data, temperature);
}

const finetune: Job<{ spec: PipelineSpec; init: string; teachers: string[] }, TrainJobResult> = async ({ spec, init, teachers }, ctx) => {
  const { backend } = await initBackend(spec.compute.backend);
  const split = splitFor(spec);
  const ft = spec.finetune;
  const started = performance.now();
  const previous = ctx.resume as TrainCheckpoint | undefined;
  const result = await trainWithHooks(
    ctx,
    'fine-tune',
    {
      arch: spec.architecture,
      init: await loadParams(ctx.store, init),
      train: split.consolidation,
      epochs: ft.epochs,
      batchSize: ft.batchSize,
      learningRate: ft.learningRate,
      seed: deriveSeed(spec.seed, 'finetune'),
      kd: { teacherProbs: await teacherTargets(ctx.store, teachers, split.consolidation, ft.temperature), weight: ft.kdWeight, temperature: ft.temperature },
    },
    ft.checkpointEvery,
    await resumeState(ctx.store, previous?.state),
    (state): TrainCheckpoint => ({ state }),
  );
  return {
    params: await ctx.store.putBytes(serializeParams(result.params)),
    curve: result.curve,
    seconds: (performance.now() - started) / 1000,
    backend,
  };
};

const baselines: Job<{ spec: PipelineSpec; teachers: string[] }, BaselinesJobResult> = async ({ spec, teachers }, ctx) => {
  await initBackend(spec.compute.backend);
  const params = await Promise.all(teachers.map((t) => loadParams(ctx.store, t)));
  return {
    avgNaive: await ctx.store.putBytes(serializeParams(naiveAverage(params))),
    avgAligned: await ctx.store.putBytes(serializeParams(alignedAverage(params))),
  };
};

interface EvaluateModels {
  teachers: string[];
  student: string;
  studentFinetuned: string | null;
  avgNaive: string;
  avgAligned: string;
}

/** Gain captured = (model − mean single teacher) / (ensemble − mean single teacher). */
export function ensembleGainCaptured(model: number, teacherMean: number, ensemble: number): number {
  return (model - teacherMean) / (ensemble - teacherMean);
}

const evaluate: Job<{ spec: PipelineSpec; models: EvaluateModels }, EvaluateJobResult> = async ({ spec, models }, ctx) => {
  const { backend } = await initBackend(spec.compute.backend);
  const test = splitFor(spec).test;
  const teachers = await Promise.all(models.teachers.map((t) => loadParams(ctx.store, t)));
  const metrics: Record<string, number> = {};
  const teacherAccs: number[] = [];
  for (const [i, t] of teachers.entries()) {
    const acc = await accuracy(t, test);
    teacherAccs.push(acc);
    metrics[`acc.teacher_${i}`] = acc;
  }
  const teacherMean = teacherAccs.reduce((a, b) => a + b, 0) / teacherAccs.length;
  metrics['acc.teacher_mean'] = teacherMean;
  metrics['acc.ensemble'] = await ensembleAccuracy(teachers, test);
  metrics['acc.avg_naive'] = await accuracy(await loadParams(ctx.store, models.avgNaive), test);
  metrics['acc.avg_aligned'] = await accuracy(await loadParams(ctx.store, models.avgAligned), test);
  metrics['acc.student_zero_shot'] = await accuracy(await loadParams(ctx.store, models.student), test);
  metrics['gain_captured.zero_shot'] = ensembleGainCaptured(metrics['acc.student_zero_shot'], teacherMean, metrics['acc.ensemble']);
  if (models.studentFinetuned) {
    metrics['acc.student_finetuned'] = await accuracy(await loadParams(ctx.store, models.studentFinetuned), test);
    metrics['gain_captured.finetuned'] = ensembleGainCaptured(metrics['acc.student_finetuned'], teacherMean, metrics['acc.ensemble']);
  }
  metrics['data.test_size'] = test.n;
  return { metrics, backend };
};

/** Every job a stage activity can run in a worker thread, by name. */
export const JOBS: Record<string, Job<never, unknown>> = {
  trainTeacher,
  generateStudent,
  finetune,
  baselines,
  evaluate,
} as Record<string, Job<never, unknown>>;
