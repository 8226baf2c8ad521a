/**
 * MNIST in its original IDX files (LeCun et al.), gzipped or not, plus the file helpers the CIFAR loader
 * shares: one place decides how a data file is found, size-checked and decompressed, and every failure
 * there becomes an `InputError` naming the file, never a raw zlib error or RangeError.
 *
 * IDX layout: 2 zero bytes, 1 element-type byte (0x08 = unsigned byte), 1 byte with the number of dims,
 * then each dim as a big-endian uint32, then the elements in row-major order.
 */
import type { Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { InputError } from '../../util/errors';
import type { Dataset } from '../data';
import { MNIST_CLASSES } from '../data';

/**
 * Largest file, decompressed payload or float32 output we accept, in bytes. Full MNIST is 55 MB raw and
 * 220 MB as floats, full CIFAR 185 MB raw and 740 MB as floats; a header asking for more is corrupt or
 * not a dataset this library can hold in memory, and is refused before anything that size is allocated.
 */
export const MAX_DATA_BYTES = 2 ** 31;

/** A dataset of images plus what a model needs to know about it. */
export interface ImageDataset {
  /** `data.x` is n × (h·w·c) float32 in [0, 1], each image in HWC order (row, then column, then channel). */
  data: Dataset;
  /** [height, width, channels] of one image. */
  inputShape: [number, number, number];
  /** Labels are in 0..classes-1. */
  classes: number;
}

/** Which part of a dataset with an official train/test split to load; `all` is train then test. */
export type DataSplit = 'train' | 'test' | 'all';

export interface MnistIdxOptions {
  split: DataSplit;
}

/** One parsed IDX file: its dims and its unsigned-byte elements (a view into the input, not a copy). */
export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

export interface ParseIdxOptions {
  /** Named in every error message; the file's path when parsing a file. */
  source?: string;
  /** The number of dims the caller needs (3 for images, 1 for labels); anything else is a bad magic. */
  ndims?: number;
}

const IDX_UBYTE = 0x08;
const IDX_TYPE_NAMES: Record<number, string> = {
  0x08: 'unsigned byte',
  0x09: 'signed byte',
  0x0b: 'int16',
  0x0c: 'int32',
  0x0d: 'float32',
  0x0e: 'float64',
};

const hex32 = (value: number): string => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;
const hex8 = (value: number): string => `0x${value.toString(16).padStart(2, '0')}`;

/** `60000 images of 28×28`, `60000 labels`, or `dims 2×3×4×5`: what a header claims, in words. */
function describeDims(dims: number[]): string {
  const [count = 0, ...rest] = dims;
  if (dims.length === 3) return `${count} images of ${rest.join('×')}`;
  if (dims.length === 1) return `${count} labels`;
  return `dims ${dims.join('×')}`;
}

/**
 * Parses one unsigned-byte IDX file, checking the magic, element type, dims and that the length is exactly
 * what the header implies. Throws `InputError` naming `options.source` on any mismatch.
 *
 * @example
 * const { dims, data } = parseIdx(bytes, { source: file, ndims: 3 });  // dims = [60000, 28, 28]
 */
export function parseIdx(bytes: Uint8Array, options: ParseIdxOptions = {}): IdxArray {
  const source = options.source ?? 'IDX data';
  const fail = (what: string): never => {
    throw new InputError(`${source}: ${what}`);
  };
  if (bytes.length < 4) fail(`truncated: ${bytes.length} bytes, shorter than the 4-byte IDX magic`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, false);
  const [zero0 = 0, zero1 = 0, elementType = 0, ndims = 0] = bytes;
  const expected = options.ndims === undefined ? '0x000008NN' : hex32(0x800 + options.ndims);
  if (zero0 !== 0 || zero1 !== 0) {
    // A gzip stream starts 1f 8b; say so, since "not IDX" alone hides the likely fix.
    const hint = zero0 === 0x1f && zero1 === 0x8b ? ' (the data is gzip-compressed: decompress it or name the file .gz)' : '';
    fail(`bad magic ${hex32(magic)}: not an IDX file (expected ${expected})${hint}`);
  }
  if (elementType !== IDX_UBYTE) {
    const typeName = IDX_TYPE_NAMES[elementType];
    fail(
      typeName
        ? `unsupported IDX element type ${hex8(elementType)} (${typeName}): only 0x08 (unsigned byte) is supported`
        : `bad magic ${hex32(magic)}: unknown IDX element type ${hex8(elementType)} (expected ${expected})`,
    );
  }
  if (options.ndims !== undefined && ndims !== options.ndims) {
    fail(`bad magic ${hex32(magic)}: ${ndims} dims, expected ${expected} (${options.ndims} dims)`);
  }
  if (ndims === 0) fail(`bad magic ${hex32(magic)}: an IDX array needs at least one dim`);
  const headerBytes = 4 + 4 * ndims;
  if (bytes.length < headerBytes) {
    fail(`truncated: the header of ${ndims} dims needs ${headerBytes} bytes, file has ${bytes.length}`);
  }
  const dims = Array.from({ length: ndims }, (_, d) => view.getUint32(4 + 4 * d, false));
  let elements = 1;
  for (const dim of dims) {
    elements *= dim;
    // Checked after every factor so the product never overflows into Infinity (and 0 × Infinity = NaN).
    if (elements > MAX_DATA_BYTES) {
      fail(`header dims ${dims.join('×')} exceed the ${MAX_DATA_BYTES}-byte limit: corrupt, or too large to load`);
    }
  }
  const impliedBytes = headerBytes + elements;
  if (bytes.length < impliedBytes) {
    fail(`truncated: header says ${describeDims(dims)} (${impliedBytes} bytes), file has ${bytes.length}`);
  }
  if (bytes.length > impliedBytes) {
    fail(`${bytes.length - impliedBytes} bytes of trailing data: header says ${describeDims(dims)} (${impliedBytes} bytes), file has ${bytes.length}`);
  }
  return { dims, data: bytes.subarray(headerBytes, impliedBytes) };
}

/** Throws `InputError` unless `dir` is an existing directory. */
export async function requireDirectory(dir: string): Promise<void> {
  const info = await statOrUndefined(dir);
  if (!info) throw new InputError(`${dir}: data directory not found`);
  if (!info.isDirectory()) throw new InputError(`${dir}: not a directory`);
}

/** `stat`, but `undefined` when nothing is there; other failures (permissions…) become an `InputError`. */
export async function statOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await stat(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new InputError(`${file}: cannot access: ${code ?? (err as Error).message}`);
  }
}

