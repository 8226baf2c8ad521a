/**
 * Running batch-norm statistics, for every conv family (CNN, ResNet): the per-step momentum update and
 * the re-estimation from data after averaging. The families differ only in where their BN layers sit, so
 * they hand over their BN layers as a flat list, in the order their forward pass reports batch moments.
 */
import { InputError } from '../../util/errors';
import type { Dataset } from '../data';
import { featureSize } from '../data';
import { checkImageFeatures } from '../evaluate';
import { tf } from '../tf';
import { BN_MOMENTUM } from './architecture';
import type { BatchMoments } from './ops';
import { unbiasedVariance } from './ops';

export interface RunningStatTensors {
  runningMean: tf.Tensor1D;
  runningVar: tf.Tensor1D;
}

/** The running statistics after one training step with these batch moments (PyTorch's rule, momentum 0.1, unbiased variance). */
export function runningStatsAfterStep(bn: RunningStatTensors, m: BatchMoments): RunningStatTensors {
  return {
    runningMean: tf.add(tf.mul(bn.runningMean, 1 - BN_MOMENTUM), tf.mul(m.mean, BN_MOMENTUM)) as tf.Tensor1D,
    runningVar: tf.add(tf.mul(bn.runningVar, 1 - BN_MOMENTUM), tf.mul(unbiasedVariance(m), BN_MOMENTUM)) as tf.Tensor1D,
  };
}

/** How `recomputeRunningStats` sees a conv family. */
export interface BnNetwork<P, T> {
  clone(p: P): P;
  /** The conv layers of `p`, in the order `trainMoments` reports them; `bn` absent: no BN there. */
  bnLayers(p: P): Array<{ outChannels: number; bn?: { runningMean: Float32Array; runningVar: Float32Array } }>;
  toTensors(p: P): T;
  dispose(t: T): void;
  inputShape(p: P): readonly [number, number, number];
  /** A train-mode forward pass's batch moments, one entry per layer of `bnLayers` (undefined: no BN). */
  trainMoments(t: T, x: tf.Tensor2D): Array<BatchMoments | undefined>;
}

/**
 * `params` with every running statistic re-estimated from `data`, everything else unchanged: train-mode
 * forward passes over consecutive chunks of `batchSize` examples (no gradient steps), and each BN layer's
 * running mean and (unbiased) variance set to the average of the chunks' batch moments, weighted by the
 * chunk's size — PyTorch's `update_bn` (momentum None), except that a short last chunk counts for what it
 * holds. Needed after averaging: the mean of teachers' running statistics is not the statistics of the
 * averaged net.
 */
export async function recomputeRunningStats<P, T>(net: BnNetwork<P, T>, params: P, data: Dataset, batchSize: number): Promise<P> {
  if (!Number.isInteger(batchSize) || batchSize < 2) throw new InputError(`batchSize must be an integer ≥ 2 (batch statistics), got ${batchSize}`);
  if (data.n < 1) throw new InputError('recomputing BN statistics needs data');
  const out = net.clone(params);
  const targets = net.bnLayers(out);
  if (!targets.some((c) => c.bn)) return out;
  const t = net.toTensors(params);
  try {
    checkImageFeatures(net.inputShape(params), data);
    const d = featureSize(data);
    // float64 sums, so that many chunks do not lose the small ones' share.
    const sums = targets.map((c) => ({ mean: new Float64Array(c.outChannels), var: new Float64Array(c.outChannels) }));
    for (let start = 0; start < data.n; start += batchSize) {
      const rows = Math.min(batchSize, data.n - start);
      const stats = tf.tidy(() =>
        net.trainMoments(t, tf.tensor2d(data.x.subarray(start * d, (start + rows) * d), [rows, d])).map((m) => (m ? [m.mean, unbiasedVariance(m)] : [])),
      );
      try {
        for (const [b, pair] of stats.entries()) {
          const [mean, variance] = pair;
          const sum = sums[b];
          if (!mean || !variance || !sum) continue;
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
      if (!c.bn || !sum) return;
      c.bn.runningMean = Float32Array.from(sum.mean, (s) => s / data.n);
      c.bn.runningVar = Float32Array.from(sum.var, (s) => s / data.n);
    });
    return out;
  } finally {
    net.dispose(t);
  }
}
