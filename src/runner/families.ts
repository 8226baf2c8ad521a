/**
 * One runtime per architecture family, behind the one interface the jobs use: what a pipeline stage does
 * with a model (initialise, train with hooks and resume, score, ensemble, average, re-estimate BN
 * statistics, store, read from a teacher file, register) without knowing which family it is.
 *
 * The jobs reach a runtime through `withFamily(arch, (rt, arch) => …)` (every family) or
 * `withStudentFamily` (the families the WeightFormer consolidates: all four), whose callbacks are
 * generic in the family, so a job is written once and stays type-checked for each of them.
 *
 * Store format (one blob per model in the content-addressed store), chosen so that what a pipeline writes
 * is a file other tools read, and so that MLP artifacts keep the bytes they always had:
 *
 *   | family | stored as                                        | registered student          |
 *   |--------|--------------------------------------------------|-----------------------------|
 *   | mlp    | packed TF.js layers model ("WFTJ", tfjs-format)  | student/model.json + weights.bin |
 *   | cnn    | packed TF.js layers model ("WFTJ", tfjs-cnn)     | student/model.json + weights.bin |
 *   | resnet | ResNet parameter file ("WFRN")                   | student/model.safetensors (torch-resnet) |
 *   | vit    | ViT parameter file ("WFVT")                      | student/model.safetensors (torch-vit)    |
 *
 * The CNN's TF.js export round-trips exactly (same float32 values, BN ε and momentum are ours; tested),
 * so it is stored as TF.js like the MLP. ResNets and ViTs have no TF.js layers form here (residual
 * adds and attention are not a Sequential), so their store blob is their own parameter file, and the
 * registry gets the PyTorch state_dict a `models:/` teacher source reads back.
 *
 * Loading checks the family first (`storedFamilyOf`): a blob of another family is an InputError naming
 * both, not a shape error deep in a reader; then the family's reader checks shapes against the pipeline's
 * architecture and the values for finiteness.
 */
import type { ArchitectureSpec, ArchitectureFamily, CnnArchitecture, ModelArchitecture, ResnetArchitecture, VitArchitecture } from '../spec/types';
import { InputError } from '../util/errors';
import { WEIGHTFORMER_FAMILIES } from '../spec/semantics';
import type { Dataset } from '../ml/data';
import { softmaxOfLogits } from '../ml/evaluate';
import type { MlpParams } from '../ml/mlp';
import { accuracy as mlpAccuracy, accuracyOfScores, ensembleProbs as mlpEnsembleProbs, initMlp } from '../ml/mlp';
import { alignedAverage as mlpAlignedAverage, averageParams as mlpAverageParams, naiveAverage as mlpNaiveAverage } from '../ml/align';
import { MLP_ACTIVATION_MATCHER, alignedAverageByActivations } from '../ml/align-activations';
import { cnnActivationMatcher } from '../ml/cnn/align-activations';
import { RESNET_ACTIVATION_MATCHER } from '../ml/resnet/align-activations';
import { packTfjsArtifact, packTfjsModel, readTfjsModelDir, tfjsArtifactToParams, unpackTfjsArtifact } from '../ml/tfjs-format';
import { readSafetensorsTeacher } from '../ml/formats/torch-mlp';
import { MLP_EARLY_STOPPING, type EarlyStoppingTrainer } from '../ml/early-stopping';
import type { CnnParams } from '../ml/cnn/architecture';
import { checkCnnParamsMatch, cloneCnnParams, cnnSignature, initCnn } from '../ml/cnn/architecture';
import { cnnAccuracy, predictCnnLogits, recomputeBnStatistics } from '../ml/cnn/forward';
import { deserializeCnnParams, serializeCnnParams } from '../ml/cnn/io';
import { alignedAverageCnn, averageCnnParams, naiveAverageCnn } from '../ml/cnn/align';
import { deserializeCnnTrainState, serializeCnnTrainState, trainCnn } from '../ml/cnn/train';
import { fromTfjsCnnModel, readTfjsCnnModelDir, toTfjsCnnModel } from '../ml/formats/tfjs-cnn';
import { readSafetensorsCnn } from '../ml/formats/torch-cnn';
import type { ResnetParams } from '../ml/resnet/architecture';
import { checkResnetParamsMatch, cloneResnetParams, initResnet, resnetSignature } from '../ml/resnet/architecture';
import { predictResnetLogits, recomputeResnetBnStatistics, resnetAccuracy } from '../ml/resnet/forward';
import { deserializeResnetParams, serializeResnetParams } from '../ml/resnet/io';
import { alignedAverageResnet, averageResnetParams, naiveAverageResnet } from '../ml/resnet/align';
import { deserializeResnetTrainState, serializeResnetTrainState, trainResnet } from '../ml/resnet/train';
import { readSafetensorsResnet, serializeSafetensorsResnet } from '../ml/formats/torch-resnet';
import type { VitParams } from '../ml/vit/architecture';
import { checkVitParamsMatch, cloneVitParams, initVit, vitSignature } from '../ml/vit/architecture';
import { predictVitLogits, vitAccuracy } from '../ml/vit/forward';
import { deserializeVitParams, serializeVitParams } from '../ml/vit/io';
import { alignedAverageVit, naiveAverageVit } from '../ml/vit/align';
import { deserializeVitTrainState, serializeVitTrainState, trainVit } from '../ml/vit/train';
import { readSafetensorsVit, serializeSafetensorsVit } from '../ml/formats/torch-vit';
import type { ParamsOf, StudentArch } from '../ml/weightformer';

