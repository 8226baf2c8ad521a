/**
 * Student families: everything WeightFormer needs to know about the networks it reads and writes.
 *
 * The model itself only sees rows (one per output unit, per layer; `tokens.ts`). What differs between an
 * MLP, a CNN, a ResNet and a ViT (those two in family-image.ts) — checking shapes, rows ↔ parameters, aligning teachers to the reference, the
 * differentiable student inside meta-training, scoring a student on data, the reference's file format —
 * sits behind this adapter, chosen by `arch.family`. The MLP adapter calls exactly the functions the
 * MLP-only code called, so MLP results are bit for bit what they were.
 */
import { InputError } from '../../util/errors';
import { alignToReference, alignedAverage, averageParams } from '../align';
import { MLP_ACTIVATION_MATCHER, alignAllByActivations, alignmentImages } from '../align-activations';
import { cnnActivationMatcher } from '../cnn/align-activations';
import type { CnnArchitecture, CnnParams } from '../cnn/architecture';
import type { ResnetParams } from '../resnet/architecture';
import { checkCnnArchitecture, checkCnnParamsMatch, cnnSignature } from '../cnn/architecture';
import { alignCnnToReference, alignedAverageCnn, averageCnnParams } from '../cnn/align';
import { cnnAccuracy, cnnLogits, predictCnnLogits, recomputeBnStatistics } from '../cnn/forward';
import { cnnParamsDigest, deserializeCnnParams, serializeCnnParams } from '../cnn/io';
import { rowsToCnnParams, rowsToCnnTensors } from '../cnn/rows';
import { lossOfLogits } from '../cnn/train';
import type { Dataset } from '../data';
import type { MlpParams, MlpTensors } from '../mlp';
import { accuracy, architectureSignature, checkArchitecture, checkParamsMatch, mlpLogits, predictProbs } from '../mlp';
import { deserializeParams, paramsDigest, serializeParams } from '../params-io';
import { tf } from '../tf';
import type { ArchitectureSpec } from '../../spec/types';
import type { LossBatch } from '../train';
import { mlpLoss } from '../train';
import { recomputeResnetBnStatistics } from '../resnet/forward';
import { RESNET_FAMILY, VIT_FAMILY } from './family-image';
import { softmaxOfLogits } from '../evaluate';
import type { Layout, ParamsOf, StudentArch, StudentParams } from './tokens';
import { isCnnArch, isCnnParams, layoutOf, paramsFamily, rowsOf, rowsToParams } from './tokens';

export type { ParamsOf, StudentArch, StudentParams } from './tokens';
export { isCnnArch, isCnnParams } from './tokens';

/**
 * How a generated CNN student normalises inside meta-training. 'eval': with its predicted running
 * statistics (so they are trained like every other parameter, and the student is scored as it will be
 * used); 'train': with the batch's own moments (the predicted running statistics then get no gradient
 * and stay the aligned mean). Irrelevant for MLPs and CNNs without BN.
 */
export type StudentBnMode = 'eval' | 'train';

/**
 * How a WeightFormer's teachers are aligned to its reference, recorded in the model (and its file) when it
 * is not the default weight matching: `{method: 'activations', samples}` (a pipeline's `alignment` block)
 * matches units by their activations on the first `samples` consolidation examples. Absent: weight
 * matching, exactly as before the option existed (same bytes, same fingerprints).
 */
export interface AlignmentRecord {
  method: 'activations';
  samples: number;
}

/**
 * What aligning needs when it runs. Weight matching needs nothing; activation matching needs the images
 * (`alignmentImages`). Why a context and not a data argument on `align`: activation matching is
 * asynchronous (forward passes) and needs data, weight matching is neither; keeping `align` the
 * synchronous weight matcher leaves every existing caller (and the MLP's bit-for-bit results) untouched,
 * and the few places that align a whole ensemble (`alignTeachers`: meta-training, generation,
 * `zooReferenceWith`) do it up front,
 * before the synchronous model code reads the aligned teachers.
 */
export type AlignmentContext = { method: 'weights' } | { method: 'activations'; images: Dataset };

export const WEIGHT_MATCHING: AlignmentContext = { method: 'weights' };

/**
 * `record` checked as an alignment record for a model of `family` (InputError naming `what` otherwise):
 * `{method: 'activations', samples: an integer ≥ 2}` on a family with activation matching. Meta-training's
 * options and a model file's header both carry one.
 */
