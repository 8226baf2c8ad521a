/**
 * The CNN's differentiable building blocks, with gradients that every backend we use can run.
 *
 * tfjs-core registers no gradients (see `gradients.ts`), and the wasm backend has no
 * Conv2DBackpropFilter kernel, so `tf.conv2d`'s stock kernel gradient could not run there anyway. The
 * conv here keeps the fast Conv2D kernel (XNNPACK on wasm) for the forward pass and gives it a local
 * gradient (`tf.customGrad`, so nothing is registered process-wide) built from forward convolutions only:
 *
 * - input gradient: `conv2d(dy, kernel rotated 180° with cin/cout swapped, 'same')` — the full
 *   correlation that Conv2DBackpropInput computes, but 9× faster on wasm than that kernel
 *   (14×14×16→32, batch 64: 5.0 ms vs 47 ms);
 * - kernel gradient: the correlation of the padded input with dy, run as one `conv2d` whose batch is the
 *   input channel and whose "channels" are the examples (the input is [cin, H+2p, W+2p, n], the filter dy
 *   as [h, w, n, cout], the output [cin, k, k, cout]).
 *
 * Measured on wasm (tfjs 4.22, 1 thread, a loaded 2-core machine), 28×28×1 → 16 → 32 channels, kernel 3,
 * max pool, batch 64, forward + backward of every parameter, median of 9 runs interleaved:
 *   im2col (zero padding, 9 strided slices, concat, one [n·h·w, 9·cin] × [9·cin, cout] matMul,
 *     differentiated through the registered Slice/Concat/MatMul gradients)   227 ms (forward alone 94 ms);
 *   conv2d, with Conv2DBackpropInput for dx and an im2col matMul for dW        211 ms (forward 11 ms);
 *   conv2d, with the two forward-conv gradients above (kept)                    77 ms (forward 10 ms).
 * With BN on every block: 284, 320 and 150 ms. `test/ml-cnn.test.ts` checks this conv's forward and both
 * gradients against the im2col formulation under autodiff, on cpu and wasm.
 *
 * Pooling likewise runs the MaxPool/AvgPool kernels forward and their MaxPoolGrad/AvgPoolGrad kernels
 * (present on cpu and wasm) backward.
 */
import { InputError } from '../../util/errors';
import { tf } from '../tf';
import { BN_EPSILON } from './architecture';
import type { CnnPool } from './architecture';

type Tensor = tf.Tensor;
/** tfjs-core exports the type only from its engine module, so it is taken from `customGrad` itself. */
type CustomGradientFunc = Parameters<typeof tf.customGrad>[0];

/**
 * Zero padding of (k − 1) / 2 on each side of H and W: 'same' for stride 1 and an odd kernel (tfjs pads
 * odd totals at the end, but with an odd kernel the total k − 1 is even, so both sides get the same).
 */
function padSame(x: Tensor, k: number): Tensor {
  const p = (k - 1) / 2;
  return p > 0 ? tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]) : x;
}

/** dL/dkernel = Σ_{n,i,j} xpad[n, i+a, j+b, ci] · dy[n, i, j, co], as one forward conv (see above). */
function conv2dKernelGradient(x: Tensor, dy: Tensor, k: number): Tensor {
  const channelsAsBatch = tf.transpose(padSame(x, k), [3, 1, 2, 0]); // [cin, H+2p, W+2p, n]
  const dyAsFilter = tf.transpose(dy, [1, 2, 0, 3]); // [h, w, n, cout]
  const perInputChannel = tf.conv2d(channelsAsBatch as tf.Tensor4D, dyAsFilter as tf.Tensor4D, 1, 'valid'); // [cin, k, k, cout]
  return tf.transpose(perInputChannel, [1, 2, 0, 3]);
}

/** dL/dx = dy correlated with the kernel rotated by 180° and its cin/cout swapped ('same' again). */
function conv2dInputGradient(dy: Tensor, kernel: Tensor): Tensor {
  const rotated = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]);
  return tf.conv2d(dy as tf.Tensor4D, rotated as tf.Tensor4D, 1, 'same');
}