/** Host parameters of any family. */
export type ModelParams = MlpParams | CnnParams | ResnetParams | VitParams;

/** The host parameters of architecture `A`. */
export type ParamsOfArch<A extends ModelArchitecture> = A extends ArchitectureSpec
  ? MlpParams
  : A extends CnnArchitecture
    ? CnnParams
    : A extends ResnetArchitecture
      ? ResnetParams
      : VitParams;

/** The two formats a teacher file comes in. */
export type TeacherFileFormat = 'safetensors' | 'tfjs';

/** A file of the registered student, in the order it is logged (weights before the file that names them). */
export interface RegistryFile {
  /** Relative to the student's artifact folder. */
  path: string;
  content: Uint8Array | string;
}

/**
 * What a pipeline does with a model of one family. `A` its architecture, `P` its host parameters. The
 * trainer, checkpoint and parameter-file members are those early stopping needs (`EarlyStoppingTrainer`),
 * so `trainWithEarlyStopping(…, rt)` trains any family.
 */
export interface FamilyRuntime<A extends ModelArchitecture, P> extends EarlyStoppingTrainer<A, P> {
  readonly family: A['family'];
  init(arch: A, seed: number): P;
  accuracy(p: P, ds: Dataset): Promise<number>;
  /** Mean over members of softmax(logits / temperature), n × classes: the ensemble and the KD target. */
  ensembleProbs(list: P[], ds: Dataset, temperature: number): Promise<Float32Array>;
  ensembleAccuracy(list: P[], ds: Dataset): Promise<number>;
  naiveAverage(list: P[]): P;
  /** Every model aligned to the first (function-preserving permutations), then averaged. */
  alignedAverage(list: P[]): P;
  /**
   * The same with activation matching on `images` (a pipeline's `alignment: {method: activations}`);
   * absent for the families it is not implemented for (the spec refuses the option for them).
   */
  alignedAverageByActivations?(list: P[], images: Dataset): Promise<P>;
  /** Whether models of `arch` carry BN running statistics (then `recomputeBn` re-estimates them). */
  hasBatchNorm(arch: A): boolean;
  /** Running statistics re-estimated from `data` (train-mode passes, no gradient steps); others unchanged. */
  recomputeBn(p: P, data: Dataset, batchSize: number): Promise<P>;
  /** The store blob (module comment). */
  pack(p: P): Uint8Array;
  /** Reads a store blob: InputError unless it is a model of this family with exactly `expected`'s shapes. */
  unpack(bytes: Uint8Array, expected: A): P;
  /** Reads a teacher file in `format`, checked against `expected` (shapes, dtype, finite values). */
  readTeacher(file: string, format: TeacherFileFormat, expected: A): Promise<P>;
  /** The registered student's files, from its store blob. */
  registryFiles(bytes: Uint8Array, expected: A): RegistryFile[];
  /** The architecture as part of a cache key (the MLP's string is the one its keys always had). */
  key(arch: A): string;
}

