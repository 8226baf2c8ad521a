/**
 * Small Vision Transformers as plain host arrays: patch embedding (a linear map of each flattened patch),
 * learned position embeddings, `depth` pre-norm blocks x + MHA(LN(x)), x + MLP(LN(x)) with exact (erf)
 * GELU, a final LayerNorm, mean pooling over the tokens, and a linear head.
 *
 * Mean pooling rather than a class token: for the small nets and datasets this library trains, pooling
 * the tokens trains faster and at least as well (Beyer et al., "Better plain ViT baselines", 2022), every
 * token then receives the head's gradient directly, and it is one fewer parameter and token. The class
 * token would also be one more thing whose meaning depends on training order, not shape.
 *
 * Host arrays for the same reasons as `mlp.ts`: parameters are hashed, stored, permuted for alignment and
 * averaged; they become tensors only inside a computation.
 *
 * Layouts:
 * - every linear layer is an `MlpLayer` (`w` inSize × outSize row-major, `x @ w + b`);
 * - a patch is flattened in (row, column, channel) order, the channel fastest — the input row of the
 *   patch embedding `(a * patchSize + b) * c + ch` reads channel `ch` at offset (a, b) inside the patch;
 *   the tokens are the patches in row-major order (`pi * (w / patchSize) + pj`);
 * - `posEmbed` is tokens × dim, row-major (token t's embedding at `t * dim`);
 * - attention: q, k, v are dim × dim; head `h` owns their output columns `[h·dh, (h + 1)·dh)`
 *   (dh = dim / heads), and `proj` reads the concatenated heads in that order.
 */
import { InputError } from '../../util/errors';
import type { MlpLayer } from '../mlp';
import { Rng } from '../rng';

export interface VitArchitecture {
  family: 'vit';
  /** Height, width, channels of one example; dataset rows are this, HWC-flattened (as for the CNN). */
  inputShape: [number, number, number];
  /** Side of the square patches; divides height and width. */
  patchSize: number;
  /** Width of the residual stream (token embedding). */
  dim: number;
  /** Attention heads per block; divides `dim`. */
  heads: number;
  /** Transformer blocks, ≥ 1. */
  depth: number;
  /** MLP hidden width over `dim`; `mlpRatio · dim` must be a whole number. */
  mlpRatio: number;
  outputSize: number;
}

export interface VitLayerNorm {
  gamma: Float32Array;
  beta: Float32Array;
}

export interface VitBlock {
  norm1: VitLayerNorm;
  q: MlpLayer;
  k: MlpLayer;
  v: MlpLayer;
  /** The attention's output projection (dim × dim), reading the heads' outputs side by side. */
  proj: MlpLayer;
  norm2: VitLayerNorm;
  /** dim × hidden. */
  fc1: MlpLayer;
  /** hidden × dim. */
  fc2: MlpLayer;
}

/** Self-describing: a loaded ViT needs nothing else to run. */
export interface VitParams {
  family: 'vit';
  inputShape: [number, number, number];
  patchSize: number;
  heads: number;
  /** (patchSize² · channels) × dim. */
  patchEmbed: MlpLayer;
  /** tokens × dim, row-major. */
  posEmbed: Float32Array;
  blocks: VitBlock[];
  /** The final LayerNorm, applied to every token before pooling. */
  norm: VitLayerNorm;
  /** dim × outputSize. */
  head: MlpLayer;
}

/** timm's and big_vision's ViT LayerNorm ε (PyTorch's default is 1e-5; the difference is immaterial). */
export const LN_EPSILON = 1e-6;
/** Standard deviation of the initial position embeddings (timm, big_vision). */
const POS_EMBED_STD = 0.02;

/** Sanity bound: larger is a damaged header or a typo, not a model we could run. */
const MAX_SIZE = 1 << 24;

function positiveInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_SIZE;
}

