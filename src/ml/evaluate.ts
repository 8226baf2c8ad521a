/**
 * Chunked evaluation, shared by every family: a model's outputs over a whole dataset without holding the
 * whole dataset's activations (conv and attention activations of a few thousand examples would not fit on
 * every backend).
 */
import { InputError } from '../util/errors';
import type { Dataset } from './data';
import { featureSize } from './data';
import { tf } from './tf';

/**
 * Runs `fn` over `ds` in chunks of `chunkRows` examples and collects its outputs, n × `width` floats.
 * Each chunk is read back asynchronously (synchronous reads fail on webgpu in Node) and freed before the
 * next one starts.
 */
export async function mapChunks(ds: Dataset, chunkRows: number, width: number, fn: (x: tf.Tensor2D) => tf.Tensor): Promise<Float32Array> {
  const d = featureSize(ds);
  const out = new Float32Array(ds.n * width);
  for (let start = 0; start < ds.n; start += chunkRows) {
    const rows = Math.min(chunkRows, ds.n - start);
    const result = tf.tidy(() => fn(tf.tensor2d(ds.x.subarray(start * d, (start + rows) * d), [rows, d])));
    try {
      out.set(await result.data(), start * width);
    } finally {
      result.dispose();
    }
  }
  return out;
}

/** Throws InputError unless `ds` holds h·w·c features per example (images, flattened HWC). */
export function checkImageFeatures(inputShape: readonly [number, number, number], ds: Dataset): void {
  const [h, w, c] = inputShape;
  if (ds.n > 0 && featureSize(ds) !== h * w * c) {
    throw new InputError(`data has ${featureSize(ds)} features per example but the model takes ${h}×${w}×${c} = ${h * w * c}`);
  }
}

/** `fn` of freshly uploaded parameter tensors, which are freed afterwards whatever happens. */
export async function withTensors<T, R>(tensors: T, dispose: (t: T) => void, fn: (t: T) => Promise<R>): Promise<R> {
  try {
    return await fn(tensors);
  } finally {
    dispose(tensors);
  }
}

/** softmax(logits / temperature), n × classes, read back asynchronously. */
export async function softmaxOfLogits(logits: Float32Array, n: number, temperature: number): Promise<Float32Array> {
  if (!(temperature > 0)) throw new InputError(`temperature must be positive, got ${temperature}`);
  if (n === 0) return new Float32Array();
  const probs = tf.tidy(() => tf.softmax(tf.div(tf.tensor2d(logits, [n, logits.length / n]), temperature)));
  try {
    return new Float32Array(await probs.data());
  } finally {
    probs.dispose();
  }
}
