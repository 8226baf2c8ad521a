/**
 * Seeded augmentation of NHWC image batches: random horizontal flip and random crop with zero padding.
 *
 * Each example's transform is drawn from its own stream, `deriveSeed(seed, 'augment', epoch, index)`, so it
 * depends only on (seed, epoch, example index): not on batch size, batch order, shard or worker, and a
 * resumed run sees exactly the augmentations an uninterrupted one would. Host-side code: batches are
 * host arrays until they are fed, and the work is a copy per pixel.
 */
import { InputError } from '../util/errors';
import { Rng, deriveSeed } from './rng';

export interface AugmentOptions {
  /** Mirror left–right with probability 1/2. */
  flip: boolean;
  /** Zero-pad each side by this many pixels, then crop a random h×w window back out (0 = no crop). */
  cropPadding: number;
}

/**
 * One example's transform. Output pixel (y, x) is input pixel (y + shiftY, x' + shiftX), where
 * x' = w − 1 − x when `flip` and x otherwise; pixels from outside the image are 0. A crop at window
 * offset (dy, dx) in the padded image is the shift (dy − p, dx − p), each in −p..p.
 */
export interface ImageTransform {
  flip: boolean;
  shiftY: number;
  shiftX: number;
}

function checkShape(shape: readonly number[]): [number, number, number] {
  const [h = 0, w = 0, c = 0] = shape;
  if (shape.length !== 3 || ![h, w, c].every((d) => Number.isInteger(d) && d > 0)) {
    throw new InputError(`image shape must be three positive integers [h, w, c], got ${JSON.stringify(shape)}`);
  }
  return [h, w, c];
}

function checkOptions(options: AugmentOptions): void {
  if (!Number.isInteger(options.cropPadding) || options.cropPadding < 0) {
    throw new InputError(`cropPadding must be a non-negative integer, got ${options.cropPadding}`);
  }
}

/**
 * The transform of example `index` in `epoch`. The flip bit is drawn even when flipping is off, so turning
 * flip on or off leaves every example's crop unchanged.
 */
export function drawTransform(options: AugmentOptions, seed: number, epoch: number, index: number): ImageTransform {
  checkOptions(options);
  if (!Number.isSafeInteger(epoch) || epoch < 0) throw new InputError(`epoch must be a non-negative integer, got ${epoch}`);
  if (!Number.isSafeInteger(index) || index < 0) throw new InputError(`example index must be a non-negative integer, got ${index}`);
  const rng = new Rng(deriveSeed(seed, 'augment', epoch, index));
  const flipBit = (rng.nextUint32() & 1) === 1;
  const p = options.cropPadding;
  const shiftY = p > 0 ? rng.nextInt(2 * p + 1) - p : 0;
  const shiftX = p > 0 ? rng.nextInt(2 * p + 1) - p : 0;
  return { flip: options.flip && flipBit, shiftY, shiftX };
}

/** Writes `transform` of the image at `src[srcOffset…]` to `dst[dstOffset…]` (HWC, h·w·c values each). */
function writeTransformed(
  src: Float32Array,
  srcOffset: number,
  dst: Float32Array,
  dstOffset: number,
  [h, w, c]: [number, number, number],
  { flip, shiftY, shiftX }: ImageTransform,
): void {
  for (let y = 0; y < h; y++) {
    const sy = y + shiftY;
    for (let x = 0; x < w; x++) {
      const sx = (flip ? w - 1 - x : x) + shiftX;
      const out = dstOffset + (y * w + x) * c;
      if (sy < 0 || sy >= h || sx < 0 || sx >= w) {
        dst.fill(0, out, out + c);
      } else {
        const from = srcOffset + (sy * w + sx) * c;
        for (let k = 0; k < c; k++) dst[out + k] = src[from + k] ?? 0;
      }
    }
  }
}

/**
 * One HWC image transformed, as a new array.
 *
 * @example
 * applyTransform(image, [32, 32, 3], { flip: true, shiftY: 0, shiftX: 0 });  // mirrored copy
 */
export function applyTransform(image: Float32Array, shape: readonly number[], transform: ImageTransform): Float32Array {
  const dims = checkShape(shape);
  const size = dims[0] * dims[1] * dims[2];
  if (image.length !== size) throw new InputError(`image has ${image.length} values, shape ${JSON.stringify(shape)} needs ${size}`);
  for (const key of ['shiftY', 'shiftX'] as const) {
    if (!Number.isSafeInteger(transform[key])) throw new InputError(`${key} must be an integer, got ${transform[key]}`);
  }
  const out = new Float32Array(size);
  writeTransformed(image, 0, out, 0, dims, transform);
  return out;
}

/**
 * A new array with each of the `n` HWC images of `x` (n × h·w·c, row-major) augmented; row k is example
 * `indices[k]` of the dataset, whose transform depends only on (seed, epoch, indices[k]). `x` is untouched.
 *
 * @example
 * const xb = augmentBatch(batch.x, [32, 32, 3], batch.n, { flip: true, cropPadding: 4 }, seed, epoch, batchIndices);
 */
export function augmentBatch(
  x: Float32Array,
  shape: readonly number[],
  n: number,
  options: AugmentOptions,
  seed: number,
  epoch: number,
  indices: ArrayLike<number>,
): Float32Array {
  const dims = checkShape(shape);
  checkOptions(options);
  const size = dims[0] * dims[1] * dims[2];
  if (!Number.isInteger(n) || n < 0 || x.length !== n * size) {
    throw new InputError(`augmentBatch: x has ${x.length} values, ${n} images of ${dims.join('×')} need ${n * size}`);
  }
  if (indices.length !== n) throw new InputError(`augmentBatch: ${indices.length} example indices for ${n} images`);
  const out = new Float32Array(x.length);
  for (let k = 0; k < n; k++) {
    const transform = drawTransform(options, seed, epoch, indices[k] ?? -1);
    writeTransformed(x, k * size, out, k * size, dims, transform);
  }
  return out;
}