/** Number of patches (tokens). */
export function vitTokens(arch: Pick<VitArchitecture, 'inputShape' | 'patchSize'>): number {
  return (arch.inputShape[0] / arch.patchSize) * (arch.inputShape[1] / arch.patchSize);
}

/** Values per flattened patch (patchSize² · channels). */
export function vitPatchSize(arch: Pick<VitArchitecture, 'inputShape' | 'patchSize'>): number {
  return arch.patchSize * arch.patchSize * arch.inputShape[2];
}

/** The MLP's hidden width, mlpRatio · dim. */
export function vitMlpHidden(arch: Pick<VitArchitecture, 'dim' | 'mlpRatio'>): number {
  return Math.round(arch.mlpRatio * arch.dim);
}

/** Throws InputError unless `arch` describes a buildable ViT. */
export function checkVitArchitecture(arch: VitArchitecture): void {
  if (arch.family !== 'vit') throw new InputError(`architecture family ${String(arch.family)} is not a ViT`);
  if (!Array.isArray(arch.inputShape) || arch.inputShape.length !== 3 || !arch.inputShape.every(positiveInt)) {
    throw new InputError(`inputShape must be [height, width, channels] of positive integers, got ${JSON.stringify(arch.inputShape)}`);
  }
  const [h, w] = arch.inputShape;
  if (!positiveInt(arch.patchSize) || h % arch.patchSize !== 0 || w % arch.patchSize !== 0) {
    throw new InputError(`patchSize must be a positive integer dividing ${h} and ${w}, got ${arch.patchSize}`);
  }
  if (!positiveInt(arch.dim)) throw new InputError(`dim must be a positive integer, got ${arch.dim}`);
  if (!positiveInt(arch.heads) || arch.dim % arch.heads !== 0) {
    throw new InputError(`heads must be a positive integer dividing dim ${arch.dim}, got ${arch.heads}`);
  }
  if (!positiveInt(arch.depth)) throw new InputError(`depth must be a positive integer, got ${arch.depth}`);
  const hidden = arch.mlpRatio * arch.dim;
  if (typeof arch.mlpRatio !== 'number' || !(arch.mlpRatio > 0) || !positiveInt(Math.round(hidden)) || Math.abs(hidden - Math.round(hidden)) > 1e-9) {
    throw new InputError(`mlpRatio · dim must be a positive whole number, got ${arch.mlpRatio} · ${arch.dim}`);
  }
  if (!positiveInt(arch.outputSize)) throw new InputError(`outputSize must be a positive integer, got ${arch.outputSize}`);
}

/** The architecture these parameters have (dim, depth and MLP ratio read off the arrays). */
export function vitArchitectureOf(p: VitParams): VitArchitecture {
  const first = p.blocks[0];
  if (!first) throw new InputError('a ViT needs at least one block');
  const dim = p.patchEmbed.outSize;
  return {
    family: 'vit',
    inputShape: [p.inputShape[0], p.inputShape[1], p.inputShape[2]],
    patchSize: p.patchSize,
    dim,
    heads: p.heads,
    depth: p.blocks.length,
    mlpRatio: first.fc1.outSize / dim,
    outputSize: p.head.outSize,
  };
}

/** A short key of the shapes, e.g. `vit:28x28x1:p7:d32:h4:x1:m64:10`: equal keys align and average. */
export function vitSignature(arch: VitArchitecture | VitParams): string {
  const a = 'blocks' in arch ? vitArchitectureOf(arch) : arch;
  return `vit:${a.inputShape.join('x')}:p${a.patchSize}:d${a.dim}:h${a.heads}:x${a.depth}:m${vitMlpHidden(a)}:${a.outputSize}`;
}

/**
 * Every array's shape, in the fixed order used everywhere (file, trainer, tensors): patch embedding w, b;
 * position embeddings; per block norm1 γ, β, q w, b, k w, b, v w, b, proj w, b, norm2 γ, β, fc1 w, b,
 * fc2 w, b; final norm γ, β; head w, b.
 */
