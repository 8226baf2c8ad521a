/**
 * The ResNet's functional forward pass over parameter tensors, and chunked evaluation of host parameters.
 *
 * Built from the CNN module's ops (`conv2dSame` with its forward-conv gradients — wasm has no
 * Conv2DBackpropFilter —, the closed-form `batchNormTrain`, `batchNormEval`, `pool2x2`), so the same
 * gradients run on cpu and wasm. Functional (no tfjs-layers model) so that a generator network can
 * produce the kernels and be differentiated through them (`rowsToResnetTensors`).
 */
import { InputError } from '../../util/errors';
import { BN_MOMENTUM } from '../cnn/architecture';
import type { CnnBatchNormTensors, CnnMode } from '../cnn/forward';
import type { BatchMoments } from '../cnn/ops';
import { batchNormEval, batchNormTrain, conv2dSame, pool2x2, unbiasedVariance } from '../cnn/ops';
import type { Dataset } from '../data';
import { featureSize } from '../data';
import { accuracyOfScores } from '../mlp';
import { tf } from '../tf';
import type { ResnetConv, ResnetParams } from './architecture';
import { cloneResnetParams, resnetConvs } from './architecture';

export type ResnetMode = CnnMode;

export interface ResnetConvTensors {
  kernel: tf.Tensor4D;
  bias: tf.Tensor1D;
  bn: CnnBatchNormTensors;
}

/** The same parameters as tensors, for one computation. The caller disposes them. */
export interface ResnetTensors {
  inputShape: [number, number, number];
  stem: ResnetConvTensors;
  stages: Array<Array<{ conv1: ResnetConvTensors; conv2: ResnetConvTensors }>>;
  head: { w: tf.Tensor2D; b: tf.Tensor1D };
}

export interface ResnetForwardResult {
  logits: tf.Tensor2D;
  /** Per conv in `resnetConvs` order, the batch moments its BN normalised with; empty in eval mode. */
  batchMoments: BatchMoments[];
}

/** Examples per forward pass when evaluating: activations are width·h·w floats per example and conv. */
const EVAL_CHUNK = 500;

/** The conv tensors in `resnetConvs` order (stem, then per block conv1, conv2). */
export function resnetConvTensors(t: ResnetTensors): ResnetConvTensors[] {
  return [t.stem, ...t.stages.flatMap((stage) => stage.flatMap((b) => [b.conv1, b.conv2]))];
}

function convToTensors(c: ResnetConv): ResnetConvTensors {
  const vec = (a: Float32Array): tf.Tensor1D => tf.tensor1d(new Float32Array(a), 'float32');
  return {
    kernel: tf.tensor4d(new Float32Array(c.kernel), [c.kernelSize, c.kernelSize, c.inChannels, c.outChannels], 'float32'),
    bias: vec(c.bias),
    bn: { gamma: vec(c.bn.gamma), beta: vec(c.bn.beta), runningMean: vec(c.bn.runningMean), runningVar: vec(c.bn.runningVar) },
  };
}

/** Uploads parameters (copies, so later host mutations cannot reach the tensors). */
export function resnetParamsToTensors(p: ResnetParams): ResnetTensors {
  return {
    inputShape: [p.inputShape[0], p.inputShape[1], p.inputShape[2]],
    stem: convToTensors(p.stem),
    stages: p.stages.map((stage) => stage.map((b) => ({ conv1: convToTensors(b.conv1), conv2: convToTensors(b.conv2) }))),
    head: { w: tf.tensor2d(new Float32Array(p.head.w), [p.head.inSize, p.head.outSize], 'float32'), b: tf.tensor1d(new Float32Array(p.head.b), 'float32') },
  };
}

async function host(x: tf.Tensor): Promise<Float32Array> {
  return new Float32Array(await x.data());
}

async function convToHost(c: ResnetConvTensors): Promise<ResnetConv> {
  const [k = 0, , cin = 0, cout = 0] = c.kernel.shape;
  return {
    kernelSize: k,
    inChannels: cin,
    outChannels: cout,
    kernel: await host(c.kernel),
    bias: await host(c.bias),
    bn: { gamma: await host(c.bn.gamma), beta: await host(c.bn.beta), runningMean: await host(c.bn.runningMean), runningVar: await host(c.bn.runningVar) },
  };
}