export function checkAlignmentRecord(record: unknown, family: StudentFamily, what: string): AlignmentRecord {
  const r = record as Partial<AlignmentRecord> | null;
  if (typeof r !== 'object' || r === null || r.method !== 'activations' || !Number.isInteger(r.samples) || (r.samples ?? 0) < 2) {
    throw new InputError(`${what}: alignment must be {method: 'activations', samples: an integer ≥ 2}, got ${JSON.stringify(record)}`);
  }
  if (!family.alignAllByActivations) throw new InputError(`${what}: activation matching is not implemented for ${family.name} students`);
  return { method: r.method, samples: r.samples as number };
}

/** The context of a recorded alignment: the images are the first `record.samples` of `data` (the consolidation set). */
export function alignmentContext(record: AlignmentRecord | undefined, data: Dataset | undefined): AlignmentContext {
  if (!record) return WEIGHT_MATCHING;
  if (!data) throw new InputError(`this WeightFormer aligns teachers by their activations on ${record.samples} consolidation examples: pass the consolidation set`);
  return { method: 'activations', images: alignmentImages(data, record.samples) };
}

export interface StudentFamily {
  readonly name: 'mlp' | 'cnn' | 'resnet' | 'vit';
  /** Whether probe tokens (per-unit pre-activations on a probe batch) are defined for this family. */
  readonly probeTokens: boolean;
  /** InputError unless `arch` is a valid architecture of this family. */
  checkArch(arch: StudentArch): void;
  /** The shape key: only teachers with this key can be consolidated by a model of `arch`. */
  signature(arch: StudentArch): string;
  /** InputError unless `p` belongs to this family and has exactly `arch`'s shapes. */
  checkParams(p: StudentParams, arch: StudentArch): void;
  /** A deep copy (stored with the model). */
  cloneArch(arch: StudentArch): StudentArch;
  /** Features per example the student reads (dataset rows). */
  inputSize(arch: StudentArch): number;
  outputSize(arch: StudentArch): number;
  layout(arch: StudentArch): Layout;
  toRows(p: StudentParams): Float32Array[];
  fromRows(rows: Float32Array[], arch: StudentArch): StudentParams;
  /** `teacher` with its hidden units permuted to match `reference` by weight matching (function-preserving). */
  align(reference: StudentParams, teacher: StudentParams): StudentParams;
  /**
   * Every teacher aligned to `reference` by activation matching on `images` (function-preserving; the
   * reference is run once for them all); absent for the families it is not implemented for
   * (`alignTeachers` refuses them).
   */
  alignAllByActivations?(reference: StudentParams, teachers: StudentParams[], images: Dataset): Promise<StudentParams[]>;
  /** Every model aligned to `list[0]`, then averaged (`zooReference`). */
  alignedAverage(list: StudentParams[]): StudentParams;
  /** Element-wise mean of already aligned models. */
  average(list: StudentParams[]): StudentParams;
  /** Content address of a teacher (meta-training fingerprints). */
  digest(p: StudentParams): string;
  /** The reference's bytes inside a WeightFormer file. */
  serialize(p: StudentParams): Uint8Array;
  deserialize(bytes: Uint8Array): StudentParams;
  /** Logits of the functional student whose rows are `rows` (differentiable in them). */
  logits(rows: tf.Tensor2D[], layout: Layout, arch: StudentArch, x: tf.Tensor2D, bn: StudentBnMode): tf.Tensor2D;
  /** The meta-loss of the functional student on `batch` (CE + KD, `mlpLoss`'s objective). */
  loss(rows: tf.Tensor2D[], layout: Layout, arch: StudentArch, batch: LossBatch, bn: StudentBnMode): tf.Scalar;
  /** softmax(logits / temperature) of host parameters on `ds`, n × classes (CNN: eval-mode BN). */
  predictProbs(p: StudentParams, ds: Dataset, temperature: number): Promise<Float32Array>;
  accuracy(p: StudentParams, ds: Dataset): Promise<number>;
}

function mlpArch(arch: StudentArch): ArchitectureSpec {
  if (arch.family !== 'mlp') throw new InputError(`expected an MLP architecture, got family ${String(arch.family)}`);
  return arch;
}

function cnnArch(arch: StudentArch): CnnArchitecture {
  if (!isCnnArch(arch)) throw new InputError(`expected a CNN architecture, got family ${String((arch as { family?: unknown }).family)}`);
  return arch;
}

