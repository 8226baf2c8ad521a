/**
 * The CNN's functional forward pass over parameter tensors, and chunked evaluation of host parameters.
 *
 * Functional (no tfjs-layers model) for the same reason as `mlpLogits`: a generator network can produce
 * the kernels, and `tf.grads` then differentiates the student's loss into the generator.
 */
import type { Dataset } from '../data';
import { checkImageFeatures, mapChunks, withTensors } from '../evaluate';
import { accuracyOfScores } from '../mlp';
import { tf } from '../tf';
import type { CnnParams, CnnPool } from './architecture';
import { cloneCnnParams } from './architecture';
import type { BnNetwork } from './bn-stats';
import { recomputeRunningStats, runningStatsAfterStep } from './bn-stats';
import type { BatchMoments } from './ops';
import { asNhwc, batchNormEval, batchNormTrain, conv2dSame, pool2x2 } from './ops';

export type CnnMode = 'train' | 'eval';

export interface CnnBatchNormTensors {
  gamma: tf.Tensor1D;
  beta: tf.Tensor1D;
  runningMean: tf.Tensor1D;
  runningVar: tf.Tensor1D;
}

/** The same parameters as tensors, for one computation. The caller disposes them. */
export interface CnnTensors {
  inputShape: [number, number, number];
  pool: CnnPool;
  convs: Array<{ kernel: tf.Tensor4D; bias: tf.Tensor1D; bn?: CnnBatchNormTensors }>;
  dense: Array<{ w: tf.Tensor2D; b: tf.Tensor1D }>;
}

export interface CnnForwardResult {
  logits: tf.Tensor2D;
  /** Per conv block, the batch moments BN normalised with: only in train mode with BN, else undefined. */
  batchMoments: Array<BatchMoments | undefined>;
}

/** Examples per forward pass when evaluating: conv activations are large (28×28×16 floats per example). */
const EVAL_CHUNK = 500;

/** Uploads parameters (copies, so later host mutations cannot reach the tensors). */
export function cnnParamsToTensors(p: CnnParams): CnnTensors {
  const vec = (a: Float32Array): tf.Tensor1D => tf.tensor1d(new Float32Array(a), 'float32');
  return {
    inputShape: [p.inputShape[0], p.inputShape[1], p.inputShape[2]],
    pool: p.pool,
    convs: p.convs.map((c) => ({
      kernel: tf.tensor4d(new Float32Array(c.kernel), [c.kernelSize, c.kernelSize, c.inChannels, c.outChannels], 'float32'),
      bias: vec(c.bias),
      ...(c.bn
        ? { bn: { gamma: vec(c.bn.gamma), beta: vec(c.bn.beta), runningMean: vec(c.bn.runningMean), runningVar: vec(c.bn.runningVar) } }
        : {}),
    })),
    dense: p.dense.map((l) => ({ w: tf.tensor2d(new Float32Array(l.w), [l.inSize, l.outSize], 'float32'), b: vec(l.b) })),
  };
}

/** Downloads parameter tensors (asynchronously: synchronous reads fail on webgpu in Node). */
export async function cnnTensorsToParams(t: CnnTensors): Promise<CnnParams> {
  const host = async (x: tf.Tensor): Promise<Float32Array> => new Float32Array(await x.data());
  const convs: CnnParams['convs'] = [];
  for (const c of t.convs) {
    const [k = 0, , cin = 0, cout = 0] = c.kernel.shape;
    convs.push({
      kernelSize: k,
      inChannels: cin,
      outChannels: cout,
      kernel: await host(c.kernel),
      bias: await host(c.bias),
      ...(c.bn
        ? {
            bn: {
              gamma: await host(c.bn.gamma),
              beta: await host(c.bn.beta),
              runningMean: await host(c.bn.runningMean),
              runningVar: await host(c.bn.runningVar),
            },
          }
        : {}),
    });
  }
  const dense: CnnParams['dense'] = [];
  for (const l of t.dense) {
    const [inSize = 0, outSize = 0] = l.w.shape;
    dense.push({ w: await host(l.w), b: await host(l.b), inSize, outSize });
  }
  return { family: 'cnn', inputShape: [t.inputShape[0], t.inputShape[1], t.inputShape[2]], pool: t.pool, convs, dense };
}

export function disposeCnnTensors(t: CnnTensors): void {
  for (const c of t.convs) {
    tf.dispose([c.kernel, c.bias]);
    if (c.bn) tf.dispose([c.bn.gamma, c.bn.beta, c.bn.runningMean, c.bn.runningVar]);
  }
  for (const l of t.dense) tf.dispose([l.w, l.b]);
}

/**
 * Logits and, in train mode with BN, the batch moments (for updating running statistics). `x` is NHWC, or
 * dataset rows (n × h·w·c) that are reshaped to it. Purely functional in the tensors of `t`.
 */
