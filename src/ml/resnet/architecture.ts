/**
 * Small ResNet-style nets as plain host arrays: a stem conv (c → width) with BN and ReLU, then `stages`
 * stages of `blocksPerStage` post-activation basic blocks, y = ReLU(x + BN(conv(ReLU(BN(conv(x)))))),
 * a 2×2 max pool (stride 2, 'valid') before every stage but the first, a global average pool and one
 * dense layer width → outputSize.
 *
 * Deliberately simple: the residual stream keeps `width` channels everywhere (no projection convs, no
 * strided convs), so every block's shortcut is the identity and the whole stream shares one channel
 * order — which is what makes alignment a single stream permutation plus one per block (see align.ts).
 *
 * Layouts are the CNN module's (TF's): conv kernels `[k, k, cin, cout]` row-major, feature maps NHWC, the
 * head an `MlpLayer` (`w` width × outputSize, `x @ w + b`). Host arrays for the same reasons as there.
 */
import { InputError } from '../../util/errors';
import type { CnnBatchNorm } from '../cnn/architecture';
import type { MlpLayer } from '../mlp';
import { Rng } from '../rng';

export interface ResnetArchitecture {
  family: 'resnet';
  /** Height, width, channels of one example; dataset rows are this, NHWC-flattened. */
  inputShape: [number, number, number];
  /** Channels of the residual stream (stem output, every block's input and output). */
  width: number;
  /** Stages; each after the first starts with a 2×2 max pool that halves the resolution. */
  stages: number;
  blocksPerStage: number;
  /** Odd; 'same' padding keeps the spatial size through every conv. */
  kernelSize: number;
  outputSize: number;
}

/** A conv with its batch norm (always present in this family). */
export interface ResnetConv {
  kernelSize: number;
  inChannels: number;
  outChannels: number;
  /** `[kernelSize, kernelSize, inChannels, outChannels]`, row-major. */
  kernel: Float32Array;
  bias: Float32Array;
  bn: CnnBatchNorm;
}

/** conv1 (width → width, the block's inner channels) and conv2 (inner → width, added to the stream). */
export interface ResnetBlock {
  conv1: ResnetConv;
  conv2: ResnetConv;
}

/** Self-describing: a loaded ResNet needs nothing else to run. */
export interface ResnetParams {
  family: 'resnet';
  inputShape: [number, number, number];
  stem: ResnetConv;
  /** `stages[s][b]`: block b of stage s. */
  stages: ResnetBlock[][];
  head: MlpLayer;
}

/** Sanity bound: larger is a damaged header or a typo, not a model we could run. */
const MAX_SIZE = 1 << 24;

function positiveInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_SIZE;
}

/** Spatial size [h, w] of each stage (after its pool, if any). */
export function resnetStageSizes(arch: Pick<ResnetArchitecture, 'inputShape' | 'stages'>): Array<[number, number]> {
  const sizes: Array<[number, number]> = [[arch.inputShape[0], arch.inputShape[1]]];
  for (let s = 1; s < arch.stages; s++) {
    const [h, w] = sizes[s - 1] ?? [0, 0];
    sizes.push([Math.floor(h / 2), Math.floor(w / 2)]);
  }
  return sizes;
}

/** Throws InputError unless `arch` describes a buildable ResNet. */
export function checkResnetArchitecture(arch: ResnetArchitecture): void {
  if (arch.family !== 'resnet') throw new InputError(`architecture family ${String(arch.family)} is not a ResNet`);
  if (!Array.isArray(arch.inputShape) || arch.inputShape.length !== 3 || !arch.inputShape.every(positiveInt)) {
    throw new InputError(`inputShape must be [height, width, channels] of positive integers, got ${JSON.stringify(arch.inputShape)}`);
  }
  for (const key of ['width', 'stages', 'blocksPerStage', 'outputSize'] as const) {
    if (!positiveInt(arch[key])) throw new InputError(`${key} must be a positive integer, got ${String(arch[key])}`);
  }
  if (!positiveInt(arch.kernelSize) || arch.kernelSize % 2 !== 1) {
    throw new InputError(`kernelSize must be an odd positive integer ('same' padding), got ${arch.kernelSize}`);
  }
  const sizes = resnetStageSizes(arch);
  const last = sizes[sizes.length - 1] ?? [0, 0];
  if (last[0] < 1 || last[1] < 1) {
    throw new InputError(
      `${arch.stages} stages pool ${arch.inputShape[0]}×${arch.inputShape[1]} down to nothing (at most ${1 + Math.floor(Math.log2(Math.min(arch.inputShape[0], arch.inputShape[1])))} fit)`,
    );
  }
}