/** Downloads parameter tensors (asynchronously: synchronous reads fail on webgpu in Node). */
export async function resnetTensorsToParams(t: ResnetTensors): Promise<ResnetParams> {
  const stem = await convToHost(t.stem);
  const stages: ResnetParams['stages'] = [];
  for (const stage of t.stages) {
    const blocks: ResnetParams['stages'][number] = [];
    for (const b of stage) blocks.push({ conv1: await convToHost(b.conv1), conv2: await convToHost(b.conv2) });
    stages.push(blocks);
  }
  const [inSize = 0, outSize = 0] = t.head.w.shape;
  return {
    family: 'resnet',
    inputShape: [t.inputShape[0], t.inputShape[1], t.inputShape[2]],
    stem,
    stages,
    head: { w: await host(t.head.w), b: await host(t.head.b), inSize, outSize },
  };
}

export function disposeResnetTensors(t: ResnetTensors): void {
  for (const c of resnetConvTensors(t)) tf.dispose([c.kernel, c.bias, c.bn.gamma, c.bn.beta, c.bn.runningMean, c.bn.runningVar]);
  tf.dispose([t.head.w, t.head.b]);
}

/**
 * Logits and, in train mode, the batch moments of every BN (for updating running statistics). `x` is
 * NHWC, or dataset rows (n × h·w·c) that are reshaped to it. Purely functional in the tensors of `t`.
 */
export function resnetForward(t: ResnetTensors, x: tf.Tensor4D | tf.Tensor2D, mode: ResnetMode): ResnetForwardResult {
  const [h, w, c] = t.inputShape;
  let a: tf.Tensor4D = x.rank === 4 ? (x as tf.Tensor4D) : tf.reshape(x, [x.shape[0] ?? 0, h, w, c]);
  if (a.shape[1] !== h || a.shape[2] !== w || a.shape[3] !== c) {
    throw new InputError(`input is ${a.shape.slice(1).join('×')} per example but the model takes ${h}×${w}×${c}`);
  }
  const batchMoments: BatchMoments[] = [];
  const convBn = (input: tf.Tensor4D, conv: ResnetConvTensors): tf.Tensor4D => {
    const z = tf.add(conv2dSame(input, conv.kernel), conv.bias) as tf.Tensor4D;
    if (mode === 'eval') return batchNormEval(z, conv.bn.gamma, conv.bn.beta, conv.bn.runningMean, conv.bn.runningVar);
    const normed = batchNormTrain(z, conv.bn.gamma, conv.bn.beta);
    batchMoments.push(normed.moments);
    return normed.y;
  };
  a = tf.relu(convBn(a, t.stem));
  t.stages.forEach((stage, s) => {
    if (s > 0) a = pool2x2(a, 'max');
    for (const block of stage) {
      const inner = tf.relu(convBn(a, block.conv1));
      a = tf.relu(tf.add(a, convBn(inner, block.conv2))) as tf.Tensor4D;
    }
  });
  // Global average pool: the head sees one value per stream channel, whatever the resolution.
  const pooled = tf.mean(a, [1, 2]) as tf.Tensor2D;
  // A strictly 2-D matMul: on wasm the gradient of a 3-D × 2-D matMul is wrong (see mlp.ts).
  const logits = tf.add(tf.matMul(pooled, t.head.w), t.head.b) as tf.Tensor2D;
  return { logits, batchMoments };
}

/**
 * Logits of `x` (batch × classes). 'train' normalises with the batch's own moments (and does not touch
 * the running statistics: see `updatedResnetRunningStats`); 'eval' uses the running statistics.
 */
export function resnetLogits(t: ResnetTensors, x: tf.Tensor4D | tf.Tensor2D, mode: ResnetMode): tf.Tensor2D {
  return resnetForward(t, x, mode).logits;
}

/**
 * The running statistics after one training step with these batch moments (PyTorch's rule, momentum
 * 0.1, unbiased variance), one entry per conv in `resnetConvs` order.
 */
export function updatedResnetRunningStats(t: ResnetTensors, moments: BatchMoments[]): Array<{ runningMean: tf.Tensor1D; runningVar: tf.Tensor1D }> {
  return resnetConvTensors(t).map((conv, i) => {
    const m = moments[i];
    if (!m) throw new Error(`updatedResnetRunningStats: moments of conv ${i} missing (train mode only)`);
    return {
      runningMean: tf.add(tf.mul(conv.bn.runningMean, 1 - BN_MOMENTUM), tf.mul(m.mean, BN_MOMENTUM)) as tf.Tensor1D,
      runningVar: tf.add(tf.mul(conv.bn.runningVar, 1 - BN_MOMENTUM), tf.mul(unbiasedVariance(m), BN_MOMENTUM)) as tf.Tensor1D,
    };
  });
}