export function cnnForward(t: CnnTensors, x: tf.Tensor4D | tf.Tensor2D, mode: CnnMode): CnnForwardResult {
  let a = asNhwc(x, t.inputShape);
  const batchMoments: Array<BatchMoments | undefined> = [];
  for (const block of t.convs) {
    let z = tf.add(conv2dSame(a, block.kernel), block.bias) as tf.Tensor4D;
    let moments: BatchMoments | undefined;
    if (block.bn) {
      if (mode === 'train') {
        const normed = batchNormTrain(z, block.bn.gamma, block.bn.beta);
        z = normed.y;
        moments = normed.moments;
      } else {
        z = batchNormEval(z, block.bn.gamma, block.bn.beta, block.bn.runningMean, block.bn.runningVar);
      }
    }
    batchMoments.push(moments);
    a = pool2x2(tf.relu(z), t.pool);
  }
  const [n = 0, ph = 0, pw = 0, pc = 0] = a.shape;
  // Strictly 2-D matMuls from here on: on wasm the gradient of a 3-D × 2-D matMul is wrong (see mlp.ts).
  let hidden: tf.Tensor2D = tf.reshape(a, [n, ph * pw * pc]);
  t.dense.forEach((layer, l) => {
    const zl = tf.add(tf.matMul(hidden, layer.w), layer.b) as tf.Tensor2D;
    hidden = l + 1 < t.dense.length ? tf.relu(zl) : zl;
  });
  return { logits: hidden, batchMoments };
}

/**
 * Logits of `x` (batch × classes). 'train' normalises with the batch's own moments (and does not touch
 * the running statistics: see `updatedRunningStats`); 'eval' uses the running statistics.
 */
export function cnnLogits(t: CnnTensors, x: tf.Tensor4D | tf.Tensor2D, mode: CnnMode): tf.Tensor2D {
  return cnnForward(t, x, mode).logits;
}

/**
 * The running statistics after one training step with these batch moments (PyTorch's rule, momentum
 * 0.1, unbiased variance). One entry per conv block; undefined for blocks without BN or moments.
 */
export function updatedRunningStats(
  t: CnnTensors,
  moments: Array<BatchMoments | undefined>,
): Array<{ runningMean: tf.Tensor1D; runningVar: tf.Tensor1D } | undefined> {
  return t.convs.map((block, i) => {
    const m = moments[i];
    return block.bn && m ? runningStatsAfterStep(block.bn, m) : undefined;
  });
}

/** Eval-mode logits of already-uploaded parameters over `ds` in chunks, n × classes. */
export async function cnnLogitsOfTensors(t: CnnTensors, ds: Dataset): Promise<Float32Array> {
  checkImageFeatures(t.inputShape, ds);
  const classes = t.dense[t.dense.length - 1]?.b.shape[0] ?? 0;
  return mapChunks(ds, EVAL_CHUNK, classes, (x) => cnnLogits(t, x, 'eval'));
}

/** Eval-mode logits, n × classes, on whatever backend is active. */
export async function predictCnnLogits(params: CnnParams, ds: Dataset): Promise<Float32Array> {
  return withTensors(cnnParamsToTensors(params), disposeCnnTensors, (t) => cnnLogitsOfTensors(t, ds));
}

/** Top-1 accuracy (eval mode) on `ds`. */
export async function cnnAccuracy(params: CnnParams, ds: Dataset): Promise<number> {
  return accuracyOfScores(await predictCnnLogits(params, ds), ds.y);
}

/** Top-1 accuracy of parameters that are already tensors (the trainer's per-epoch validation). */
export async function cnnAccuracyOfTensors(t: CnnTensors, ds: Dataset): Promise<number> {
  return accuracyOfScores(await cnnLogitsOfTensors(t, ds), ds.y);
}

/** The CNN as BN re-estimation sees it: every conv block, BN or not, in order. */
const CNN_BN: BnNetwork<CnnParams, CnnTensors> = {
  clone: cloneCnnParams,
  bnLayers: (p) => p.convs,
  toTensors: cnnParamsToTensors,
  dispose: disposeCnnTensors,
  inputShape: (p) => p.inputShape,
  trainMoments: (t, x) => cnnForward(t, x, 'train').batchMoments,
};

/**
 * Running statistics re-estimated from `data` in chunks of `batchSize`, everything else unchanged
 * (PyTorch's `update_bn`; see `recomputeRunningStats`). Needed after averaging: the mean of teachers'
 * running statistics is not the statistics of the averaged net.
 */
export function recomputeBnStatistics(params: CnnParams, data: Dataset, batchSize: number): Promise<CnnParams> {
  return recomputeRunningStats(CNN_BN, params, data, batchSize);
}