/**
 * `dir/name` or `dir/name.gz`, whichever exists; the plain file when both do, since it needs no
 * decompression and is usually the one extracted from the other.
 */
export async function resolveMaybeGzipped(dir: string, name: string): Promise<string> {
  for (const candidate of [name, `${name}.gz`]) {
    const file = path.join(dir, candidate);
    if ((await statOrUndefined(file))?.isFile()) return file;
  }
  throw new InputError(`${path.join(dir, name)}: not found (nor ${name}.gz)`);
}

const gunzipAsync = promisify(gunzip);

/**
 * The bytes of a data file, decompressed when it is gzip (by its `.gz` name or by its content, since
 * downloads sometimes lose the extension). Size-checked before and after decompression.
 */
export async function readDataFile(file: string): Promise<Uint8Array> {
  const info = await statOrUndefined(file);
  if (!info) throw new InputError(`${file}: not found`);
  if (!info.isFile()) throw new InputError(`${file}: not a regular file`);
  if (info.size > MAX_DATA_BYTES) throw new InputError(`${file}: ${info.size} bytes exceeds the ${MAX_DATA_BYTES}-byte limit`);
  let raw: Buffer;
  try {
    raw = await readFile(file);
  } catch (err) {
    throw new InputError(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const looksGzipped = raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b;
  if (!file.endsWith('.gz') && !looksGzipped) return raw;
  if (!looksGzipped) throw new InputError(`${file}: bad gzip: the file does not start with the gzip magic 1f 8b`);
  try {
    // maxOutputLength turns a decompression bomb into an error instead of exhausting memory.
    return await gunzipAsync(raw, { maxOutputLength: MAX_DATA_BYTES });
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    if (code === 'ERR_BUFFER_TOO_LARGE') throw new InputError(`${file}: decompresses to more than the ${MAX_DATA_BYTES}-byte limit`);
    throw new InputError(`${file}: bad gzip (corrupt or truncated): ${message}`);
  }
}

/** Float32 value of each byte 0..255 scaled to [0, 1]; a table so decoding is one lookup per pixel. */
export const BYTE_TO_UNIT: Float32Array = Float32Array.from({ length: 256 }, (_, v) => v / 255);

/** Throws unless `n` examples of `features` floats fit under the size limit; call before allocating. */
export function checkFloatOutputSize(n: number, features: number, what: string): void {
  const bytes = n * features * Float32Array.BYTES_PER_ELEMENT;
  if (bytes > MAX_DATA_BYTES) {
    throw new InputError(`${what}: ${n} examples of ${features} values need ${bytes} bytes as float32, over the ${MAX_DATA_BYTES}-byte limit`);
  }
}

export function checkSplit(split: unknown, what: string): asserts split is DataSplit {
  if (split !== 'train' && split !== 'test' && split !== 'all') {
    throw new InputError(`${what}: split must be 'train', 'test' or 'all', got ${JSON.stringify(split)}`);
  }
}

interface MnistPart {
  images: IdxArray;
  labels: IdxArray;
  imageFile: string;
}

async function loadMnistPart(dir: string, prefix: 'train' | 't10k'): Promise<MnistPart> {
  const imageFile = await resolveMaybeGzipped(dir, `${prefix}-images-idx3-ubyte`);
  const labelFile = await resolveMaybeGzipped(dir, `${prefix}-labels-idx1-ubyte`);
  const images = parseIdx(await readDataFile(imageFile), { source: imageFile, ndims: 3 });
  const labels = parseIdx(await readDataFile(labelFile), { source: labelFile, ndims: 1 });
  const [imageCount = 0, rows = 0, cols = 0] = images.dims;
  const [labelCount = 0] = labels.dims;
  if (imageCount === 0) throw new InputError(`${imageFile}: holds no images`);
  if (rows === 0 || cols === 0) throw new InputError(`${imageFile}: images of ${rows}×${cols} pixels are empty`);
  if (labelCount !== imageCount) {
    throw new InputError(`${labelFile}: ${labelCount} labels, but ${imageFile} has ${imageCount} images`);
  }
  const badAt = labels.data.findIndex((label) => label >= MNIST_CLASSES);
  if (badAt >= 0) {
    throw new InputError(`${labelFile}: label ${labels.data[badAt]} at index ${badAt} is out of range 0..${MNIST_CLASSES - 1}`);
  }
  return { images, labels, imageFile };
}

/**
 * MNIST from the four IDX files in `dir` (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
 * `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`), in file order.
 *
 * Pixels are byte / 255 as float32. The embedded `mnist` package stores the same scale rounded to three
 * decimals, so values differ from it by < 0.0005; the order here is the files' order, not shuffled.
 * `inputShape` is [rows, cols, 1] from the header ([28, 28, 1] for MNIST and Fashion-MNIST).
 *
 * @example
 * const { data, inputShape } = await loadMnistIdx('/data/mnist', { split: 'train' });  // data.n === 60000
 */
export async function loadMnistIdx(dir: string, options: MnistIdxOptions): Promise<ImageDataset> {
  checkSplit(options.split, dir);
  await requireDirectory(dir);
  const prefixes: Array<'train' | 't10k'> = options.split === 'train' ? ['train'] : options.split === 'test' ? ['t10k'] : ['train', 't10k'];
  const parts: MnistPart[] = [];
  for (const prefix of prefixes) parts.push(await loadMnistPart(dir, prefix));
  const [first] = parts;
  if (!first) throw new Error('unreachable: at least one MNIST part is always loaded');
  const [, rows = 0, cols = 0] = first.images.dims;
  for (const part of parts) {
    const [, partRows = 0, partCols = 0] = part.images.dims;
    if (partRows !== rows || partCols !== cols) {
      throw new InputError(`${part.imageFile}: images are ${partRows}×${partCols}, but ${first.imageFile} has ${rows}×${cols}`);
    }
  }
  const features = rows * cols;
  const n = parts.reduce((sum, part) => sum + part.labels.data.length, 0);
  checkFloatOutputSize(n, features, dir);
  const x = new Float32Array(n * features);
  const y = new Int32Array(n);
  let row = 0;
  for (const part of parts) {
    const pixels = part.images.data;
    const offset = row * features;
    for (let i = 0; i < pixels.length; i++) x[offset + i] = BYTE_TO_UNIT[pixels[i] ?? 0] ?? 0;
    y.set(part.labels.data, row);
    row += part.labels.data.length;
  }
  return { data: { x, y, n }, inputShape: [rows, cols, 1], classes: MNIST_CLASSES };
}
