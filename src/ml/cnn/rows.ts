/**
 * The rows view of a CNN, for a WeightFormer: every layer is a matrix with one row per output unit, so a
 * Transformer can read a teacher's units as tokens and emit a student's.
 *
 * Conv block row `co` (output channel): the kernel's `[:, :, :, co]` in (a, b, ci) order — kh·kw·cin
 * values — then the bias, then with BN gamma, beta, running mean, running variance.
 * Dense layer row `o` (output unit): column `o` of `w` (inSize values, input order), then the bias.
 * Layers come in order: conv blocks, then dense layers (the output layer last).
 */
import { BN_ROW_FIELDS, checkRowArrays, checkRowTensors, convFromRowMatrix, convFromRowTensor, convToRowMatrix, denseFromRowMatrix, denseFromRowTensor, denseToRowMatrix } from '../rows';
import type { tf } from '../tf';
import type { CnnArchitecture, CnnParams } from './architecture';
import { checkCnnArchitecture, checkCnnShapes, cnnFlatSize, initCnn } from './architecture';
import type { CnnTensors } from './forward';

export interface CnnRowsLayer {
  kind: 'conv' | 'dense';
  /** Output units: channels of a conv block, neurons of a dense layer. */
  rows: number;
  rowSize: number;
}

/** One entry per layer (conv blocks, then dense layers) with its row count and row length. */
export function cnnRowsLayout(arch: CnnArchitecture): CnnRowsLayer[] {
  checkCnnArchitecture(arch);
  const k = arch.kernelSize;
  const layers: CnnRowsLayer[] = [];
  let cin = arch.inputShape[2];
  for (const cout of arch.channels) {
    layers.push({ kind: 'conv', rows: cout, rowSize: k * k * cin + 1 + (arch.batchNorm ? BN_ROW_FIELDS.length : 0) });
    cin = cout;
  }
  const sizes = [cnnFlatSize(arch), ...arch.hidden, arch.outputSize];
  for (let l = 0; l + 1 < sizes.length; l++) layers.push({ kind: 'dense', rows: sizes[l + 1] ?? 0, rowSize: (sizes[l] ?? 0) + 1 });
  return layers;
}

/** The rows of every layer, each a row-major rows × rowSize matrix (of any values: gradients too). */
export function cnnToRows(p: CnnParams): Float32Array[] {
  checkCnnShapes(p);
  return [...p.convs.map(convToRowMatrix), ...p.dense.map(denseToRowMatrix)];
}

/** The inverse of `cnnToRows` (exact): parameters of `arch` from its rows. */
export function rowsToCnnParams(rows: Float32Array[], arch: CnnArchitecture): CnnParams {
  checkRowArrays(rows, cnnRowsLayout(arch));
  const p = initCnn(arch, 0); // shapes only; every value is overwritten
  p.convs.forEach((c, b) => convFromRowMatrix(rows[b] as Float32Array, c));
  p.dense.forEach((l, d) => denseFromRowMatrix(rows[p.convs.length + d] as Float32Array, l));
  return p;
}

/**
 * The tensor version of `rowsToCnnParams`, built from slices, transposes and reshapes only, so gradients
 * flow from the logits back into `rows` (a generator's output). The caller disposes the result (or runs
 * it inside `tf.tidy`). Generated running variances are used as they come: eval mode needs them ≥ 0.
 */
export function rowsToCnnTensors(rows: tf.Tensor2D[], arch: CnnArchitecture): CnnTensors {
  const matrices = checkRowTensors(rows, cnnRowsLayout(arch));
  let cin = arch.inputShape[2];
  const convs: CnnTensors['convs'] = arch.channels.map((cout, b) => {
    const block = convFromRowTensor(matrices[b] as tf.Tensor2D, arch.kernelSize, cin, cout, arch.batchNorm);
    cin = cout;
    return block;
  });
  const dense: CnnTensors['dense'] = matrices.slice(arch.channels.length).map(denseFromRowTensor);
  return { inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]], pool: arch.pool, convs, dense };
}
