/**
 * The ViT's differentiable building blocks beyond matMul/softmax, with gradients every backend we use can
 * run.
 *
 * tfjs-core registers no gradients (see `gradients.ts`); every kernel differentiated here has one there
 * (BatchMatMul, Softmax, Erf, Mul, Add, Sub, Mean, Sum, Reshape, Transpose, Slice, Concat, Identity), and
 * the wasm backend has the forward kernels (Erf and Softmax included), so the stock tape works. LayerNorm
 * alone gets a closed-form gradient (`tf.customGrad`, nothing registered process-wide): composed of
 * mean/sub/square/rsqrt/mul, its taped gradient is a dozen broadcasts and reductions of the full
 * activation, and it runs 2·depth + 1 times per step.
 */
import { tf } from '../tf';
import { LN_EPSILON } from './architecture';

type Tensor = tf.Tensor;
/** tfjs-core exports the type only from its engine module, so it is taken from `customGrad` itself. */
type CustomGradientFunc = Parameters<typeof tf.customGrad>[0];

/**
 * LayerNorm over the last axis of a rows × features matrix. With x̂ = (x − μ)·r, r = 1/√(σ² + ε), D
 * features, g = dy·γ:  dβ = Σ_rows dy,  dγ = Σ_rows dy·x̂,  dx = r·(g − mean(g) − x̂·mean(g·x̂)) (means per
 * row). Checked against finite differences through the whole network in `test/ml-vit.test.ts`.
 */
const layerNormOp = tf.customGrad(((x: Tensor, gamma: Tensor, beta: Tensor, save: tf.GradSaveFunc) => {
  const mean = tf.mean(x, 1, true);
  const centered = tf.sub(x, mean);
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centered), 1, true), LN_EPSILON));
  const xhat = tf.mul(centered, rstd);
  save([xhat, rstd, gamma]);
  return {
    value: tf.add(tf.mul(xhat, gamma), beta),
    gradFunc: (dy: Tensor, saved: Tensor[]) => {
      const [xh, r, g] = saved;
      if (!xh || !r || !g) throw new Error('layerNorm: saved tensors missing');
      const gdy = tf.mul(dy, g);
      const inner = tf.sub(tf.sub(gdy, tf.mean(gdy, 1, true)), tf.mul(xh, tf.mean(tf.mul(gdy, xh), 1, true)));
      return [tf.mul(inner, r), tf.sum(tf.mul(dy, xh), 0), tf.sum(dy, 0)];
    },
  };
}) as unknown as CustomGradientFunc);

/** LayerNorm of each row of `x` (rows × features) with per-feature γ and β; differentiable in all three. */
export function layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D): tf.Tensor2D {
  return layerNormOp(x, gamma, beta) as tf.Tensor2D;
}

/** Exact GELU, x·Φ(x) = ½·x·(1 + erf(x/√2)) (PyTorch's `nn.GELU()` default, not the tanh approximation). */
export function gelu<T extends tf.Tensor>(x: T): T {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)) as T;
}

/**
 * Images (n × h × w × c, or dataset rows n × h·w·c) to patch rows: (n · tokens) × (p² · c), tokens in
 * row-major patch order, each patch flattened (row, column, channel). Written with rank-4 reshapes and one
 * rank-4 transpose ([n·h/p, p, w/p, p·c] → [n·h/p, w/p, p, p·c]) rather than the rank-6 transpose the
 * textbook formulation needs.
 */
export function patchify(x: tf.Tensor, inputShape: [number, number, number], patchSize: number): tf.Tensor2D {
  const [h, w, c] = inputShape;
  const n = x.shape[0] ?? 0;
  const p = patchSize;
  const rows = tf.reshape(x, [n * (h / p), p, w / p, p * c]);
  return tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [n * (h / p) * (w / p), p * p * c]);
}
