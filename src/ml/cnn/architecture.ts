/**
 * VGG-style CNNs as plain host arrays: conv (stride 1, 'same') → optional batch norm → ReLU → 2×2 pool
 * (stride 2, 'valid') per block, then a flatten and a dense head with ReLU between layers.
 *
 * Host arrays for the same reasons as `mlp.ts`: parameters are hashed, stored, permuted for alignment and
 * averaged; they become tensors only inside a computation.
 *
 * Layouts (TF's, so a kernel can be handed to `tf.conv2d` as is):
 * - conv kernel `[kh, kw, cin, cout]` row-major: `kernel[((a * kw + b) * cin + ci) * cout + co]`;
 * - feature maps NHWC, and the flatten before the head is HWC with the channel fastest: input row
 *   `(i * w + j) * c + ch` of the first dense layer reads channel `ch` at position (i, j);
 * - dense layers are `MlpLayer`s (`w` inSize × outSize, `x @ w + b`).
 */
import { InputError } from '../../util/errors';
import type { MlpLayer } from '../mlp';
import { Rng } from '../rng';

export type CnnPool = 'max' | 'avg';

export interface CnnArchitecture {
  family: 'cnn';
  /** Height, width, channels of one example; dataset rows are this, NHWC-flattened. */
  inputShape: [number, number, number];
  /** Output channels of each conv block, in order. */
  channels: number[];
  /** Odd; the same for every block ('same' padding keeps the spatial size through the conv). */
  kernelSize: number;
  batchNorm: boolean;
  /** 2×2 stride-2 pooling after every block. */
  pool: CnnPool;
  /** Widths of the dense head's hidden layers; may be empty (flatten straight into the output layer). */
  hidden: number[];
  outputSize: number;
}

/** Per-channel batch-norm entries of one block, each of length cout. */
export interface CnnBatchNorm {
  gamma: Float32Array;
  beta: Float32Array;
  runningMean: Float32Array;
  runningVar: Float32Array;
}

export interface CnnConvBlock {
  kernelSize: number;
  inChannels: number;
  outChannels: number;
  /** `[kernelSize, kernelSize, inChannels, outChannels]`, row-major. */
  kernel: Float32Array;
  bias: Float32Array;
  /** Present on every block or on none. */
  bn?: CnnBatchNorm;
}

/** Self-describing: a loaded CNN needs nothing else to run. */
export interface CnnParams {
  family: 'cnn';
  inputShape: [number, number, number];
  pool: CnnPool;
  convs: CnnConvBlock[];
  dense: MlpLayer[];
}

/** PyTorch's defaults: running = (1 − momentum)·running + momentum·batch, and ε inside the square root. */
export const BN_MOMENTUM = 0.1;
export const BN_EPSILON = 1e-5;

/** Sanity bound: larger is a damaged header or a typo, not a model we could run. */
const MAX_SIZE = 1 << 24;

function positiveInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_SIZE;
}

/** Spatial size after each block, starting with the input's: [h, w] per entry (blocks + 1 entries). */
export function cnnSpatialSizes(arch: Pick<CnnArchitecture, 'inputShape' | 'channels'>): Array<[number, number]> {
  const [h, w] = arch.inputShape;
  const sizes: Array<[number, number]> = [[h, w]];
  for (let b = 0; b < arch.channels.length; b++) {
    const [ph, pw] = sizes[b] ?? [0, 0];
    sizes.push([Math.floor(ph / 2), Math.floor(pw / 2)]);
  }
  return sizes;
}

/** Features entering the dense head (h·w·c after the last pool). */
export function cnnFlatSize(arch: Pick<CnnArchitecture, 'inputShape' | 'channels'>): number {
  const sizes = cnnSpatialSizes(arch);
  const [h, w] = sizes[sizes.length - 1] ?? [0, 0];
  const c = arch.channels[arch.channels.length - 1] ?? arch.inputShape[2];
  return h * w * c;
}

/** Throws InputError unless `arch` describes a buildable CNN. */
export function checkCnnArchitecture(arch: CnnArchitecture): void {
  if (arch.family !== 'cnn') throw new InputError(`architecture family ${String(arch.family)} is not a CNN`);
  if (!Array.isArray(arch.inputShape) || arch.inputShape.length !== 3 || !arch.inputShape.every(positiveInt)) {
    throw new InputError(`inputShape must be [height, width, channels] of positive integers, got ${JSON.stringify(arch.inputShape)}`);
  }
  if (!Array.isArray(arch.channels) || arch.channels.length < 1 || !arch.channels.every(positiveInt)) {
    throw new InputError(`channels must list at least one positive integer per conv block, got ${JSON.stringify(arch.channels)}`);
  }
  if (!positiveInt(arch.kernelSize) || arch.kernelSize % 2 !== 1) {
    throw new InputError(`kernelSize must be an odd positive integer ('same' padding), got ${arch.kernelSize}`);
  }
  if (typeof arch.batchNorm !== 'boolean') throw new InputError('batchNorm must be true or false');
  if (arch.pool !== 'max' && arch.pool !== 'avg') throw new InputError(`pool must be max or avg, got ${String(arch.pool)}`);
  if (!Array.isArray(arch.hidden) || !arch.hidden.every(positiveInt)) {
    throw new InputError(`hidden widths must be positive integers, got ${JSON.stringify(arch.hidden)}`);
  }
  if (!positiveInt(arch.outputSize)) throw new InputError(`outputSize must be a positive integer, got ${arch.outputSize}`);
  const sizes = cnnSpatialSizes(arch);
  const last = sizes[sizes.length - 1] ?? [0, 0];
  if (last[0] < 1 || last[1] < 1) {
    throw new InputError(
      `${arch.channels.length} pooling blocks shrink ${arch.inputShape[0]}×${arch.inputShape[1]} to nothing (at most ${Math.floor(Math.log2(Math.min(arch.inputShape[0], arch.inputShape[1])))} fit)`,
    );
  }
}

