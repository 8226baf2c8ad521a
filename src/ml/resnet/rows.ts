/**
 * The rows view of a ResNet, for a WeightFormer: every layer is a matrix with one row per output unit, so a
 * Transformer can read a teacher's units as tokens and emit a student's.
 *
 * Conv row `co` (output channel): the kernel's `[:, :, :, co]` in (a, b, ci) order — k·k·cin values —, the
 * bias, then gamma, beta, running mean, running variance (the CNN module's conv row, BN always present).
 * Head row `o` (class): column `o` of `w` (width values), then the bias.
 * Layers in `resnetConvs` order (stem, then per block conv1, conv2), the head last. `role` says which rows
 * share the residual stream's channel order (stem and conv2 rows, and the head's columns) and which are a
 * block's inner channels (conv1 rows).
 */
import { InputError } from '../../util/errors';
import { tf } from '../tf';
import type { ResnetArchitecture, ResnetParams } from './architecture';
import { checkResnetArchitecture, checkResnetShapes, initResnet, resnetConvs } from './architecture';
import type { ResnetConvTensors, ResnetTensors } from './forward';

export interface ResnetRowsLayer {
  kind: 'conv' | 'dense';
  role: 'stem' | 'conv1' | 'conv2' | 'head';
  /** Output units: channels of a conv, classes of the head. */
  rows: number;
  rowSize: number;
}

/** BN entries appended to each conv row, in this order. */
const BN_FIELDS = ['gamma', 'beta', 'runningMean', 'runningVar'] as const;

/** One entry per layer (`resnetConvs` order, then the head) with its row count and row length. */
export function resnetRowsLayout(arch: ResnetArchitecture): ResnetRowsLayer[] {
  checkResnetArchitecture(arch);
  const { kernelSize: k, width } = arch;
  const conv = (role: 'stem' | 'conv1' | 'conv2', cin: number): ResnetRowsLayer => ({ kind: 'conv', role, rows: width, rowSize: k * k * cin + 1 + BN_FIELDS.length });
  const layers = [conv('stem', arch.inputShape[2])];
  for (let b = 0; b < arch.stages * arch.blocksPerStage; b++) layers.push(conv('conv1', width), conv('conv2', width));
  layers.push({ kind: 'dense', role: 'head', rows: arch.outputSize, rowSize: width + 1 });
  return layers;
}

/** The rows of every layer, each a row-major rows × rowSize matrix (of any values: gradients too). */
export function resnetToRows(p: ResnetParams): Float32Array[] {
  checkResnetShapes(p);
  const out: Float32Array[] = [];
  for (const c of resnetConvs(p)) {
    const fan = c.kernelSize * c.kernelSize * c.inChannels;
    const rowSize = fan + 1 + BN_FIELDS.length;
    const m = new Float32Array(c.outChannels * rowSize);
    for (let co = 0; co < c.outChannels; co++) {
      const row = co * rowSize;
      for (let t = 0; t < fan; t++) m[row + t] = c.kernel[t * c.outChannels + co] ?? 0;
      m[row + fan] = c.bias[co] ?? 0;
      BN_FIELDS.forEach((f, i) => (m[row + fan + 1 + i] = c.bn[f][co] ?? 0));
    }
    out.push(m);
  }
  const l = p.head;
  const rowSize = l.inSize + 1;
  const m = new Float32Array(l.outSize * rowSize);
  for (let o = 0; o < l.outSize; o++) {
    for (let i = 0; i < l.inSize; i++) m[o * rowSize + i] = l.w[i * l.outSize + o] ?? 0;
    m[o * rowSize + l.inSize] = l.b[o] ?? 0;
  }
  out.push(m);
  return out;
}

function checkRowCount(count: number, layout: ResnetRowsLayer[]): void {
  if (count !== layout.length) throw new InputError(`got ${count} row matrices, the architecture has ${layout.length} layers`);
}