function checkFeatures(t: ResnetTensors, ds: Dataset): void {
  const [h, w, c] = t.inputShape;
  if (ds.n > 0 && featureSize(ds) !== h * w * c) {
    throw new InputError(`data has ${featureSize(ds)} features per example but the model takes ${h}×${w}×${c} = ${h * w * c}`);
  }
}

/** Eval-mode logits of already-uploaded parameters over `ds` in chunks, n × classes. */
export async function resnetLogitsOfTensors(t: ResnetTensors, ds: Dataset): Promise<Float32Array> {
  checkFeatures(t, ds);
  const d = featureSize(ds);
  const classes = t.head.b.shape[0] ?? 0;
  const out = new Float32Array(ds.n * classes);
  for (let start = 0; start < ds.n; start += EVAL_CHUNK) {
    const rows = Math.min(EVAL_CHUNK, ds.n - start);
    const result = tf.tidy(() => resnetLogits(t, tf.tensor2d(ds.x.subarray(start * d, (start + rows) * d), [rows, d]), 'eval'));
    try {
      out.set(await result.data(), start * classes);
    } finally {
      result.dispose();
    }
  }
  return out;
}

/** Eval-mode logits, n × classes, on whatever backend is active. */
export async function predictResnetLogits(params: ResnetParams, ds: Dataset): Promise<Float32Array> {
  const t = resnetParamsToTensors(params);
  try {
    return await resnetLogitsOfTensors(t, ds);
  } finally {
    disposeResnetTensors(t);
  }
}

/** Top-1 accuracy (eval mode) on `ds`. */
export async function resnetAccuracy(params: ResnetParams, ds: Dataset): Promise<number> {
  return accuracyOfScores(await predictResnetLogits(params, ds), ds.y);
}

/** Top-1 accuracy of parameters that are already tensors (the trainer's per-epoch validation). */
export async function resnetAccuracyOfTensors(t: ResnetTensors, ds: Dataset): Promise<number> {
  return accuracyOfScores(await resnetLogitsOfTensors(t, ds), ds.y);
}

/**
 * Running statistics re-estimated from `data`, everything else unchanged: train-mode forward passes over
 * consecutive chunks of `batchSize` examples (no gradient steps), each BN's running mean and unbiased
 * variance set to the chunk-size-weighted average of the chunks' batch moments (PyTorch's `update_bn`,
 * as `recomputeBnStatistics` does for CNNs). Needed after averaging: the mean of teachers' running
 * statistics is not the statistics of the averaged net.
 */
export async function recomputeResnetBnStatistics(params: ResnetParams, data: Dataset, batchSize: number): Promise<ResnetParams> {
  if (!Number.isInteger(batchSize) || batchSize < 2) throw new InputError(`batchSize must be an integer ≥ 2 (batch statistics), got ${batchSize}`);
  if (data.n < 1) throw new InputError('recomputing BN statistics needs data');
  const out = cloneResnetParams(params);
  const targets = resnetConvs(out);
  const t = resnetParamsToTensors(params);
  try {
    checkFeatures(t, data);
    const d = featureSize(data);
    const sums = targets.map((c) => ({ mean: new Float64Array(c.outChannels), var: new Float64Array(c.outChannels) }));
    for (let start = 0; start < data.n; start += batchSize) {
      const rows = Math.min(batchSize, data.n - start);
      const stats = tf.tidy(() => {
        const { batchMoments } = resnetForward(t, tf.tensor2d(data.x.subarray(start * d, (start + rows) * d), [rows, d]), 'train');
        return batchMoments.map((m) => [m.mean, unbiasedVariance(m)] as const);
      });
      try {
        for (const [b, [mean, variance]] of stats.entries()) {
          const sum = sums[b];
          if (!sum) continue;
          const mv = await mean.data();
          const vv = await variance.data();
          for (let ch = 0; ch < sum.mean.length; ch++) {
            sum.mean[ch] = (sum.mean[ch] ?? 0) + rows * (mv[ch] ?? 0);
            sum.var[ch] = (sum.var[ch] ?? 0) + rows * (vv[ch] ?? 0);
          }
        }
      } finally {
        tf.dispose(stats.flat());
      }
    }
    targets.forEach((c, b) => {
      const sum = sums[b];
      if (!sum) return;
      c.bn.runningMean = Float32Array.from(sum.mean, (s) => s / data.n);
      c.bn.runningVar = Float32Array.from(sum.var, (s) => s / data.n);
    });
    return out;
  } finally {
    disposeResnetTensors(t);
  }
}