/** The architecture these parameters have (kernel size and BN read off the first block). */
export function cnnArchitectureOf(p: CnnParams): CnnArchitecture {
  const first = p.convs[0];
  const out = p.dense[p.dense.length - 1];
  if (!first || !out) throw new InputError('a CNN needs at least one conv block and one dense layer');
  return {
    family: 'cnn',
    inputShape: [p.inputShape[0], p.inputShape[1], p.inputShape[2]],
    channels: p.convs.map((c) => c.outChannels),
    kernelSize: first.kernelSize,
    batchNorm: first.bn !== undefined,
    pool: p.pool,
    hidden: p.dense.slice(0, -1).map((l) => l.outSize),
    outputSize: out.outSize,
  };
}

/** A short key of the shapes, e.g. `cnn:28x28x1:c8-16:k3:bn:max:h-:10`: equal keys align and average. */
export function cnnSignature(arch: CnnArchitecture | CnnParams): string {
  const a = 'convs' in arch ? cnnArchitectureOf(arch) : arch;
  return `cnn:${a.inputShape.join('x')}:c${a.channels.join('-')}:k${a.kernelSize}:${a.batchNorm ? 'bn' : 'nobn'}:${a.pool}:h${a.hidden.join('-') || '-'}:${a.outputSize}`;
}

function checkFinite(values: Float32Array, where: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new InputError(`CNN parameters: non-finite value in ${where} at index ${i}`);
  }
}

/**
 * Throws InputError unless every array has the shape its block declares, the blocks chain (channels,
 * then the flatten size into the head) and BN is on every block or none. Values are not looked at (the
 * rows view also carries gradients, which may be anything).
 */
export function checkCnnShapes(p: CnnParams): void {
  if (p.family !== 'cnn') throw new InputError(`CNN parameters: family ${String(p.family)}`);
  if (p.convs.length < 1 || p.dense.length < 1) throw new InputError('CNN parameters: need at least one conv block and one dense layer');
  const arch = cnnArchitectureOf(p);
  checkCnnArchitecture(arch);
  let cin = p.inputShape[2];
  p.convs.forEach((c, i) => {
    const where = `conv block ${i}`;
    if (c.kernelSize !== arch.kernelSize) throw new InputError(`CNN parameters: ${where} has kernel size ${c.kernelSize}, block 0 has ${arch.kernelSize}`);
    if (c.inChannels !== cin) throw new InputError(`CNN parameters: ${where} takes ${c.inChannels} channels but gets ${cin}`);
    if (!positiveInt(c.outChannels)) throw new InputError(`CNN parameters: ${where} has ${c.outChannels} output channels`);
    if (c.kernel.length !== c.kernelSize * c.kernelSize * c.inChannels * c.outChannels || c.bias.length !== c.outChannels) {
      throw new InputError(`CNN parameters: ${where} arrays do not match its shape ${c.kernelSize}×${c.kernelSize}×${c.inChannels}×${c.outChannels}`);
    }
    if ((c.bn !== undefined) !== arch.batchNorm) throw new InputError(`CNN parameters: batch norm on some blocks only (${where})`);
    if (c.bn) {
      for (const [name, a] of Object.entries(c.bn) as Array<[string, Float32Array]>) {
        if (a.length !== c.outChannels) throw new InputError(`CNN parameters: ${where} BN ${name} has ${a.length} entries, expected ${c.outChannels}`);
      }
    }
    cin = c.outChannels;
  });
  let inSize = cnnFlatSize(arch);
  p.dense.forEach((l, i) => {
    const where = `dense layer ${i}`;
    if (l.inSize !== inSize) throw new InputError(`CNN parameters: ${where} takes ${l.inSize} inputs but gets ${inSize}`);
    if (!positiveInt(l.outSize) || l.w.length !== l.inSize * l.outSize || l.b.length !== l.outSize) {
      throw new InputError(`CNN parameters: ${where} arrays do not match its shape ${l.inSize}×${l.outSize}`);
    }
    inSize = l.outSize;
  });
}