/** The architecture these parameters have (read off the stem, the first stage and the head). */
export function resnetArchitectureOf(p: ResnetParams): ResnetArchitecture {
  return {
    family: 'resnet',
    inputShape: [p.inputShape[0], p.inputShape[1], p.inputShape[2]],
    width: p.stem.outChannels,
    stages: p.stages.length,
    blocksPerStage: p.stages[0]?.length ?? 0,
    kernelSize: p.stem.kernelSize,
    outputSize: p.head.outSize,
  };
}

/** A short key of the shapes, e.g. `resnet:28x28x1:w8:s2x1:k3:10`: equal keys align and average. */
export function resnetSignature(arch: ResnetArchitecture | ResnetParams): string {
  const a = 'stem' in arch ? resnetArchitectureOf(arch) : arch;
  return `resnet:${a.inputShape.join('x')}:w${a.width}:s${a.stages}x${a.blocksPerStage}:k${a.kernelSize}:${a.outputSize}`;
}

/** Every conv in a fixed order — stem, then per block conv1, conv2 — the order of BN moments, rows and files. */
export function resnetConvs(p: ResnetParams): ResnetConv[] {
  return [p.stem, ...p.stages.flatMap((stage) => stage.flatMap((b) => [b.conv1, b.conv2]))];
}

/** Every block in order (stage by stage). */
export function resnetBlocks(p: ResnetParams): ResnetBlock[] {
  return p.stages.flat();
}

const BN_NAMES = ['gamma', 'beta', 'runningMean', 'runningVar'] as const;

function checkFinite(values: Float32Array, where: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new InputError(`ResNet parameters: non-finite value in ${where} at index ${i}`);
  }
}

/** Names for error messages, in `resnetConvs` order. */
function convNames(p: ResnetParams): string[] {
  return ['stem', ...p.stages.flatMap((stage, s) => stage.flatMap((_, b) => [`stage ${s} block ${b} conv1`, `stage ${s} block ${b} conv2`]))];
}

/**
 * Throws InputError unless every array has the shape its conv declares and the convs chain (stem c →
 * width, conv1 width → width, conv2 width → width, head width → outputSize). Values are not looked at
 * (the rows view also carries gradients, which may be anything).
 */
export function checkResnetShapes(p: ResnetParams): void {
  if (p.family !== 'resnet') throw new InputError(`ResNet parameters: family ${String(p.family)}`);
  if (!Array.isArray(p.stages) || p.stages.length < 1) throw new InputError('ResNet parameters: need at least one stage');
  const arch = resnetArchitectureOf(p);
  checkResnetArchitecture(arch);
  p.stages.forEach((stage, s) => {
    if (stage.length !== arch.blocksPerStage) throw new InputError(`ResNet parameters: stage ${s} has ${stage.length} blocks, stage 0 has ${arch.blocksPerStage}`);
  });
  const names = convNames(p);
  resnetConvs(p).forEach((c, i) => {
    const where = names[i] ?? `conv ${i}`;
    const cin = i === 0 ? arch.inputShape[2] : arch.width;
    if (c.kernelSize !== arch.kernelSize) throw new InputError(`ResNet parameters: ${where} has kernel size ${c.kernelSize}, the stem has ${arch.kernelSize}`);
    if (c.inChannels !== cin || c.outChannels !== arch.width) {
      throw new InputError(`ResNet parameters: ${where} maps ${c.inChannels} → ${c.outChannels} channels, expected ${cin} → ${arch.width}`);
    }
    if (c.kernel.length !== c.kernelSize * c.kernelSize * c.inChannels * c.outChannels || c.bias.length !== c.outChannels) {
      throw new InputError(`ResNet parameters: ${where} arrays do not match its shape ${c.kernelSize}×${c.kernelSize}×${c.inChannels}×${c.outChannels}`);
    }
    if (!c.bn) throw new InputError(`ResNet parameters: ${where} has no batch norm`);
    for (const name of BN_NAMES) {
      const a = c.bn[name];
      if (!(a instanceof Float32Array) || a.length !== c.outChannels) {
        throw new InputError(`ResNet parameters: ${where} BN ${name} has ${a?.length ?? 0} entries, expected ${c.outChannels}`);
      }
    }
  });
  const h = p.head;
  if (h.inSize !== arch.width || h.w.length !== h.inSize * h.outSize || h.b.length !== h.outSize) {
    throw new InputError(`ResNet parameters: the head's arrays do not match ${arch.width}×${h.outSize}`);
  }
}

/**
 * `checkResnetShapes`, and every value finite, running variances ≥ 0. Parameters may come from someone
 * else's file: garbage must not train or score.
 */