export function vitParamShapes(arch: VitArchitecture): number[][] {
  const d = arch.dim;
  const hidden = vitMlpHidden(arch);
  const shapes: number[][] = [[vitPatchSize(arch), d], [d], [vitTokens(arch), d]];
  for (let b = 0; b < arch.depth; b++) {
    shapes.push([d], [d], [d, d], [d], [d, d], [d], [d, d], [d], [d, d], [d], [d], [d], [d, hidden], [hidden], [hidden, d], [d]);
  }
  shapes.push([d], [d], [d, arch.outputSize], [arch.outputSize]);
  return shapes;
}

/** The arrays of `p` in `vitParamShapes` order (the same objects, not copies). All of them are trained. */
export function vitParamArrays(p: VitParams): Float32Array[] {
  const out: Float32Array[] = [p.patchEmbed.w, p.patchEmbed.b, p.posEmbed];
  for (const b of p.blocks) {
    out.push(b.norm1.gamma, b.norm1.beta);
    for (const l of [b.q, b.k, b.v, b.proj]) out.push(l.w, l.b);
    out.push(b.norm2.gamma, b.norm2.beta, b.fc1.w, b.fc1.b, b.fc2.w, b.fc2.b);
  }
  out.push(p.norm.gamma, p.norm.beta, p.head.w, p.head.b);
  return out;
}

/** Parameters of `arch` whose arrays are `arrays` (in `vitParamShapes` order; taken, not copied). */
export function vitParamsFromArrays(arch: VitArchitecture, arrays: Float32Array[]): VitParams {
  let i = 0;
  const next = (): Float32Array => {
    const a = arrays[i++];
    if (!a) throw new InputError(`ViT parameters: array ${i - 1} missing`);
    return a;
  };
  const d = arch.dim;
  const hidden = vitMlpHidden(arch);
  const linear = (inSize: number, outSize: number): MlpLayer => ({ w: next(), b: next(), inSize, outSize });
  const norm = (): VitLayerNorm => ({ gamma: next(), beta: next() });
  const patchEmbed = linear(vitPatchSize(arch), d);
  const posEmbed = next();
  const blocks: VitBlock[] = [];
  for (let b = 0; b < arch.depth; b++) {
    const norm1 = norm();
    const q = linear(d, d);
    const k = linear(d, d);
    const v = linear(d, d);
    const proj = linear(d, d);
    blocks.push({ norm1, q, k, v, proj, norm2: norm(), fc1: linear(d, hidden), fc2: linear(hidden, d) });
  }
  const finalNorm = norm();
  const head = linear(d, arch.outputSize);
  if (i !== arrays.length) throw new InputError(`ViT parameters: ${arrays.length} arrays for ${i} slots`);
  return {
    family: 'vit',
    inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]],
    patchSize: arch.patchSize,
    heads: arch.heads,
    patchEmbed,
    posEmbed,
    blocks,
    norm: finalNorm,
    head,
  };
}

function checkFinite(values: Float32Array, where: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new InputError(`ViT parameters: non-finite value in ${where} at index ${i}`);
  }
}

/**
 * Throws InputError unless every array has the size the architecture (read off the parameters) gives it
 * and every linear layer's declared sizes chain. Values are not looked at (the rows view also carries
 * gradients, which may be anything).
 */
