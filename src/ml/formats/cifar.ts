/**
 * CIFAR-10 and CIFAR-100 from their "binary version" batches (Krizhevsky 2009).
 *
 * Each record is the label byte(s) then 3072 pixel bytes: the 32×32 red plane, then green, then blue, each
 * row-major. Records are decoded to HWC (row, column, channel) float32 in [0, 1], the layout tfjs conv
 * layers take by default, so a record's bytes are transposed from CHW while decoding.
 */
import * as path from 'node:path';
import { InputError } from '../../util/errors';
import type { Dataset } from '../data';
import type { DataSplit, ImageDataset } from './idx';
import { BYTE_TO_UNIT, checkFloatOutputSize, checkSplit, readDataFile, requireDirectory, statOrUndefined } from './idx';

export const CIFAR_HEIGHT = 32;
export const CIFAR_WIDTH = 32;
export const CIFAR_CHANNELS = 3;
const PLANE = CIFAR_HEIGHT * CIFAR_WIDTH;
/** Pixel bytes (and floats) per image. */
export const CIFAR_PIXELS = PLANE * CIFAR_CHANNELS;

export interface Cifar10Options {
  split: DataSplit;
}

export interface Cifar100Options {
  split: DataSplit;
  /** `fine` (100 classes, the default and the usual benchmark) or `coarse` (20 superclasses). */
  label?: 'fine' | 'coarse';
}

/** How the label bytes of one batch format are laid out and which one is the label. */
export interface CifarRecordFormat {
  /** Label bytes before the pixels: 1 for CIFAR-10, 2 (coarse, fine) for CIFAR-100. */
  labelBytes: number;
  /** Exclusive upper bound of each label byte, checked for every one of them to catch corruption. */
  labelLimits: number[];
  /** Which label byte becomes `y`. */
  labelIndex: number;
}

export const CIFAR10_FORMAT: CifarRecordFormat = { labelBytes: 1, labelLimits: [10], labelIndex: 0 };
const CIFAR100_LIMITS = [20, 100];
const LABEL_NAMES_100 = ['coarse', 'fine'];

/**
 * Checks one batch's length and labels; returns its record count. A file cut exactly at a record boundary
 * is indistinguishable from a smaller batch, so only partial records are detected as truncation.
 */
function checkCifarBatch(bytes: Uint8Array, format: CifarRecordFormat, source: string): number {
  const recordBytes = format.labelBytes + CIFAR_PIXELS;
  if (bytes.length === 0) throw new InputError(`${source}: empty file, expected ${recordBytes}-byte CIFAR records`);
  const remainder = bytes.length % recordBytes;
  const records = (bytes.length - remainder) / recordBytes;
  if (remainder !== 0) {
    throw new InputError(
      `${source}: truncated or corrupt: ${bytes.length} bytes is not a whole number of ${recordBytes}-byte records ` +
        `(${records} records + ${remainder} bytes)`,
    );
  }
  for (let r = 0; r < records; r++) {
    for (let b = 0; b < format.labelBytes; b++) {
      const label = bytes[r * recordBytes + b] ?? 0;
      const limit = format.labelLimits[b] ?? 256;
      if (label >= limit) {
        const which = format.labelBytes === 2 ? ` (${LABEL_NAMES_100[b]} label)` : '';
        throw new InputError(`${source}: label ${label} in record ${r} is out of range 0..${limit - 1}${which}: not a CIFAR batch of this kind, or corrupt`);
      }
    }
  }
  return records;
}

/** Decodes every record of a checked batch into rows `startRow…` of `x` (HWC) and `y`. */
function decodeCifarBatch(bytes: Uint8Array, format: CifarRecordFormat, x: Float32Array, y: Int32Array, startRow: number): void {
  const recordBytes = format.labelBytes + CIFAR_PIXELS;
  const records = bytes.length / recordBytes;
  for (let r = 0; r < records; r++) {
    const record = r * recordBytes;
    const pixels = record + format.labelBytes;
    const out = (startRow + r) * CIFAR_PIXELS;
    y[startRow + r] = bytes[record + format.labelIndex] ?? 0;
    for (let p = 0; p < PLANE; p++) {
      const hwc = out + p * CIFAR_CHANNELS;
      x[hwc] = BYTE_TO_UNIT[bytes[pixels + p] ?? 0] ?? 0;
      x[hwc + 1] = BYTE_TO_UNIT[bytes[pixels + PLANE + p] ?? 0] ?? 0;
      x[hwc + 2] = BYTE_TO_UNIT[bytes[pixels + 2 * PLANE + p] ?? 0] ?? 0;
    }
  }
}

/**
 * One CIFAR binary batch already in memory, decoded to HWC float32 in [0, 1]. Throws `InputError` naming
 * `source` on a partial record or an out-of-range label.
 */
