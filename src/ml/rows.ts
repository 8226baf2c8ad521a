/**
 * The row layouts the image families (CNN, ResNet, ViT) share for a WeightFormer, one row per output unit:
 *
 * - a dense (linear) layer's row `o`: column `o` of `w` (inSize values, input order), then the bias;
 * - a conv's row `co` (output channel): the kernel's `[:, :, :, co]` in (a, b, ci) order — k·k·cin
 *   values —, the bias, then with BN gamma, beta, running mean, running variance.
 *
 * Host arrays both ways (exact), the tensor direction from slices, transposes and reshapes only (so
 * gradients flow into the rows), and the count and shape checks of a family's row matrices.
 */
import { InputError } from '../util/errors';
import type { CnnBatchNorm } from './cnn/architecture';
import type { MlpLayer } from './mlp';
import { tf } from './tf';

/** BN entries appended to each conv row, in this order. */
export const BN_ROW_FIELDS = ['gamma', 'beta', 'runningMean', 'runningVar'] as const;

/** A conv as rows see it (a CNN block or a ResNet conv). */
export interface RowsConv {
  kernelSize: number;
  inChannels: number;
  outChannels: number;
  kernel: Float32Array;
  bias: Float32Array;
  bn?: CnnBatchNorm;
}

/** What the checks need of a family's layout entry (a `name`, when there is one, goes into messages). */
export interface RowsShape {
  rows: number;
  rowSize: number;
  name?: string;
}

/** A conv's rows: outChannels × (k·k·cin + 1 [+ 4 with BN]). */
export function convToRowMatrix(c: RowsConv): Float32Array {
  const fan = c.kernelSize * c.kernelSize * c.inChannels;
  const rowSize = fan + 1 + (c.bn ? BN_ROW_FIELDS.length : 0);
  const m = new Float32Array(c.outChannels * rowSize);
  for (let co = 0; co < c.outChannels; co++) {
    const row = co * rowSize;
    for (let t = 0; t < fan; t++) m[row + t] = c.kernel[t * c.outChannels + co] ?? 0;
    m[row + fan] = c.bias[co] ?? 0;
    const bn = c.bn;
    if (bn) BN_ROW_FIELDS.forEach((f, i) => (m[row + fan + 1 + i] = bn[f][co] ?? 0));
  }
  return m;
}

/** The inverse of `convToRowMatrix`: overwrites `c`'s kernel, bias and BN entries from `m`. */
export function convFromRowMatrix(m: Float32Array, c: RowsConv): void {
  const fan = c.kernelSize * c.kernelSize * c.inChannels;
  const rowSize = fan + 1 + (c.bn ? BN_ROW_FIELDS.length : 0);
  for (let co = 0; co < c.outChannels; co++) {
    const row = co * rowSize;
    for (let t = 0; t < fan; t++) c.kernel[t * c.outChannels + co] = m[row + t] ?? 0;
    c.bias[co] = m[row + fan] ?? 0;
    const bn = c.bn;
    if (bn) BN_ROW_FIELDS.forEach((f, i) => (bn[f][co] = m[row + fan + 1 + i] ?? 0));
  }
}

/** A dense layer's rows: outSize × (inSize + 1). */
export function denseToRowMatrix(l: MlpLayer): Float32Array {
  const rowSize = l.inSize + 1;
  const m = new Float32Array(l.outSize * rowSize);
  for (let o = 0; o < l.outSize; o++) {
    for (let i = 0; i < l.inSize; i++) m[o * rowSize + i] = l.w[i * l.outSize + o] ?? 0;
    m[o * rowSize + l.inSize] = l.b[o] ?? 0;
  }
  return m;
}

/** The inverse of `denseToRowMatrix`: overwrites `l`'s weights and bias from `m`. */
export function denseFromRowMatrix(m: Float32Array, l: MlpLayer): void {
  const rowSize = l.inSize + 1;
  for (let o = 0; o < l.outSize; o++) {
    for (let i = 0; i < l.inSize; i++) l.w[i * l.outSize + o] = m[o * rowSize + i] ?? 0;
    l.b[o] = m[o * rowSize + l.inSize] ?? 0;
  }
}

function layerLabel(layer: RowsShape, l: number): string {
  return layer.name === undefined ? `layer ${l}` : `layer ${l} (${layer.name})`;
}

function checkRowCount(count: number, layout: RowsShape[]): void {
  if (count !== layout.length) throw new InputError(`got ${count} row matrices, the architecture has ${layout.length} layers`);
}

/** Refuses host rows that are not one rows × rowSize matrix per layer of `layout`. */
export function checkRowArrays(rows: Float32Array[], layout: RowsShape[]): void {
  checkRowCount(rows.length, layout);
  layout.forEach((layer, l) => {
    const m = rows[l];
    if (!m || m.length !== layer.rows * layer.rowSize) {
      throw new InputError(`${layerLabel(layer, l)} rows have ${m?.length ?? 0} values, expected ${layer.rows} × ${layer.rowSize}`);
    }
  });
}

/** `rows` checked to be one rows × rowSize tensor per layer of `layout`. */
export function checkRowTensors(rows: tf.Tensor2D[], layout: RowsShape[]): tf.Tensor2D[] {
  checkRowCount(rows.length, layout);
  return layout.map((layer, l) => {
    const m = rows[l];
    if (!m || m.shape[0] !== layer.rows || m.shape[1] !== layer.rowSize) {
      throw new InputError(`${layerLabel(layer, l)} rows are ${m?.shape.join('×') ?? 'missing'}, expected ${layer.rows}×${layer.rowSize}`);
    }
    return m;
  });
}

/** Column `at` of a row matrix, as a vector (one entry per row). */
export function rowColumn(m: tf.Tensor2D, at: number): tf.Tensor1D {
  return tf.reshape(tf.slice(m, [0, at], [m.shape[0], 1]), [m.shape[0]]);
}

/** A dense layer's `w` (inSize × outSize) and `b` from its row tensor. */
export function denseFromRowTensor(m: tf.Tensor2D): { w: tf.Tensor2D; b: tf.Tensor1D } {
  const [outSize = 0, rowSize = 0] = m.shape;
  return { w: tf.transpose(tf.slice(m, [0, 0], [outSize, rowSize - 1])), b: rowColumn(m, rowSize - 1) };
}

/** A k×k conv's kernel ([k, k, cin, cout]), bias and, with `batchNorm`, BN vectors from its row tensor. */
export function convFromRowTensor(
  m: tf.Tensor2D,
  k: number,
  cin: number,
  cout: number,
  batchNorm: boolean,
): { kernel: tf.Tensor4D; bias: tf.Tensor1D; bn?: { gamma: tf.Tensor1D; beta: tf.Tensor1D; runningMean: tf.Tensor1D; runningVar: tf.Tensor1D } } {
  const fan = k * k * cin;
  const kernel = tf.reshape(tf.transpose(tf.slice(m, [0, 0], [cout, fan])), [k, k, cin, cout]) as tf.Tensor4D;
  const conv: ReturnType<typeof convFromRowTensor> = { kernel, bias: rowColumn(m, fan) };
  if (batchNorm) conv.bn = { gamma: rowColumn(m, fan + 1), beta: rowColumn(m, fan + 2), runningMean: rowColumn(m, fan + 3), runningVar: rowColumn(m, fan + 4) };
  return conv;
}
