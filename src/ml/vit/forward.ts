/**
 * The ViT's functional forward pass over parameter tensors, and chunked evaluation of host parameters.
 *
 * Functional (no tfjs-layers model) for the same reason as `mlpLogits`: a generator network can produce
 * the weights, and `tf.grads` then differentiates the student's loss into the generator.
 *
 * Every linear layer runs on the tokens as one 2-D matrix ((n · tokens) × features): on wasm the gradient
 * of a 3-D × 2-D matMul is wrong (see mlp.ts). Attention's two products are 3-D × 3-D with equal batch
 * sizes (no broadcasting), whose gradients are right on every backend (checked against cpu in the tests).
 */
import { InputError } from '../../util/errors';
import type { Dataset } from '../data';
import { checkImageFeatures, mapChunks, withTensors } from '../evaluate';
import { accuracyOfScores } from '../mlp';
import { tf } from '../tf';
import type { VitArchitecture, VitParams } from './architecture';
import { vitArchitectureOf, vitParamArrays, vitParamsFromArrays, vitParamShapes, vitTokens } from './architecture';
import { gelu, layerNorm, patchify } from './ops';

export interface VitLinearTensors {
  w: tf.Tensor2D;
  b: tf.Tensor1D;
}

export interface VitNormTensors {
  gamma: tf.Tensor1D;
  beta: tf.Tensor1D;
}

export interface VitBlockTensors {
  norm1: VitNormTensors;
  q: VitLinearTensors;
  k: VitLinearTensors;
  v: VitLinearTensors;
  proj: VitLinearTensors;
  norm2: VitNormTensors;
  fc1: VitLinearTensors;
  fc2: VitLinearTensors;
}

/** The same parameters as tensors, for one computation. The caller disposes them. */
export interface VitTensors {
  inputShape: [number, number, number];
  patchSize: number;
  heads: number;
  patchEmbed: VitLinearTensors;
  /** tokens × dim. */
  posEmbed: tf.Tensor2D;
  blocks: VitBlockTensors[];
  norm: VitNormTensors;
  head: VitLinearTensors;
}

/** Examples per forward pass when evaluating (attention scores are heads × tokens² floats per example). */
const EVAL_CHUNK = 500;

/**
 * Tensors of `arch` assembled from `take`'s layers, called in `vitParamShapes` order (patch embedding,
 * position embeddings, per block norm1, q, k, v, proj, norm2, fc1, fc2, then the final norm and the head).
 */
export function assembleVitTensors(
  arch: VitArchitecture,
  take: { linear(): VitLinearTensors; norm(): VitNormTensors; pos(): tf.Tensor2D },
): VitTensors {
  const patchEmbed = take.linear();
  const posEmbed = take.pos();
  const blocks: VitBlockTensors[] = [];
  for (let b = 0; b < arch.depth; b++) {
    const norm1 = take.norm();
    const q = take.linear();
    const k = take.linear();
    const v = take.linear();
    const proj = take.linear();
    blocks.push({ norm1, q, k, v, proj, norm2: take.norm(), fc1: take.linear(), fc2: take.linear() });
  }
  const finalNorm = take.norm();
  const head = take.linear();
  return { inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]], patchSize: arch.patchSize, heads: arch.heads, patchEmbed, posEmbed, blocks, norm: finalNorm, head };
}

/** Tensors of `arch` from a list in `vitParamShapes` order (taken as they are, not copied). */
export function vitTensorsFromList(arch: VitArchitecture, list: tf.Tensor[]): VitTensors {
  let i = 0;
  const next = <T extends tf.Tensor>(): T => {
    const t = list[i++];
    if (!t) throw new Error(`ViT tensors: tensor ${i - 1} missing`);
    return t as T;
  };
  const t = assembleVitTensors(arch, { linear: () => ({ w: next(), b: next() }), norm: () => ({ gamma: next(), beta: next() }), pos: () => next<tf.Tensor2D>() });
  if (i !== list.length) throw new Error(`ViT tensors: ${list.length} tensors for ${i} slots`);
  return t;
}

/** The tensors of `t` in `vitParamShapes` order. */
export function vitTensorList(t: VitTensors): tf.Tensor[] {
  const out: tf.Tensor[] = [t.patchEmbed.w, t.patchEmbed.b, t.posEmbed];
  for (const b of t.blocks) {
    out.push(b.norm1.gamma, b.norm1.beta);
    for (const l of [b.q, b.k, b.v, b.proj]) out.push(l.w, l.b);
    out.push(b.norm2.gamma, b.norm2.beta, b.fc1.w, b.fc1.b, b.fc2.w, b.fc2.b);
  }
  out.push(t.norm.gamma, t.norm.beta, t.head.w, t.head.b);
  return out;
}

/** The architecture of parameter tensors (read off their shapes). */
export function vitTensorsArchitecture(t: VitTensors): VitArchitecture {
  const [, dim = 0] = t.patchEmbed.w.shape;
  const hidden = t.blocks[0]?.fc1.w.shape[1] ?? 0;
  return {
    family: 'vit',
    inputShape: [t.inputShape[0], t.inputShape[1], t.inputShape[2]],
    patchSize: t.patchSize,
    dim,
    heads: t.heads,
    depth: t.blocks.length,
    mlpRatio: hidden / dim,
    outputSize: t.head.w.shape[1] ?? 0,
  };
}

