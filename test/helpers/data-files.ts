/** Small dataset files in the exact standard formats (MNIST IDX, CIFAR binary batches), for loader tests. */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';

/** An unsigned-byte IDX file: magic 0x000008NN, big-endian dims, then the bytes. */
export function idxBytes(dims: number[], data: ArrayLike<number>): Buffer {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header[2] = 0x08;
  header[3] = dims.length;
  dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([header, Buffer.from(Array.from(data))]);
}

/** Pixel byte of MNIST-like image `i` at flat position `p`: distinct per image and position. */
export const mnistPixel = (i: number, p: number): number => (i * 37 + p * 11) % 256;

export function mnistImages(count: number, rows = 28, cols = 28, seedOffset = 0): Buffer {
  const data = Array.from({ length: count * rows * cols }, (_, k) => mnistPixel(seedOffset + Math.floor(k / (rows * cols)), k % (rows * cols)));
  return idxBytes([count, rows, cols], data);
}

/** Writes the four MNIST files: train has labels `trainLabels`, test `testLabels`. */
export function writeMnist(dir: string, trainLabels: number[], testLabels: number[], gz: boolean): void {
  const write = (name: string, bytes: Buffer): void => writeFileSync(path.join(dir, gz ? `${name}.gz` : name), gz ? gzipSync(bytes) : bytes);
  write('train-images-idx3-ubyte', mnistImages(trainLabels.length));
  write('train-labels-idx1-ubyte', idxBytes([trainLabels.length], trainLabels));
  write('t10k-images-idx3-ubyte', mnistImages(testLabels.length, 28, 28, 100));
  write('t10k-labels-idx1-ubyte', idxBytes([testLabels.length], testLabels));
}

/** Pixel byte of CIFAR record `r`, channel `c`, row `h`, column `w`: distinct enough to catch any transposition. */
export const cifarPixel = (r: number, c: number, h: number, w: number): number => (r * 53 + c * 101 + h * 7 + w * 3) % 256;

/** One CIFAR record: label bytes, then R, G, B planes of 32×32, each row-major. */
export function cifarRecord(labels: number[], r: number): Buffer {
  const pixels = Buffer.alloc(3072);
  for (let c = 0; c < 3; c++) for (let h = 0; h < 32; h++) for (let w = 0; w < 32; w++) pixels[c * 1024 + h * 32 + w] = cifarPixel(r, c, h, w);
  return Buffer.concat([Buffer.from(labels), pixels]);
}

export function cifarBatch(records: Array<{ labels: number[]; id: number }>): Buffer {
  return Buffer.concat(records.map(({ labels, id }) => cifarRecord(labels, id)));
}