const conv2dSameWithGrad = tf.customGrad(((x: Tensor, kernel: Tensor, save: tf.GradSaveFunc) => {
  save([x, kernel]);
  return {
    value: tf.conv2d(x as tf.Tensor4D, kernel as tf.Tensor4D, 1, 'same'),
    gradFunc: (dy: Tensor, saved: Tensor[]) => {
      const [xs, ks] = saved;
      if (!xs || !ks) throw new Error('conv2dSame: saved tensors missing');
      return [conv2dInputGradient(dy, ks), conv2dKernelGradient(xs, dy, ks.shape[0] ?? 1)];
    },
  };
}) as unknown as CustomGradientFunc);

/**
 * Stride-1 'same' convolution of NHWC `x` with a `[k, k, cin, cout]` kernel (k odd), differentiable with
 * respect to both on cpu and wasm.
 */
/** `x` as NHWC images of `inputShape`: NHWC as given, or dataset rows (n × h·w·c) reshaped; InputError on another shape. */
export function asNhwc(x: tf.Tensor4D | tf.Tensor2D, inputShape: [number, number, number]): tf.Tensor4D {
  const [h, w, c] = inputShape;
  const a: tf.Tensor4D = x.rank === 4 ? (x as tf.Tensor4D) : tf.reshape(x, [x.shape[0] ?? 0, h, w, c]);
  if (a.shape[1] !== h || a.shape[2] !== w || a.shape[3] !== c) {
    throw new InputError(`input is ${a.shape.slice(1).join('×')} per example but the model takes ${h}×${w}×${c}`);
  }
  return a;
}

export function conv2dSame(x: tf.Tensor4D, kernel: tf.Tensor4D): tf.Tensor4D {
  return conv2dSameWithGrad(x, kernel) as tf.Tensor4D;
}

const POOL = { filterSize: [2, 2] as [number, number], strides: [2, 2] as [number, number], pad: 'valid' as const };

const maxPoolWithGrad = tf.customGrad(((x: Tensor, save: tf.GradSaveFunc) => {
  const y = tf.maxPool(x as tf.Tensor4D, POOL.filterSize, POOL.strides, POOL.pad);
  save([x, y]);
  return {
    value: y,
    gradFunc: (dy: Tensor, saved: Tensor[]) => {
      const [input, output] = saved;
      if (!input || !output) throw new Error('maxPool2x2: saved tensors missing');
      return [tf.engine().runKernel(tf.MaxPoolGrad, { dy, input, output }, { ...POOL }) as Tensor];
    },
  };
}) as unknown as CustomGradientFunc);

const avgPoolWithGrad = tf.customGrad(((x: Tensor, save: tf.GradSaveFunc) => {
  save([x]);
  return {
    value: tf.avgPool(x as tf.Tensor4D, POOL.filterSize, POOL.strides, POOL.pad),
    gradFunc: (dy: Tensor, saved: Tensor[]) => {
      const [input] = saved;
      if (!input) throw new Error('avgPool2x2: saved tensor missing');
      return [tf.engine().runKernel(tf.AvgPoolGrad, { dy, input }, { ...POOL }) as Tensor];
    },
  };
}) as unknown as CustomGradientFunc);

/** 2×2 stride-2 'valid' pooling (an odd row or column at the end is dropped), differentiable. */
export function pool2x2(x: tf.Tensor4D, pool: CnnPool): tf.Tensor4D {
  return (pool === 'max' ? maxPoolWithGrad(x) : avgPoolWithGrad(x)) as tf.Tensor4D;
}

export interface BatchMoments {
  /** Per-channel mean over batch and positions. */
  mean: tf.Tensor1D;
  /** Per-channel biased (population) variance: what normalises the batch. */
  variance: tf.Tensor1D;
  /** Values per channel the moments were taken over (n·h·w), for the unbiased running estimate. */
  count: number;
}