export function checkVitShapes(p: VitParams): void {
  if (p.family !== 'vit') throw new InputError(`ViT parameters: family ${String(p.family)}`);
  if (!Array.isArray(p.blocks) || p.blocks.length < 1) throw new InputError('ViT parameters: need at least one block');
  const arch = vitArchitectureOf(p);
  checkVitArchitecture(arch);
  const arrays = vitParamArrays(p);
  const shapes = vitParamShapes(arch);
  if (arrays.length !== shapes.length) throw new InputError(`ViT parameters: ${arrays.length} arrays, expected ${shapes.length}`);
  arrays.forEach((a, i) => {
    const shape = shapes[i] ?? [];
    const size = shape.reduce((s, v) => s * v, 1);
    if (!(a instanceof Float32Array) || a.length !== size) {
      throw new InputError(`ViT parameters: array ${i} has ${a?.length ?? 0} values, expected ${shape.join('×')}`);
    }
  });
  const d = arch.dim;
  const hidden = vitMlpHidden(arch);
  const expectLayer = (l: MlpLayer, inSize: number, outSize: number, where: string): void => {
    if (l.inSize !== inSize || l.outSize !== outSize) throw new InputError(`ViT parameters: ${where} is ${l.inSize}×${l.outSize}, expected ${inSize}×${outSize}`);
  };
  expectLayer(p.patchEmbed, vitPatchSize(arch), d, 'patch embedding');
  p.blocks.forEach((b, i) => {
    for (const [name, l] of [['q', b.q], ['k', b.k], ['v', b.v], ['proj', b.proj]] as const) expectLayer(l, d, d, `block ${i} ${name}`);
    expectLayer(b.fc1, d, hidden, `block ${i} fc1`);
    expectLayer(b.fc2, hidden, d, `block ${i} fc2`);
  });
  expectLayer(p.head, d, arch.outputSize, 'head');
}

/**
 * `checkVitShapes`, and every value finite. Parameters may come from someone else's file: garbage must
 * not train or score.
 */
export function validateVitParams(p: VitParams): void {
  checkVitShapes(p);
  vitParamArrays(p).forEach((a, i) => checkFinite(a, `array ${i}`));
}

/** Throws InputError unless `p` has exactly the shapes `arch` asks for. */
export function checkVitParamsMatch(p: VitParams, arch: VitArchitecture): void {
  const have = vitSignature(p);
  const want = vitSignature(arch);
  if (have !== want) throw new InputError(`parameters are ${have} but the architecture is ${want}`);
}

/**
 * Fresh parameters drawn from `seed`: Glorot-normal weights for every linear layer (the variance of the
 * reference ViT's xavier_uniform), zero biases, N(0, 0.02²) position embeddings, LayerNorms γ 1, β 0.
 *
 * @example
 * const p = initVit({ family: 'vit', inputShape: [28, 28, 1], patchSize: 7, dim: 32, heads: 4, depth: 1,
 *   mlpRatio: 2, outputSize: 10 }, 7);
 */
export function initVit(arch: VitArchitecture, seed: number): VitParams {
  checkVitArchitecture(arch);
  const rng = new Rng(seed);
  const arrays = vitParamShapes(arch).map((s) => new Float32Array(s.reduce((a, v) => a * v, 1)));
  const p = vitParamsFromArrays(arch, arrays);
  const glorot = (l: MlpLayer): void => {
    const std = Math.sqrt(2 / (l.inSize + l.outSize));
    for (let i = 0; i < l.w.length; i++) l.w[i] = rng.normal(0, std);
  };
  // Drawn in file order, so the stream is a function of the shapes only.
  glorot(p.patchEmbed);
  for (let i = 0; i < p.posEmbed.length; i++) p.posEmbed[i] = rng.normal(0, POS_EMBED_STD);
  for (const b of p.blocks) {
    b.norm1.gamma.fill(1);
    b.norm2.gamma.fill(1);
    for (const l of [b.q, b.k, b.v, b.proj, b.fc1, b.fc2]) glorot(l);
  }
  p.norm.gamma.fill(1);
  glorot(p.head);
  return p;
}

/** A deep copy. */
export function cloneVitParams(p: VitParams): VitParams {
  return vitParamsFromArrays(vitArchitectureOf(p), vitParamArrays(p).map((a) => new Float32Array(a)));
}

/** Total number of scalars. */
export function vitParamCount(p: VitParams): number {
  return vitParamArrays(p).reduce((n, a) => n + a.length, 0);
}