function mlpParams(p: StudentParams): MlpParams {
  if ('family' in p) throw new InputError(`parameters of the ${p.family} family but the architecture is an MLP`);
  return p;
}

function cnnParams(p: StudentParams): CnnParams {
  if (isCnnParams(p)) return p;
  const what = 'family' in p ? `of the ${p.family} family` : architectureSignature(p);
  throw new InputError(`parameters are ${what} but the architecture is a CNN`);
}

/** The student rows as MLP tensors (w = first inSize columns transposed, b = last column). */
export function rowsToMlpTensors(rows: tf.Tensor2D[], layout: Layout, activation: MlpParams['activation']): MlpTensors {
  return {
    activation,
    layers: layout.layers.map((L, l) => {
      const r = rows[l] as tf.Tensor2D;
      return {
        w: tf.transpose(tf.slice(r, [0, 0], [L.rows, L.inSize])) as tf.Tensor2D,
        b: tf.reshape(tf.slice(r, [0, L.inSize], [L.rows, 1]), [L.rows]) as tf.Tensor1D,
      };
    }),
  };
}

export const MLP_FAMILY: StudentFamily = {
  name: 'mlp',
  probeTokens: true,
  checkArch: (arch) => checkArchitecture(mlpArch(arch)),
  signature: (arch) => architectureSignature(mlpArch(arch)),
  checkParams: (p, arch) => checkParamsMatch(mlpParams(p), mlpArch(arch)),
  cloneArch: (arch) => {
    const a = mlpArch(arch);
    return { ...a, hidden: a.hidden.slice() };
  },
  inputSize: (arch) => mlpArch(arch).inputSize,
  outputSize: (arch) => mlpArch(arch).outputSize,
  layout: (arch) => layoutOf(mlpArch(arch)),
  toRows: (p) => rowsOf(mlpParams(p)),
  fromRows: (rows, arch) => {
    const a = mlpArch(arch);
    return rowsToParams(rows, layoutOf(a), a.activation);
  },
  align: (reference, teacher) => alignToReference(mlpParams(reference), mlpParams(teacher)),
  alignAllByActivations: (reference, teachers, images) => alignAllByActivations(MLP_ACTIVATION_MATCHER, mlpParams(reference), teachers.map(mlpParams), images),
  alignedAverage: (list) => alignedAverage(list.map(mlpParams), 0),
  average: (list) => averageParams(list.map(mlpParams)),
  digest: (p) => paramsDigest(mlpParams(p)),
  serialize: (p) => serializeParams(mlpParams(p)),
  deserialize: (bytes) => deserializeParams(bytes),
  logits: (rows, layout, arch, x) => mlpLogits(rowsToMlpTensors(rows, layout, mlpArch(arch).activation), x),
  loss: (rows, layout, arch, batch) => mlpLoss(rowsToMlpTensors(rows, layout, mlpArch(arch).activation), batch),
  predictProbs: (p, ds, temperature) => predictProbs(mlpParams(p), ds, temperature),
  accuracy: (p, ds) => accuracy(mlpParams(p), ds),
};