/**
 * Training-mode batch norm: normalise with the batch's own moments, which are returned too.
 *
 * One op with a closed-form gradient (Ioffe & Szegedy), not a composition of mean/sub/rsqrt/mul whose
 * taped gradients broadcast and reduce full-size tensors a dozen times (wasm, 28×28×1 → 16 → 32 with BN,
 * batch 64, forward + backward, median of 10 interleaved: 137 ms with this op, 202 ms composed). With x̂ = (z − μ)·r, r = 1/√(σ² + ε), N = n·h·w:
 *   dβ = Σ dy,  dγ = Σ dy·x̂,  dz = γ·r·(dy − dβ/N − x̂·dγ/N).
 * The moments are computed inside the op (where tfjs records no tape: they need no gradient, running
 * statistics are not trained) and handed out through the closure.
 */
export function batchNormTrain(z: tf.Tensor4D, gamma: tf.Tensor1D, beta: tf.Tensor1D): { y: tf.Tensor4D; moments: BatchMoments } {
  const [n = 0, h = 0, w = 0] = z.shape;
  const count = n * h * w;
  let kept: [tf.Tensor1D, tf.Tensor1D] | undefined;
  const op = tf.customGrad(((x: Tensor, g: Tensor, b: Tensor, save: tf.GradSaveFunc) => {
    const mean = tf.mean(x, [0, 1, 2]) as tf.Tensor1D;
    const centered = tf.sub(x, mean);
    const variance = tf.mean(tf.square(centered), [0, 1, 2]) as tf.Tensor1D;
    const rstd = tf.rsqrt(tf.add(variance, BN_EPSILON));
    const xhat = tf.mul(centered, rstd);
    // The op runs inside a tidy of tfjs's; keep() lets the moments out (re-owned by the caller below).
    kept = [tf.keep(mean), tf.keep(variance)];
    save([xhat, rstd, g]);
    return {
      value: tf.add(tf.mul(xhat, g), b),
      gradFunc: (dy: Tensor, saved: Tensor[]) => {
        const [xh, r, gs] = saved;
        if (!xh || !r || !gs) throw new Error('batchNormTrain: saved tensors missing');
        const dBeta = tf.sum(dy, [0, 1, 2]);
        const dGamma = tf.sum(tf.mul(dy, xh), [0, 1, 2]);
        const centeredDy = tf.sub(tf.sub(dy, tf.div(dBeta, count)), tf.mul(xh, tf.div(dGamma, count)));
        return [tf.mul(centeredDy, tf.mul(gs, r)), dGamma, dBeta];
      },
    };
  }) as unknown as CustomGradientFunc);
  const y = op(z, gamma, beta) as tf.Tensor4D;
  if (!kept) throw new Error('batchNormTrain: moments missing');
  // Clones share the data and belong to the caller's scope (tidy), unlike the kept originals.
  const [keptMean, keptVariance] = kept;
  const moments: BatchMoments = { mean: tf.clone(keptMean), variance: tf.clone(keptVariance), count };
  tf.dispose([keptMean, keptVariance]);
  return { y, moments };
}

/** Inference-mode batch norm with stored running statistics. */
export function batchNormEval(
  x: tf.Tensor4D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  runningMean: tf.Tensor1D,
  runningVar: tf.Tensor1D,
): tf.Tensor4D {
  return tf.add(tf.mul(tf.mul(tf.sub(x, runningMean), tf.rsqrt(tf.add(runningVar, BN_EPSILON))), gamma), beta) as tf.Tensor4D;
}

/** The variance PyTorch feeds into running statistics: unbiased (× N / (N − 1)); N = 1 leaves it as is. */
export function unbiasedVariance(m: BatchMoments): tf.Tensor1D {
  return m.count > 1 ? (tf.mul(m.variance, m.count / (m.count - 1)) as tf.Tensor1D) : m.variance;
}