export function validateResnetParams(p: ResnetParams): void {
  checkResnetShapes(p);
  const names = convNames(p);
  resnetConvs(p).forEach((c, i) => {
    const where = names[i] ?? `conv ${i}`;
    checkFinite(c.kernel, `${where} kernel`);
    checkFinite(c.bias, `${where} bias`);
    for (const name of BN_NAMES) checkFinite(c.bn[name], `${where} BN ${name}`);
    if (c.bn.runningVar.some((v) => v < 0)) throw new InputError(`ResNet parameters: ${where} has a negative running variance`);
  });
  checkFinite(p.head.w, 'head weights');
  checkFinite(p.head.b, 'head bias');
}

/** Throws InputError unless `p` has exactly the shapes `arch` asks for. */
export function checkResnetParamsMatch(p: ResnetParams, arch: ResnetArchitecture): void {
  const have = resnetSignature(p);
  const want = resnetSignature(arch);
  if (have !== want) throw new InputError(`parameters are ${have} but the architecture is ${want}`);
}

function heConv(rng: Rng, k: number, cin: number, cout: number): ResnetConv {
  const std = Math.sqrt(2 / (k * k * cin));
  const kernel = new Float32Array(k * k * cin * cout);
  for (let i = 0; i < kernel.length; i++) kernel[i] = rng.normal(0, std);
  return {
    kernelSize: k,
    inChannels: cin,
    outChannels: cout,
    kernel,
    bias: new Float32Array(cout),
    bn: { gamma: new Float32Array(cout).fill(1), beta: new Float32Array(cout), runningMean: new Float32Array(cout), runningVar: new Float32Array(cout).fill(1) },
  };
}

/**
 * Fresh parameters drawn from `seed`: He-normal conv kernels (each feeds a ReLU, directly or after the
 * addition), a Glorot-normal head, zero biases, BN as PyTorch starts it (γ 1, β 0, running mean 0,
 * running variance 1). Drawn in `resnetConvs` order, then the head.
 *
 * @example
 * const p = initResnet({ family: 'resnet', inputShape: [28, 28, 1], width: 8, stages: 2, blocksPerStage: 1,
 *   kernelSize: 3, outputSize: 10 }, 7);
 */
export function initResnet(arch: ResnetArchitecture, seed: number): ResnetParams {
  checkResnetArchitecture(arch);
  const rng = new Rng(seed);
  const { kernelSize: k, width } = arch;
  const stem = heConv(rng, k, arch.inputShape[2], width);
  const stages: ResnetBlock[][] = [];
  for (let s = 0; s < arch.stages; s++) {
    const stage: ResnetBlock[] = [];
    for (let b = 0; b < arch.blocksPerStage; b++) stage.push({ conv1: heConv(rng, k, width, width), conv2: heConv(rng, k, width, width) });
    stages.push(stage);
  }
  const std = Math.sqrt(2 / (width + arch.outputSize));
  const w = new Float32Array(width * arch.outputSize);
  for (let i = 0; i < w.length; i++) w[i] = rng.normal(0, std);
  return {
    family: 'resnet',
    inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]],
    stem,
    stages,
    head: { w, b: new Float32Array(arch.outputSize), inSize: width, outSize: arch.outputSize },
  };
}

function cloneConv(c: ResnetConv): ResnetConv {
  return {
    kernelSize: c.kernelSize,
    inChannels: c.inChannels,
    outChannels: c.outChannels,
    kernel: new Float32Array(c.kernel),
    bias: new Float32Array(c.bias),
    bn: {
      gamma: new Float32Array(c.bn.gamma),
      beta: new Float32Array(c.bn.beta),
      runningMean: new Float32Array(c.bn.runningMean),
      runningVar: new Float32Array(c.bn.runningVar),
    },
  };
}

/** A deep copy. */
export function cloneResnetParams(p: ResnetParams): ResnetParams {
  return {
    family: 'resnet',
    inputShape: [p.inputShape[0], p.inputShape[1], p.inputShape[2]],
    stem: cloneConv(p.stem),
    stages: p.stages.map((stage) => stage.map((b) => ({ conv1: cloneConv(b.conv1), conv2: cloneConv(b.conv2) }))),
    head: { w: new Float32Array(p.head.w), b: new Float32Array(p.head.b), inSize: p.head.inSize, outSize: p.head.outSize },
  };
}

/** Every array in file order: per conv (`resnetConvs` order) kernel, bias, γ, β, running mean, running variance; head w, b. */
export function resnetParamArrays(p: ResnetParams): Float32Array[] {
  const out: Float32Array[] = [];
  for (const c of resnetConvs(p)) out.push(c.kernel, c.bias, c.bn.gamma, c.bn.beta, c.bn.runningMean, c.bn.runningVar);
  out.push(p.head.w, p.head.b);
  return out;
}

/** Total number of scalars, running BN statistics included. */
export function resnetParamCount(p: ResnetParams): number {
  return resnetParamArrays(p).reduce((n, a) => n + a.length, 0);
}