// ------------------------------------------------------------------------------------------- helpers


/**
 * The ensemble's averaged softmax from each member's logits, summed in float64 and rounded once, as the
 * MLP's `ensembleProbs` does, so every family's ensemble is computed the same way.
 */
function ensembleOfLogits<P>(logitsOf: (p: P, ds: Dataset) => Promise<Float32Array>): Pick<FamilyRuntime<ModelArchitecture, P>, 'ensembleProbs' | 'ensembleAccuracy'> {
  const ensembleProbs = async (list: P[], ds: Dataset, temperature: number): Promise<Float32Array> => {
    if (list.length === 0) throw new InputError('an ensemble needs at least one model');
    let sum: Float64Array | undefined;
    for (const p of list) {
      const probs = await softmaxOfLogits(await logitsOf(p, ds), ds.n, temperature);
      if (!sum) sum = new Float64Array(probs.length);
      else if (sum.length !== probs.length) throw new InputError('ensemble members disagree on the number of classes');
      for (let i = 0; i < probs.length; i++) sum[i] = (sum[i] ?? 0) + (probs[i] ?? 0);
    }
    return Float32Array.from(sum ?? [], (s) => s / list.length);
  };
  return { ensembleProbs, ensembleAccuracy: async (list, ds) => accuracyOfScores(await ensembleProbs(list, ds, 1), ds.y) };
}

const MAGIC_FAMILIES: Record<string, ArchitectureFamily> = { WFMP: 'mlp', WFCN: 'cnn', WFRN: 'resnet', WFVT: 'vit' };

/**
 * The family of a store blob: from its magic, and for a packed TF.js model ("WFTJ", MLPs and CNNs alike)
 * from its layers (a Conv2D makes it a CNN). Undefined when the bytes are none of these.
 */
export function storedFamilyOf(bytes: Uint8Array): ArchitectureFamily | undefined {
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== 'WFTJ') return MAGIC_FAMILIES[magic];
  let modelJson: unknown;
  try {
    modelJson = unpackTfjsArtifact(bytes).modelJson;
  } catch {
    return undefined;
  }
  const topology = (modelJson as { modelTopology?: { config?: { layers?: unknown }; model_config?: { config?: { layers?: unknown } } } } | null)?.modelTopology;
  const layers = topology?.config?.layers ?? topology?.model_config?.config?.layers;
  if (!Array.isArray(layers)) return undefined;
  return layers.some((l) => (l as { class_name?: unknown } | null)?.class_name === 'Conv2D') ? 'cnn' : 'mlp';
}

/** InputError unless `bytes` hold a model of `family`. */
function checkStoredFamily(bytes: Uint8Array, family: ArchitectureFamily): void {
  const found = storedFamilyOf(bytes);
  if (found !== family) {
    throw new InputError(
      `the stored model is ${found ? `of the ${found} family` : 'not a model this pipeline wrote'}, but the pipeline's architecture.family is ${family}`,
    );
  }
}

function noTfjs(family: ArchitectureFamily): never {
  throw new InputError(`TF.js teachers exist for the mlp and cnn families only; give a ${family} teacher as a .safetensors PyTorch state_dict`);
}

/** The TF.js files of a packed artifact, as the registry gets them (MLP and CNN alike). */
function tfjsRegistryFiles(bytes: Uint8Array): RegistryFile[] {
  const { modelJson, weightsBin } = unpackTfjsArtifact(bytes);
  return [
    { path: 'weights.bin', content: weightsBin },
    { path: 'model.json', content: JSON.stringify(modelJson) },
  ];
}

// ------------------------------------------------------------------------------------------ families