export const CNN_FAMILY: StudentFamily = {
  name: 'cnn',
  probeTokens: false,
  checkArch: (arch) => checkCnnArchitecture(cnnArch(arch)),
  signature: (arch) => cnnSignature(cnnArch(arch)),
  checkParams: (p, arch) => checkCnnParamsMatch(cnnParams(p), cnnArch(arch)),
  cloneArch: (arch) => {
    const a = cnnArch(arch);
    return { ...a, inputShape: [a.inputShape[0], a.inputShape[1], a.inputShape[2]], channels: a.channels.slice(), hidden: a.hidden.slice() };
  },
  inputSize: (arch) => {
    const [h, w, c] = cnnArch(arch).inputShape;
    return h * w * c;
  },
  outputSize: (arch) => cnnArch(arch).outputSize,
  layout: (arch) => layoutOf(cnnArch(arch)),
  toRows: (p) => rowsOf(cnnParams(p)),
  fromRows: (rows, arch) => {
    const p = rowsToCnnParams(rows, cnnArch(arch));
    // The predicted variances are positive by construction (model.ts, `positiveFactor`); a mixing
    // correction's rounding could still leave −1e-12 where every teacher's variance is 0, which
    // `validateCnnParams` (and BN's square root) would refuse: clamp such values to 0.
    for (const c of p.convs) if (c.bn) for (let i = 0; i < c.bn.runningVar.length; i++) c.bn.runningVar[i] = Math.max(0, c.bn.runningVar[i] ?? 0);
    return p;
  },
  align: (reference, teacher) => alignCnnToReference(cnnParams(reference), cnnParams(teacher)),
  alignAllByActivations: (reference, teachers, images) => alignAllByActivations(cnnActivationMatcher(), cnnParams(reference), teachers.map(cnnParams), images),
  alignedAverage: (list) => alignedAverageCnn(list.map(cnnParams), 0),
  average: (list) => averageCnnParams(list.map(cnnParams)),
  digest: (p) => cnnParamsDigest(cnnParams(p)),
  serialize: (p) => serializeCnnParams(cnnParams(p)),
  deserialize: (bytes) => deserializeCnnParams(bytes),
  logits: (rows, _layout, arch, x, bn) => cnnLogits(rowsToCnnTensors(rows, cnnArch(arch)), x, bn),
  loss: (rows, layout, arch, batch, bn) => lossOfLogits(CNN_FAMILY.logits(rows, layout, arch, batch.x, bn), batch),
  predictProbs: async (p, ds, temperature) => softmaxOfLogits(await predictCnnLogits(cnnParams(p), ds), ds.n, temperature),
  accuracy: (p, ds) => cnnAccuracy(cnnParams(p), ds),
};

/** The adapter of `arch.family`; InputError for a family WeightFormer cannot consolidate. */
const FAMILIES: Record<StudentFamily['name'], StudentFamily> = { mlp: MLP_FAMILY, cnn: CNN_FAMILY, resnet: RESNET_FAMILY, vit: VIT_FAMILY };

export function familyOf(arch: StudentArch): StudentFamily {
  const family = (arch as { family?: unknown } | null)?.family;
  const found = typeof family === 'string' && Object.hasOwn(FAMILIES, family) ? FAMILIES[family as StudentFamily['name']] : undefined;
  if (!found) throw new InputError(`WeightFormer cannot consolidate architecture family ${String(family)} (${Object.keys(FAMILIES).join(', ')})`);
  return found;
}

/** Whether WeightFormer can consolidate this architecture's family (narrows a wider architecture union). */
export function isStudentArch(arch: { family: string }): arch is StudentArch {
  return Object.hasOwn(FAMILIES, arch.family);
}

/** The adapter of a parameter object. */
export function familyOfParams(p: StudentParams): StudentFamily {
  return FAMILIES[paramsFamily(p)];
}

/** The families activation matching is implemented for (the spec refuses `alignment.method: activations` for others). */
export const ACTIVATION_ALIGNMENT_FAMILIES: readonly StudentFamily['name'][] = Object.values(FAMILIES).filter((f) => f.alignAllByActivations).map((f) => f.name);

/**
 * `teachers` aligned to `reference` as `alignment` says: weight matching (`family.align`, the default) or
 * activation matching on the context's images (InputError for a family without it).
 */
export async function alignTeachers(family: StudentFamily, reference: StudentParams, teachers: StudentParams[], alignment: AlignmentContext = WEIGHT_MATCHING): Promise<StudentParams[]> {
  if (alignment.method === 'weights') return teachers.map((t) => family.align(reference, t));
  const byActivations = family.alignAllByActivations;
  if (!byActivations) throw new InputError(`activation matching is not implemented for the ${family.name} family (it is for ${ACTIVATION_ALIGNMENT_FAMILIES.join(', ')}); use alignment.method weights`);
  return byActivations(reference, teachers, alignment.images);
}

/**
 * A generated student with its BN running statistics re-estimated on `data` (train-mode passes of
 * `batchSize`, no gradient steps: the REPAIR step of DESIGN.md), as a separate step after
 * `generateStudent`, so a pipeline can report the student with its predicted statistics and with
 * recomputed ones. MLPs, ViTs and CNNs without BN come back unchanged (a copy for CNNs); ResNets always have BN.
 */
export async function recomputeStudentBn<P extends StudentParams>(student: P, data: Dataset, batchSize = 256): Promise<P> {
  if (isCnnParams(student)) return (await recomputeBnStatistics(student, data, batchSize)) as P;
  if (paramsFamily(student) === 'resnet') return (await recomputeResnetBnStatistics(student as ResnetParams, data, batchSize)) as P;
  return student;
}
