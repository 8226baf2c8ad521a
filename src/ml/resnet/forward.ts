/**
 * The ResNet's functional forward pass over parameter tensors, and chunked evaluation of host parameters.
 *
 * Built from the CNN module's ops (`conv2dSame` with its forward-conv gradients — wasm has no
 * Conv2DBackpropFilter —, the closed-form `batchNormTrain`, `batchNormEval`, `pool2x2`), so the same
 * gradients run on cpu and wasm. Functional (no tfjs-layers model) so that a generator network can
 * produce the kernels and be differentiated through them (`rowsToResnetTensors`).
 */
import type { BnNetwork } from '../cnn/bn-stats';
import { recomputeRunningStats, runningStatsAfterStep } from '../cnn/bn-stats';
import type { CnnBatchNormTensors, CnnMode } from '../cnn/forward';
import type { BatchMoments } from '../cnn/ops';
import { asNhwc, batchNormEval, batchNormTrain, conv2dSame, pool2x2 } from '../cnn/ops';
import type { Dataset } from '../data';
import { checkImageFeatures, mapChunks, withTensors } from '../evaluate';
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
  let a = asNhwc(x, t.inputShape);
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
    return runningStatsAfterStep(conv.bn, m);
  });
}

/** Eval-mode logits of already-uploaded parameters over `ds` in chunks, n × classes. */
export async function resnetLogitsOfTensors(t: ResnetTensors, ds: Dataset): Promise<Float32Array> {
  checkImageFeatures(t.inputShape, ds);
  return mapChunks(ds, EVAL_CHUNK, t.head.b.shape[0] ?? 0, (x) => resnetLogits(t, x, 'eval'));
}

/** Eval-mode logits, n × classes, on whatever backend is active. */
export async function predictResnetLogits(params: ResnetParams, ds: Dataset): Promise<Float32Array> {
  return withTensors(resnetParamsToTensors(params), disposeResnetTensors, (t) => resnetLogitsOfTensors(t, ds));
}

/** Top-1 accuracy (eval mode) on `ds`. */
export async function resnetAccuracy(params: ResnetParams, ds: Dataset): Promise<number> {
  return accuracyOfScores(await predictResnetLogits(params, ds), ds.y);
}

/** Top-1 accuracy of parameters that are already tensors (the trainer's per-epoch validation). */
export async function resnetAccuracyOfTensors(t: ResnetTensors, ds: Dataset): Promise<number> {
  return accuracyOfScores(await resnetLogitsOfTensors(t, ds), ds.y);
}

/** The ResNet as BN re-estimation sees it: every conv (all have BN) in `resnetConvs` order. */
const RESNET_BN: BnNetwork<ResnetParams, ResnetTensors> = {
  clone: cloneResnetParams,
  bnLayers: resnetConvs,
  toTensors: resnetParamsToTensors,
  dispose: disposeResnetTensors,
  inputShape: (p) => p.inputShape,
  trainMoments: (t, x) => resnetForward(t, x, 'train').batchMoments,
};

/**
 * Running statistics re-estimated from `data` in chunks of `batchSize`, everything else unchanged
 * (PyTorch's `update_bn`, as `recomputeBnStatistics` does for CNNs; see `recomputeRunningStats`). Needed
 * after averaging: the mean of teachers' running statistics is not the statistics of the averaged net.
 */
export function recomputeResnetBnStatistics(params: ResnetParams, data: Dataset, batchSize: number): Promise<ResnetParams> {
  return recomputeRunningStats(RESNET_BN, params, data, batchSize);
}