export const MLP_RUNTIME: FamilyRuntime<ArchitectureSpec, MlpParams> = {
  ...MLP_EARLY_STOPPING,
  family: 'mlp',
  init: initMlp,
  accuracy: mlpAccuracy,
  ensembleProbs: mlpEnsembleProbs,
  ensembleAccuracy: async (list, ds) => accuracyOfScores(await mlpEnsembleProbs(list, ds), ds.y),
  naiveAverage: mlpNaiveAverage,
  alignedAverage: (list) => mlpAlignedAverage(list),
  alignedAverageByActivations: (list, images) => alignedAverageByActivations(list, images, MLP_ACTIVATION_MATCHER, mlpAverageParams),
  hasBatchNorm: () => false,
  recomputeBn: async (p) => p,
  // The bytes MLP artifacts always had (existing caches and tests rely on them).
  pack: (p) => packTfjsArtifact(p),
  unpack: (bytes, expected) => {
    checkStoredFamily(bytes, 'mlp');
    return tfjsArtifactToParams(bytes, expected);
  },
  readTeacher: (file, format, expected) => (format === 'safetensors' ? readSafetensorsTeacher(file, expected) : readTfjsModelDir(file, expected)),
  registryFiles: (bytes) => tfjsRegistryFiles(bytes),
  key: (a) => `${a.family}:${[a.inputSize, ...a.hidden, a.outputSize].join('-')}:${a.activation}`,
};

export const CNN_RUNTIME: FamilyRuntime<CnnArchitecture, CnnParams> = {
  family: 'cnn',
  train: trainCnn,
  clone: cloneCnnParams,
  serializeTrainState: serializeCnnTrainState,
  deserializeTrainState: deserializeCnnTrainState,
  serializeParams: serializeCnnParams,
  deserializeParams: deserializeCnnParams,
  init: initCnn,
  accuracy: cnnAccuracy,
  ...ensembleOfLogits(predictCnnLogits),
  naiveAverage: naiveAverageCnn,
  alignedAverage: (list) => alignedAverageCnn(list, 0),
  alignedAverageByActivations: (list, images) => alignedAverageByActivations(list, images, cnnActivationMatcher(), averageCnnParams),
  hasBatchNorm: (arch) => arch.batchNorm,
  recomputeBn: recomputeBnStatistics,
  pack: (p) => {
    const { modelJson, weightsBin } = toTfjsCnnModel(p);
    return packTfjsModel(modelJson, weightsBin);
  },
  unpack: (bytes, expected) => {
    checkStoredFamily(bytes, 'cnn');
    const { modelJson, weightsBin } = unpackTfjsArtifact(bytes);
    return fromTfjsCnnModel(modelJson, weightsBin, expected);
  },
  readTeacher: (file, format, expected) => (format === 'safetensors' ? readSafetensorsCnn(file, expected) : readTfjsCnnModelDir(file, expected)),
  registryFiles: (bytes) => tfjsRegistryFiles(bytes),
  key: cnnSignature,
};

export const RESNET_RUNTIME: FamilyRuntime<ResnetArchitecture, ResnetParams> = {
  family: 'resnet',
  train: trainResnet,
  clone: cloneResnetParams,
  serializeTrainState: serializeResnetTrainState,
  deserializeTrainState: deserializeResnetTrainState,
  serializeParams: serializeResnetParams,
  deserializeParams: deserializeResnetParams,
  init: initResnet,
  accuracy: resnetAccuracy,
  ...ensembleOfLogits(predictResnetLogits),
  naiveAverage: naiveAverageResnet,
  alignedAverage: (list) => alignedAverageResnet(list, 0),
  alignedAverageByActivations: (list, images) => alignedAverageByActivations(list, images, RESNET_ACTIVATION_MATCHER, averageResnetParams),
  hasBatchNorm: () => true,
  recomputeBn: recomputeResnetBnStatistics,
  pack: serializeResnetParams,
  unpack: (bytes, expected) => {
    checkStoredFamily(bytes, 'resnet');
    const p = deserializeResnetParams(bytes);
    checkResnetParamsMatch(p, expected);
    return p;
  },
  readTeacher: (file, format, expected) => (format === 'safetensors' ? readSafetensorsResnet(file, expected) : noTfjs('resnet')),
  registryFiles: (bytes, expected) => [{ path: 'model.safetensors', content: serializeSafetensorsResnet(RESNET_RUNTIME.unpack(bytes, expected)) }],
  key: resnetSignature,
};

