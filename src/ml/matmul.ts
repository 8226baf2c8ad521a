/**
 * `matMul` with transposed operands, fast on every backend.
 *
 * The wasm backend (XNNPACK) runs `matMul(a, b, transposeA, transposeB)` with a transposed operand 5–15×
 * slower than an explicit `transpose` followed by a plain `matMul` (measured on 2 cores, tfjs 4.22:
 * [256,784]ᵀ·[256,64] 20 ms with the flag, 1.9 ms transposed first). Every weight gradient of a dense
 * layer is such a product, so the backward pass was dominated by it. Other backends (webgpu, cpu) fold the
 * flags into their kernels, so they keep them.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor } from '@tensorflow/tfjs-core';

/** Swaps the last two axes. */
function transposeLast(t: Tensor): Tensor {
  const perm = t.shape.map((_, i) => i);
  const n = perm.length;
  perm[n - 1] = n - 2;
  perm[n - 2] = n - 1;
  return tf.transpose(t, perm);
}

export function matMulT<T extends Tensor>(a: T, b: Tensor, transposeA = false, transposeB = false): T {
  if ((transposeA || transposeB) && tf.getBackend() === 'wasm') {
    return tf.matMul(transposeA ? transposeLast(a) : a, transposeB ? transposeLast(b) : b) as T;
  }
  return tf.matMul(a, b, transposeA, transposeB) as T;
}
