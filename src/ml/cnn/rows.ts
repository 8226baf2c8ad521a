/**
 * The rows view of a CNN, for a WeightFormer: every layer is a matrix with one row per output unit, so a
 * Transformer can read a teacher's units as tokens and emit a student's.
 *
 * Conv block row `co` (output channel): the kernel's `[:, :, :, co]` in (a, b, ci) order — kh·kw·cin
 * values — then the bias, then with BN gamma, beta, running mean, running variance.
 * Dense layer row `o` (output unit): column `o` of `w` (inSize values, input order), then the bias.
 * Layers come in order: conv blocks, then dense layers (the output layer last).
 */
import { InputError } from '../../util/errors';
import { tf } from '../tf';
import type { CnnArchitecture, CnnParams } from './architecture';
import { checkCnnArchitecture, checkCnnShapes, cnnFlatSize, initCnn } from './architecture';
import type { CnnTensors } from './forward';

export interface CnnRowsLayer {
  kind: 'conv' | 'dense';
  /** Output units: channels of a conv block, neurons of a dense layer. */
  rows: number;
  rowSize: number;
}

/** BN entries appended to each conv row, in this order. */
const BN_FIELDS = ['gamma', 'beta', 'runningMean', 'runningVar'] as const;

/** One entry per layer (conv blocks, then dense layers) with its row count and row length. */
export function cnnRowsLayout(arch: CnnArchitecture): CnnRowsLayer[] {
  checkCnnArchitecture(arch);
  const k = arch.kernelSize;
  const layers: CnnRowsLayer[] = [];
  let cin = arch.inputShape[2];
  for (const cout of arch.channels) {
    layers.push({ kind: 'conv', rows: cout, rowSize: k * k * cin + 1 + (arch.batchNorm ? BN_FIELDS.length : 0) });
    cin = cout;
  }
  const sizes = [cnnFlatSize(arch), ...arch.hidden, arch.outputSize];
  for (let l = 0; l + 1 < sizes.length; l++) layers.push({ kind: 'dense', rows: sizes[l + 1] ?? 0, rowSize: (sizes[l] ?? 0) + 1 });
  return layers;
}

/** The rows of every layer, each a row-major rows × rowSize matrix (of any values: gradients too). */
export function cnnToRows(p: CnnParams): Float32Array[] {
  checkCnnShapes(p);
  const out: Float32Array[] = [];
  for (const c of p.convs) {
    const fan = c.kernelSize * c.kernelSize * c.inChannels;
    const rowSize = fan + 1 + (c.bn ? BN_FIELDS.length : 0);
    const m = new Float32Array(c.outChannels * rowSize);
    for (let co = 0; co < c.outChannels; co++) {
      const row = co * rowSize;
      for (let t = 0; t < fan; t++) m[row + t] = c.kernel[t * c.outChannels + co] ?? 0;
      m[row + fan] = c.bias[co] ?? 0;
      const bn = c.bn;
      if (bn) BN_FIELDS.forEach((f, i) => (m[row + fan + 1 + i] = bn[f][co] ?? 0));
    }
    out.push(m);
  }
  for (const l of p.dense) {
    const rowSize = l.inSize + 1;
    const m = new Float32Array(l.outSize * rowSize);
    for (let o = 0; o < l.outSize; o++) {
      for (let i = 0; i < l.inSize; i++) m[o * rowSize + i] = l.w[i * l.outSize + o] ?? 0;
      m[o * rowSize + l.inSize] = l.b[o] ?? 0;
    }
    out.push(m);
  }
  return out;
}

function checkRowCount(count: number, layout: CnnRowsLayer[]): void {
  if (count !== layout.length) throw new InputError(`got ${count} row matrices, the architecture has ${layout.length} layers`);
}

/** The inverse of `cnnToRows` (exact): parameters of `arch` from its rows. */
export function rowsToCnnParams(rows: Float32Array[], arch: CnnArchitecture): CnnParams {
  const layout = cnnRowsLayout(arch);
  checkRowCount(rows.length, layout);
  const p = initCnn(arch, 0); // shapes only; every value is overwritten
  layout.forEach((layer, l) => {
    const m = rows[l];
    if (!m || m.length !== layer.rows * layer.rowSize) {
      throw new InputError(`layer ${l} rows have ${m?.length ?? 0} values, expected ${layer.rows} × ${layer.rowSize}`);
    }
  });
  p.convs.forEach((c, b) => {
    const m = rows[b] as Float32Array;
    const fan = c.kernelSize * c.kernelSize * c.inChannels;
    const rowSize = layout[b]?.rowSize ?? 0;
    for (let co = 0; co < c.outChannels; co++) {
      const row = co * rowSize;
      for (let t = 0; t < fan; t++) c.kernel[t * c.outChannels + co] = m[row + t] ?? 0;
      c.bias[co] = m[row + fan] ?? 0;
      const bn = c.bn;
      if (bn) BN_FIELDS.forEach((f, i) => (bn[f][co] = m[row + fan + 1 + i] ?? 0));
    }
  });
  p.dense.forEach((l, d) => {
    const m = rows[p.convs.length + d] as Float32Array;
    const rowSize = l.inSize + 1;
    for (let o = 0; o < l.outSize; o++) {
      for (let i = 0; i < l.inSize; i++) l.w[i * l.outSize + o] = m[o * rowSize + i] ?? 0;
      l.b[o] = m[o * rowSize + l.inSize] ?? 0;
    }
  });
  return p;
}

/**
 * The tensor version of `rowsToCnnParams`, built from slices, transposes and reshapes only, so gradients
 * flow from the logits back into `rows` (a generator's output). The caller disposes the result (or runs
 * it inside `tf.tidy`). Generated running variances are used as they come: eval mode needs them ≥ 0.
 */
export function rowsToCnnTensors(rows: tf.Tensor2D[], arch: CnnArchitecture): CnnTensors {
  const layout = cnnRowsLayout(arch);
  checkRowCount(rows.length, layout);
  const matrices = layout.map((layer, l) => {
    const m = rows[l];
    if (!m || m.shape[0] !== layer.rows || m.shape[1] !== layer.rowSize) {
      throw new InputError(`layer ${l} rows are ${m?.shape.join('×') ?? 'missing'}, expected ${layer.rows}×${layer.rowSize}`);
    }
    return m;
  });
  const column = (m: tf.Tensor2D, at: number): tf.Tensor1D => tf.reshape(tf.slice(m, [0, at], [m.shape[0], 1]), [m.shape[0]]);
  const k = arch.kernelSize;
  let cin = arch.inputShape[2];
  const convs: CnnTensors['convs'] = arch.channels.map((cout, b) => {
    const m = matrices[b] as tf.Tensor2D;
    const fan = k * k * cin;
    const kernel = tf.reshape(tf.transpose(tf.slice(m, [0, 0], [cout, fan])), [k, k, cin, cout]) as tf.Tensor4D;
    cin = cout;
    const block: CnnTensors['convs'][number] = { kernel, bias: column(m, fan) };
    if (arch.batchNorm) {
      block.bn = { gamma: column(m, fan + 1), beta: column(m, fan + 2), runningMean: column(m, fan + 3), runningVar: column(m, fan + 4) };
    }
    return block;
  });
  const dense: CnnTensors['dense'] = matrices.slice(arch.channels.length).map((m) => {
    const [outSize = 0, rowSize = 0] = m.shape;
    return { w: tf.transpose(tf.slice(m, [0, 0], [outSize, rowSize - 1])), b: column(m, rowSize - 1) };
  });
  return { inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]], pool: arch.pool, convs, dense };
}