export const VIT_RUNTIME: FamilyRuntime<VitArchitecture, VitParams> = {
  family: 'vit',
  train: trainVit,
  clone: cloneVitParams,
  serializeTrainState: serializeVitTrainState,
  deserializeTrainState: deserializeVitTrainState,
  serializeParams: serializeVitParams,
  deserializeParams: deserializeVitParams,
  init: initVit,
  accuracy: vitAccuracy,
  ...ensembleOfLogits(predictVitLogits),
  naiveAverage: naiveAverageVit,
  alignedAverage: (list) => alignedAverageVit(list, 0),
  hasBatchNorm: () => false,
  recomputeBn: async (p) => p,
  pack: serializeVitParams,
  unpack: (bytes, expected) => {
    checkStoredFamily(bytes, 'vit');
    const p = deserializeVitParams(bytes);
    checkVitParamsMatch(p, expected);
    return p;
  },
  readTeacher: (file, format, expected) => (format === 'safetensors' ? readSafetensorsVit(file, expected) : noTfjs('vit')),
  registryFiles: (bytes, expected) => [{ path: 'model.safetensors', content: serializeSafetensorsVit(VIT_RUNTIME.unpack(bytes, expected)) }],
  key: vitSignature,
};

// ------------------------------------------------------------------------------------------ dispatch

/** A job body written once for every family (TypeScript checks it for each). */
export type FamilyUser<R> = <A extends ModelArchitecture, P extends ModelParams>(rt: FamilyRuntime<A, P>, arch: A) => R;

/** Runs `use` with the runtime of `arch`'s family. */
export function withFamily<R>(arch: ModelArchitecture, use: FamilyUser<R>): R {
  switch (arch.family) {
    case 'mlp':
      return use(MLP_RUNTIME, arch);
    case 'cnn':
      return use(CNN_RUNTIME, arch);
    case 'resnet':
      return use(RESNET_RUNTIME, arch);
    case 'vit':
      return use(VIT_RUNTIME, arch);
    default:
      throw new InputError(`unknown architecture family ${String((arch as { family?: unknown }).family)}`);
  }
}

/** A job body for the families the WeightFormer consolidates: its parameters are the WeightFormer's students. */
export type StudentFamilyUser<R> = <A extends StudentArch>(rt: FamilyRuntime<A, ParamsOf<A>>, arch: A) => R;

/** Runs `use` with the runtime of `arch`'s family, which must be one the WeightFormer supports (else InputError). */
export function withStudentFamily<R>(arch: ModelArchitecture, use: StudentFamilyUser<R>): R {
  if (!WEIGHTFORMER_FAMILIES.includes(arch.family)) {
    throw new InputError(`the WeightFormer supports the ${WEIGHTFORMER_FAMILIES.join(', ')} families, not ${String((arch as { family?: unknown }).family)}`);
  }
  // Same dispatch as withFamily: each runtime's parameters are ParamsOf its architecture, which TypeScript
  // cannot see through withFamily's generic callback, hence the cast.
  return withFamily(arch, use as unknown as FamilyUser<R>);
}

/** The runtime of a family, for callers that need no type link between it and an architecture (tests, tools). */
export function runtimeOf(family: ArchitectureFamily): FamilyRuntime<ModelArchitecture, ModelParams> {
  const table: Record<ArchitectureFamily, unknown> = { mlp: MLP_RUNTIME, cnn: CNN_RUNTIME, resnet: RESNET_RUNTIME, vit: VIT_RUNTIME };
  const rt = table[family];
  if (!rt) throw new InputError(`unknown architecture family ${String(family)}`);
  return rt as FamilyRuntime<ModelArchitecture, ModelParams>;
}

/** The architecture's part of a cache key (the MLP's string is unchanged; others: their shape signature). */
export function architectureKey(arch: ModelArchitecture): string {
  return withFamily(arch, (rt, a) => rt.key(a));
}

/**
 * Reads a teacher file of `expected`'s family (an MLP when no architecture is given, as sources always
 * read): the teacher-source resolver and the import job both go through here.
 */
export async function readTeacherFile(file: string, format: TeacherFileFormat, expected: ModelArchitecture | undefined): Promise<ModelParams> {
  if (!expected) return format === 'safetensors' ? readSafetensorsTeacher(file) : readTfjsModelDir(file);
  return withFamily<Promise<ModelParams>>(expected, (rt, a) => rt.readTeacher(file, format, a));
}

/** The registered student's files for a store blob of `arch`'s family. */
export function studentRegistryFiles(bytes: Uint8Array, arch: ModelArchitecture): RegistryFile[] {
  return withFamily(arch, (rt, a) => rt.registryFiles(bytes, a));
}