/**
 * `checkCnnShapes`, and every value finite, running variances ≥ 0. Parameters may come from someone
 * else's file: garbage must not train or score.
 */
export function validateCnnParams(p: CnnParams): void {
  checkCnnShapes(p);
  p.convs.forEach((c, i) => {
    const where = `conv block ${i}`;
    checkFinite(c.kernel, `${where} kernel`);
    checkFinite(c.bias, `${where} bias`);
    if (c.bn) {
      for (const [name, a] of Object.entries(c.bn) as Array<[string, Float32Array]>) checkFinite(a, `${where} BN ${name}`);
      if (c.bn.runningVar.some((v) => v < 0)) throw new InputError(`CNN parameters: ${where} has a negative running variance`);
    }
  });
  p.dense.forEach((l, i) => {
    checkFinite(l.w, `dense layer ${i} weights`);
    checkFinite(l.b, `dense layer ${i} bias`);
  });
}

/** Throws InputError unless `p` has exactly the shapes `arch` asks for. */
export function checkCnnParamsMatch(p: CnnParams, arch: CnnArchitecture): void {
  const have = cnnSignature(p);
  const want = cnnSignature(arch);
  if (have !== want) throw new InputError(`parameters are ${have} but the architecture is ${want}`);
}

/**
 * Fresh parameters drawn from `seed`: He-normal (std √(2 / fan-in)) for every conv kernel and hidden dense
 * layer, all followed by ReLU; Glorot-normal for the output layer; zero biases; BN as PyTorch starts it
 * (γ 1, β 0, running mean 0, running variance 1).
 *
 * @example
 * const p = initCnn({ family: 'cnn', inputShape: [28, 28, 1], channels: [8, 16], kernelSize: 3,
 *   batchNorm: true, pool: 'max', hidden: [], outputSize: 10 }, 7);
 */
export function initCnn(arch: CnnArchitecture, seed: number): CnnParams {
  checkCnnArchitecture(arch);
  const rng = new Rng(seed);
  const k = arch.kernelSize;
  const convs: CnnConvBlock[] = [];
  let cin = arch.inputShape[2];
  for (const cout of arch.channels) {
    const std = Math.sqrt(2 / (k * k * cin));
    const kernel = new Float32Array(k * k * cin * cout);
    for (let i = 0; i < kernel.length; i++) kernel[i] = rng.normal(0, std);
    const block: CnnConvBlock = { kernelSize: k, inChannels: cin, outChannels: cout, kernel, bias: new Float32Array(cout) };
    if (arch.batchNorm) {
      block.bn = {
        gamma: new Float32Array(cout).fill(1),
        beta: new Float32Array(cout),
        runningMean: new Float32Array(cout),
        runningVar: new Float32Array(cout).fill(1),
      };
    }
    convs.push(block);
    cin = cout;
  }
  const sizes = [cnnFlatSize(arch), ...arch.hidden, arch.outputSize];
  const dense: MlpLayer[] = [];
  for (let l = 0; l + 1 < sizes.length; l++) {
    const inSize = sizes[l] ?? 0;
    const outSize = sizes[l + 1] ?? 0;
    const isOutput = l + 2 === sizes.length;
    const std = isOutput ? Math.sqrt(2 / (inSize + outSize)) : Math.sqrt(2 / inSize);
    const w = new Float32Array(inSize * outSize);
    for (let i = 0; i < w.length; i++) w[i] = rng.normal(0, std);
    dense.push({ w, b: new Float32Array(outSize), inSize, outSize });
  }
  return { family: 'cnn', inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]], pool: arch.pool, convs, dense };
}

/** A deep copy. */
export function cloneCnnParams(p: CnnParams): CnnParams {
  return {
    family: 'cnn',
    inputShape: [p.inputShape[0], p.inputShape[1], p.inputShape[2]],
    pool: p.pool,
    convs: p.convs.map((c) => ({
      kernelSize: c.kernelSize,
      inChannels: c.inChannels,
      outChannels: c.outChannels,
      kernel: new Float32Array(c.kernel),
      bias: new Float32Array(c.bias),
      ...(c.bn
        ? {
            bn: {
              gamma: new Float32Array(c.bn.gamma),
              beta: new Float32Array(c.bn.beta),
              runningMean: new Float32Array(c.bn.runningMean),
              runningVar: new Float32Array(c.bn.runningVar),
            },
          }
        : {}),
    })),
    dense: p.dense.map((l) => ({ w: new Float32Array(l.w), b: new Float32Array(l.b), inSize: l.inSize, outSize: l.outSize })),
  };
}

/** Total number of scalars, running BN statistics included. */
export function cnnParamCount(p: CnnParams): number {
  const conv = p.convs.reduce((n, c) => n + c.kernel.length + c.bias.length + (c.bn ? 4 * c.outChannels : 0), 0);
  return conv + p.dense.reduce((n, l) => n + l.w.length + l.b.length, 0);
}