/** Uploads parameters (copies, so later host mutations cannot reach the tensors). */
export function vitParamsToTensors(p: VitParams): VitTensors {
  const arch = vitArchitectureOf(p);
  const shapes = vitParamShapes(arch);
  return vitTensorsFromList(
    arch,
    vitParamArrays(p).map((a, i) => tf.tensor(new Float32Array(a), shapes[i], 'float32')),
  );
}

/** Downloads parameter tensors (asynchronously: synchronous reads fail on webgpu in Node). */
export async function vitTensorsToParams(t: VitTensors): Promise<VitParams> {
  const arrays: Float32Array[] = [];
  for (const x of vitTensorList(t)) arrays.push(new Float32Array(await x.data()));
  return vitParamsFromArrays(vitTensorsArchitecture(t), arrays);
}

export function disposeVitTensors(t: VitTensors): void {
  tf.dispose(vitTensorList(t));
}

function linear(x: tf.Tensor2D, l: VitLinearTensors): tf.Tensor2D {
  return tf.add(tf.matMul(x, l.w), l.b) as tf.Tensor2D;
}

/**
 * Multi-head self-attention of (n · tokens) × dim rows: q, k, v projections as 2-D matMuls, then per
 * (example, head) softmax(q·kᵀ/√dh)·v as batched 3-D matMuls, heads concatenated in head order into the
 * output projection. k is transposed into [n·heads, dh, tokens] directly, so neither product needs a
 * transposed-operand flag (slow on wasm, see `matmul.ts`).
 */
function attention(x: tf.Tensor2D, b: VitBlockTensors, n: number, tokens: number, heads: number): tf.Tensor2D {
  const dim = x.shape[1] ?? 0;
  const dh = dim / heads;
  const split = (y: tf.Tensor2D): tf.Tensor4D => tf.reshape(y, [n, tokens, heads, dh]);
  const q = tf.reshape(tf.transpose(split(tf.mul(linear(x, b.q), 1 / Math.sqrt(dh)) as tf.Tensor2D), [0, 2, 1, 3]), [n * heads, tokens, dh]);
  const kT = tf.reshape(tf.transpose(split(linear(x, b.k)), [0, 2, 3, 1]), [n * heads, dh, tokens]);
  const v = tf.reshape(tf.transpose(split(linear(x, b.v)), [0, 2, 1, 3]), [n * heads, tokens, dh]);
  const weights = tf.softmax(tf.matMul(q, kT)); // [n·heads, tokens, tokens], rows sum to 1
  const mixed = tf.reshape(tf.matMul(weights, v), [n, heads, tokens, dh]);
  return linear(tf.reshape(tf.transpose(mixed, [0, 2, 1, 3]), [n * tokens, dim]), b.proj);
}

/**
 * Logits of `x` (batch × classes). `x` is NHWC, or dataset rows (n × h·w·c) that are reshaped to it.
 * Purely functional in the tensors of `t`.
 */
export function vitLogits(t: VitTensors, x: tf.Tensor4D | tf.Tensor2D): tf.Tensor2D {
  const [h, w, c] = t.inputShape;
  const n = x.shape[0] ?? 0;
  const perExample = x.shape.slice(1);
  const fits = x.rank === 4 ? perExample[0] === h && perExample[1] === w && perExample[2] === c : perExample[0] === h * w * c;
  if (!fits) throw new InputError(`input is ${perExample.join('×')} per example but the model takes ${h}×${w}×${c}`);
  const tokens = vitTokens({ inputShape: t.inputShape, patchSize: t.patchSize });
  const dim = t.patchEmbed.w.shape[1] ?? 0;
  const embedded = linear(patchify(x, t.inputShape, t.patchSize), t.patchEmbed);
  // Position embeddings broadcast over the batch ([n, tokens, dim] + [tokens, dim]; the Add gradient sums
  // the batch axis away), then back to one 2-D matrix of tokens.
  let z: tf.Tensor2D = tf.reshape(tf.add(tf.reshape(embedded, [n, tokens, dim]), t.posEmbed), [n * tokens, dim]);
  for (const b of t.blocks) {
    z = tf.add(z, attention(layerNorm(z, b.norm1.gamma, b.norm1.beta), b, n, tokens, t.heads));
    z = tf.add(z, linear(gelu(linear(layerNorm(z, b.norm2.gamma, b.norm2.beta), b.fc1)), b.fc2));
  }
  const pooled = tf.mean(tf.reshape(layerNorm(z, t.norm.gamma, t.norm.beta), [n, tokens, dim]), 1) as tf.Tensor2D;
  return linear(pooled, t.head);
}

/** Logits of already-uploaded parameters over `ds` in chunks, n × classes. */
export async function vitLogitsOfTensors(t: VitTensors, ds: Dataset): Promise<Float32Array> {
  checkImageFeatures(t.inputShape, ds);
  return mapChunks(ds, EVAL_CHUNK, t.head.b.shape[0] ?? 0, (x) => vitLogits(t, x));
}

/** Logits, n × classes, on whatever backend is active. */
export async function predictVitLogits(params: VitParams, ds: Dataset): Promise<Float32Array> {
  return withTensors(vitParamsToTensors(params), disposeVitTensors, (t) => vitLogitsOfTensors(t, ds));
}

/** Top-1 accuracy on `ds`. */
export async function vitAccuracy(params: VitParams, ds: Dataset): Promise<number> {
  return accuracyOfScores(await predictVitLogits(params, ds), ds.y);
}

/** Top-1 accuracy of parameters that are already tensors (the trainer's per-epoch validation). */
export async function vitAccuracyOfTensors(t: VitTensors, ds: Dataset): Promise<number> {
  return accuracyOfScores(await vitLogitsOfTensors(t, ds), ds.y);
}