export function parseCifarBatch(bytes: Uint8Array, format: CifarRecordFormat, source = 'CIFAR batch'): Dataset {
  const n = checkCifarBatch(bytes, format, source);
  checkFloatOutputSize(n, CIFAR_PIXELS, source);
  const x = new Float32Array(n * CIFAR_PIXELS);
  const y = new Int32Array(n);
  decodeCifarBatch(bytes, format, x, y, 0);
  return { x, y, n };
}

/**
 * `dir`, or its `subdir` (the folder the official tarball extracts to), whichever holds `probe`.
 * Only the probe decides, so a half-copied directory reports the file that is missing, not a layout guess.
 */
async function resolveCifarDir(dir: string, subdir: string, probe: string, dataset: string): Promise<string> {
  await requireDirectory(dir);
  for (const candidate of [dir, path.join(dir, subdir)]) {
    if ((await statOrUndefined(path.join(candidate, probe)))?.isFile()) return candidate;
  }
  throw new InputError(`${dir}: no ${dataset} data: neither ${path.join(dir, probe)} nor ${path.join(dir, subdir, probe)} exists`);
}

async function loadCifarFiles(baseDir: string, names: string[], format: CifarRecordFormat, classes: number): Promise<ImageDataset> {
  // Read and check every file before allocating the output, so a bad last batch fails fast and the
  // float array is allocated once at its final size instead of concatenated.
  const batches: Array<{ bytes: Uint8Array; records: number }> = [];
  for (const name of names) {
    const file = path.join(baseDir, name);
    if (!(await statOrUndefined(file))) throw new InputError(`${file}: not found`);
    const bytes = await readDataFile(file);
    batches.push({ bytes, records: checkCifarBatch(bytes, format, file) });
  }
  const n = batches.reduce((sum, batch) => sum + batch.records, 0);
  checkFloatOutputSize(n, CIFAR_PIXELS, baseDir);
  const x = new Float32Array(n * CIFAR_PIXELS);
  const y = new Int32Array(n);
  let row = 0;
  for (const batch of batches) {
    decodeCifarBatch(batch.bytes, format, x, y, row);
    row += batch.records;
  }
  return { data: { x, y, n }, inputShape: [CIFAR_HEIGHT, CIFAR_WIDTH, CIFAR_CHANNELS], classes };
}

const CIFAR10_TRAIN = ['data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin'];
const CIFAR10_TEST = ['test_batch.bin'];

/**
 * CIFAR-10 from `dir` or `dir/cifar-10-batches-bin/`: `data_batch_1..5.bin` (train) and `test_batch.bin`
 * (test), in file and record order; `all` is train then test. `x` is n × 3072 in HWC order.
 *
 * @example
 * const { data, inputShape, classes } = await loadCifar10('/data/cifar10', { split: 'train' });  // n 50000, [32, 32, 3], 10
 */
export async function loadCifar10(dir: string, options: Cifar10Options): Promise<ImageDataset> {
  checkSplit(options.split, dir);
  const names = options.split === 'train' ? CIFAR10_TRAIN : options.split === 'test' ? CIFAR10_TEST : [...CIFAR10_TRAIN, ...CIFAR10_TEST];
  const baseDir = await resolveCifarDir(dir, 'cifar-10-batches-bin', names[0] ?? '', 'CIFAR-10');
  return loadCifarFiles(baseDir, names, CIFAR10_FORMAT, 10);
}

/**
 * CIFAR-100 from `dir` or `dir/cifar-100-binary/`: `train.bin` and `test.bin`; `all` is train then test.
 * `y` is the fine label (100 classes) unless `label: 'coarse'` (20 classes); both are range-checked.
 *
 * @example
 * const { data, classes } = await loadCifar100('/data/cifar100', { split: 'test', label: 'coarse' });  // n 10000, 20
 */
export async function loadCifar100(dir: string, options: Cifar100Options): Promise<ImageDataset> {
  checkSplit(options.split, dir);
  const label = options.label ?? 'fine';
  if (label !== 'fine' && label !== 'coarse') throw new InputError(`${dir}: CIFAR-100 label must be 'fine' or 'coarse', got ${JSON.stringify(label)}`);
  const names = options.split === 'train' ? ['train.bin'] : options.split === 'test' ? ['test.bin'] : ['train.bin', 'test.bin'];
  const baseDir = await resolveCifarDir(dir, 'cifar-100-binary', names[0] ?? '', 'CIFAR-100');
  const labelIndex = label === 'coarse' ? 0 : 1;
  const format: CifarRecordFormat = { labelBytes: 2, labelLimits: CIFAR100_LIMITS, labelIndex };
  return loadCifarFiles(baseDir, names, format, CIFAR100_LIMITS[labelIndex] ?? 0);
}