/** The inverse of `resnetToRows` (exact): parameters of `arch` from its rows. */
export function rowsToResnetParams(rows: Float32Array[], arch: ResnetArchitecture): ResnetParams {
  const layout = resnetRowsLayout(arch);
  checkRowCount(rows.length, layout);
  layout.forEach((layer, l) => {
    const m = rows[l];
    if (!m || m.length !== layer.rows * layer.rowSize) {
      throw new InputError(`layer ${l} rows have ${m?.length ?? 0} values, expected ${layer.rows} × ${layer.rowSize}`);
    }
  });
  const p = initResnet(arch, 0); // shapes only; every value is overwritten
  const convs = resnetConvs(p);
  convs.forEach((c, l) => {
    const m = rows[l] as Float32Array;
    const fan = c.kernelSize * c.kernelSize * c.inChannels;
    const rowSize = fan + 1 + BN_FIELDS.length;
    for (let co = 0; co < c.outChannels; co++) {
      const row = co * rowSize;
      for (let t = 0; t < fan; t++) c.kernel[t * c.outChannels + co] = m[row + t] ?? 0;
      c.bias[co] = m[row + fan] ?? 0;
      BN_FIELDS.forEach((f, i) => (c.bn[f][co] = m[row + fan + 1 + i] ?? 0));
    }
  });
  const m = rows[convs.length] as Float32Array;
  const l = p.head;
  const rowSize = l.inSize + 1;
  for (let o = 0; o < l.outSize; o++) {
    for (let i = 0; i < l.inSize; i++) l.w[i * l.outSize + o] = m[o * rowSize + i] ?? 0;
    l.b[o] = m[o * rowSize + l.inSize] ?? 0;
  }
  return p;
}

/**
 * The tensor version of `rowsToResnetParams`, built from slices, transposes and reshapes only, so
 * gradients flow from the logits back into `rows` (a generator's output). The caller disposes the result
 * (or runs it inside `tf.tidy`). Generated running variances are used as they come: eval mode needs them ≥ 0.
 */
export function rowsToResnetTensors(rows: tf.Tensor2D[], arch: ResnetArchitecture): ResnetTensors {
  const layout = resnetRowsLayout(arch);
  checkRowCount(rows.length, layout);
  const matrices = layout.map((layer, l) => {
    const m = rows[l];
    if (!m || m.shape[0] !== layer.rows || m.shape[1] !== layer.rowSize) {
      throw new InputError(`layer ${l} rows are ${m?.shape.join('×') ?? 'missing'}, expected ${layer.rows}×${layer.rowSize}`);
    }
    return m;
  });
  const column = (m: tf.Tensor2D, at: number): tf.Tensor1D => tf.reshape(tf.slice(m, [0, at], [m.shape[0], 1]), [m.shape[0]]);
  const { kernelSize: k, width } = arch;
  const conv = (l: number, cin: number): ResnetConvTensors => {
    const m = matrices[l] as tf.Tensor2D;
    const fan = k * k * cin;
    return {
      kernel: tf.reshape(tf.transpose(tf.slice(m, [0, 0], [width, fan])), [k, k, cin, width]) as tf.Tensor4D,
      bias: column(m, fan),
      bn: { gamma: column(m, fan + 1), beta: column(m, fan + 2), runningMean: column(m, fan + 3), runningVar: column(m, fan + 4) },
    };
  };
  let l = 1;
  const stages: ResnetTensors['stages'] = [];
  for (let s = 0; s < arch.stages; s++) {
    const stage: ResnetTensors['stages'][number] = [];
    for (let b = 0; b < arch.blocksPerStage; b++) {
      stage.push({ conv1: conv(l, width), conv2: conv(l + 1, width) });
      l += 2;
    }
    stages.push(stage);
  }
  const head = matrices[l] as tf.Tensor2D;
  return {
    inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]],
    stem: conv(0, arch.inputShape[2]),
    stages,
    head: { w: tf.transpose(tf.slice(head, [0, 0], [arch.outputSize, width])), b: column(head, width) },
  };
}
