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
import { BN_ROW_FIELDS, checkRowArrays, checkRowTensors, convFromRowMatrix, convFromRowTensor, convToRowMatrix, denseFromRowMatrix, denseFromRowTensor, denseToRowMatrix } from '../rows';
import type { tf } from '../tf';
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

/** One entry per layer (`resnetConvs` order, then the head) with its row count and row length. */
export function resnetRowsLayout(arch: ResnetArchitecture): ResnetRowsLayer[] {
  checkResnetArchitecture(arch);
  const { kernelSize: k, width } = arch;
  const conv = (role: 'stem' | 'conv1' | 'conv2', cin: number): ResnetRowsLayer => ({ kind: 'conv', role, rows: width, rowSize: k * k * cin + 1 + BN_ROW_FIELDS.length });
  const layers = [conv('stem', arch.inputShape[2])];
  for (let b = 0; b < arch.stages * arch.blocksPerStage; b++) layers.push(conv('conv1', width), conv('conv2', width));
  layers.push({ kind: 'dense', role: 'head', rows: arch.outputSize, rowSize: width + 1 });
  return layers;
}

/** The rows of every layer, each a row-major rows × rowSize matrix (of any values: gradients too). */
export function resnetToRows(p: ResnetParams): Float32Array[] {
  checkResnetShapes(p);
  return [...resnetConvs(p).map(convToRowMatrix), denseToRowMatrix(p.head)];
}

/** The inverse of `resnetToRows` (exact): parameters of `arch` from its rows. */
export function rowsToResnetParams(rows: Float32Array[], arch: ResnetArchitecture): ResnetParams {
  checkRowArrays(rows, resnetRowsLayout(arch));
  const p = initResnet(arch, 0); // shapes only; every value is overwritten
  const convs = resnetConvs(p);
  convs.forEach((c, l) => convFromRowMatrix(rows[l] as Float32Array, c));
  denseFromRowMatrix(rows[convs.length] as Float32Array, p.head);
  return p;
}

/**
 * The tensor version of `rowsToResnetParams`, built from slices, transposes and reshapes only, so
 * gradients flow from the logits back into `rows` (a generator's output). The caller disposes the result
 * (or runs it inside `tf.tidy`). Generated running variances are used as they come: eval mode needs them ≥ 0.
 */
export function rowsToResnetTensors(rows: tf.Tensor2D[], arch: ResnetArchitecture): ResnetTensors {
  const matrices = checkRowTensors(rows, resnetRowsLayout(arch));
  const { kernelSize: k, width } = arch;
  const conv = (l: number, cin: number): ResnetConvTensors => convFromRowTensor(matrices[l] as tf.Tensor2D, k, cin, width, true) as ResnetConvTensors;
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
  return {
    inputShape: [arch.inputShape[0], arch.inputShape[1], arch.inputShape[2]],
    stem: conv(0, arch.inputShape[2]),
    stages,
    head: denseFromRowTensor(matrices[l] as tf.Tensor2D),
  };
}
