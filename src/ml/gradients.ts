/**
 * Gradient functions for the kernels our models differentiate through.
 *
 * Why this file exists: `@tensorflow/tfjs-core` on its own registers *no* gradients. Its Node bundle
 * (`dist/tf-core.node.js`) leaves them out, and `dist/register_all_gradients.js` is an ES module with
 * extension-less imports that Node cannot load. The union package `@tensorflow/tfjs` bundles them, but it
 * drags in layers, converter, data and webgl. So we register the ones we need, ported from tfjs-core 4.22
 * (`src/gradients/*_grad.ts`, Apache-2.0, Copyright Google LLC), each one only if nobody registered it
 * before us (e.g. `@tensorflow/tfjs-node`, which loads the union package).
 *
 * Every gradient here is checked against finite differences in `test/ml-gradients.test.ts`; add a case
 * there when you add one here.
 *
 * Two deliberate changes: the Tile gradient is one reshape and sum for any rank (tfjs's loops over
 * slices and stops at rank 4). And tfjs's BatchMatMul gradient does not reduce over broadcast batch dimensions
 * (a 3-D × 2-D `matMul` gets a 3-D gradient for its 2-D operand). Ours sums them away. And the matMul
 * gradients transpose explicitly on wasm, where transposed-operand matMuls are 5–15× slower (`matmul.ts`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { GradConfig, NamedAttrMap, Tensor } from '@tensorflow/tfjs-core';
import { matMulT } from './matmul';

/** `saved[i]`, asserting that tfjs saved it (noUncheckedIndexedAccess). */
function savedAt(saved: Tensor[], i: number): Tensor {
  const t = saved[i];
  if (t === undefined) throw new Error(`gradient: saved tensor ${i} missing`);
  return t;
}

function single(dy: Tensor | Tensor[]): Tensor {
  if (Array.isArray(dy)) throw new Error('gradient: expected one upstream gradient');
  return dy;
}

/** Sums a broadcast gradient back to the operand's shape. */
function reduceToShape(grad: Tensor, shape: number[]): Tensor {
  if (tf.util.arraysEqual(grad.shape, shape)) return grad;
  const extra = grad.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < grad.rank; i++) {
    if (i < extra || (shape[i - extra] === 1 && grad.shape[i] !== 1)) axes.push(i);
  }
  return tf.reshape(axes.length > 0 ? tf.sum(grad, axes) : grad, shape);
}

/** Gradient of a broadcasting binary op: reduce each partial over the axes its operand was broadcast. */
function broadcastBinary(
  kernelName: string,
  derA: (dy: Tensor, a: Tensor, b: Tensor) => Tensor,
  derB: (dy: Tensor, a: Tensor, b: Tensor) => Tensor,
): GradConfig {
  return {
    kernelName,
    inputsToSave: ['a', 'b'],
    gradFunc: (dyIn, saved) => {
      const dy = single(dyIn);
      const a = savedAt(saved, 0);
      const b = savedAt(saved, 1);
      return {
        a: () => reduceToShape(derA(dy, a, b), a.shape),
        b: () => reduceToShape(derB(dy, a, b), b.shape),
      };
    },
  };
}

function unary(
  kernelName: string,
  save: 'input' | 'output',
  der: (dy: Tensor, saved: Tensor, attrs: NamedAttrMap) => Tensor,
): GradConfig {
  return {
    kernelName,
    ...(save === 'input' ? { inputsToSave: ['x'] } : { outputsToSave: [true] }),
    gradFunc: (dy, saved, attrs) => ({ x: () => der(single(dy), savedAt(saved, 0), attrs) }),
  };
}

/** Shape of `x` with each reduced axis kept as size 1, so `dy` can broadcast back over `x`. */
function keptDimsShape(x: Tensor, axis: unknown): number[] {
  const axes = tf.util.parseAxisParam(axis as number | number[], x.shape);
  const shape = x.shape.slice();
  for (const ax of axes) shape[ax] = 1;
  return shape;
}

const f32 = (t: Tensor): Tensor => tf.cast(t, 'float32');

const GRADIENTS: GradConfig[] = [
  {
    kernelName: tf.BatchMatMul,
    inputsToSave: ['a', 'b'],
    gradFunc: (dyIn, saved, attrs) => {
      const dy = single(dyIn);
      const a = savedAt(saved, 0);
      const b = savedAt(saved, 1);
      const { transposeA, transposeB } = attrs as { transposeA: boolean; transposeB: boolean };
      let da: () => Tensor;
      let db: () => Tensor;
      if (!transposeA && !transposeB) {
        da = () => matMulT(dy, b, false, true);
        db = () => matMulT(a, dy, true, false);
      } else if (!transposeA && transposeB) {
        da = () => matMulT(dy, b, false, false);
        db = () => matMulT(dy, a, true, false);
      } else if (transposeA && !transposeB) {
        da = () => matMulT(b, dy, false, true);
        db = () => matMulT(a, dy, false, false);
      } else {
        da = () => matMulT(b, dy, true, true);
        db = () => matMulT(dy, a, true, true);
      }
      return { a: () => reduceToShape(da(), a.shape), b: () => reduceToShape(db(), b.shape) };
    },
  },
  broadcastBinary(tf.Add, (dy) => dy, (dy) => dy),
  broadcastBinary(tf.Sub, (dy) => dy, (dy) => tf.neg(dy)),
  broadcastBinary(tf.Multiply, (dy, _a, b) => tf.mul(dy, f32(b)), (dy, a) => tf.mul(dy, f32(a))),
  broadcastBinary(
    tf.RealDiv,
    (dy, _a, b) => tf.div(dy, f32(b)),
    (dy, a, b) => tf.neg(tf.div(tf.mul(dy, f32(a)), f32(tf.square(b)))),
  ),
  broadcastBinary(
    tf.SquaredDifference,
    (dy, a, b) => tf.mul(dy, tf.mul(tf.scalar(2), tf.sub(a, b))),
    (dy, a, b) => tf.mul(dy, tf.mul(tf.scalar(2), tf.sub(b, a))),
  ),
  broadcastBinary(
    tf.Maximum,
    (dy, a, b) => tf.mul(dy, f32(tf.greaterEqual(a, b))),
    (dy, a, b) => tf.mul(dy, f32(tf.less(a, b))),
  ),
  {
    kernelName: tf.AddN,
    saveAllInputs: true,
    gradFunc: (dyIn, saved) => {
      const dy = single(dyIn);
      const ders: Record<string, () => Tensor> = {};
      saved.forEach((_, i) => {
        ders[i] = () => tf.clone(dy);
      });
      return ders;
    },
  },
  { kernelName: tf.Neg, gradFunc: (dy) => ({ x: () => tf.neg(single(dy)) }) },
  { kernelName: tf.Identity, gradFunc: (dy) => ({ x: () => f32(single(dy)) }) },
  { kernelName: tf.Cast, gradFunc: (dy) => ({ x: () => tf.clone(single(dy)) }) },
  unary(tf.Sum, 'input', (dy, x, attrs) =>
    tf.mul(tf.reshape(dy, keptDimsShape(x, attrs['axis'])), tf.ones(x.shape, 'float32'))),
  unary(tf.Mean, 'input', (dy, x, attrs) => {
    const kept = keptDimsShape(x, attrs['axis']);
    const reduceSize = tf.util.sizeFromShape(x.shape) / tf.util.sizeFromShape(kept);
    return tf.div(tf.mul(tf.reshape(dy, kept), tf.ones(x.shape, 'float32')), reduceSize);
  }),
  unary(tf.Reshape, 'input', (dy, x) => tf.reshape(dy, x.shape)),
  {
    kernelName: tf.ExpandDims,
    inputsToSave: ['input'],
    gradFunc: (dy, saved) => ({ input: () => tf.reshape(single(dy), savedAt(saved, 0).shape) }),
  },
  {
    kernelName: tf.Transpose,
    gradFunc: (dy, _saved, attrs) => {
      const undo = tf.backend_util.getUndoAxesPermutation(attrs['perm'] as number[]);
      return { x: () => tf.transpose(single(dy), undo) };
    },
  },
  unary(tf.Relu, 'input', (dy, x) => tf.mul(dy, f32(tf.step(x)))),
  unary(tf.Tanh, 'output', (dy, y) => tf.mul(tf.sub(tf.scalar(1), tf.square(y)), dy)),
  unary(tf.Sigmoid, 'output', (dy, y) => tf.mul(dy, tf.mul(y, tf.sub(tf.scalar(1), y)))),
  unary(tf.Exp, 'output', (dy, y) => tf.mul(dy, y)),
  unary(tf.Log, 'input', (dy, x) => tf.div(dy, f32(x))),
  unary(tf.Square, 'input', (dy, x) => tf.mul(dy, tf.mul(f32(x), 2))),
  unary(tf.Sqrt, 'input', (dy, x) => tf.div(dy, tf.mul(tf.sqrt(f32(x)), 2))),
  unary(tf.Rsqrt, 'input', (dy, x) => tf.neg(tf.div(dy, tf.mul(tf.pow(x, 1.5), 2)))),
  unary(tf.Erf, 'input', (dy, x) => tf.mul(dy, tf.mul(tf.exp(tf.neg(tf.square(x))), 2 / Math.sqrt(Math.PI)))),
  {
    kernelName: tf.Softmax,
    outputsToSave: [true],
    gradFunc: (dyIn, saved, attrs) => {
      const dy = single(dyIn);
      const y = savedAt(saved, 0);
      const dyTimesY = tf.mul(dy, y);
      return { logits: () => tf.sub(dyTimesY, tf.mul(tf.sum(dyTimesY, [attrs['dim'] as number], true), y)) };
    },
  },
  {
    kernelName: tf.Concat,
    saveAllInputs: true,
    gradFunc: (dyIn, saved, attrs) => {
      const dy = single(dyIn);
      const axis = tf.util.parseAxisParam(attrs['axis'] as number, savedAt(saved, 0).shape)[0] ?? 0;
      const parts = tf.split(dy, saved.map((t) => t.shape[axis] ?? 0), axis);
      const ders: Record<string, () => Tensor> = {};
      parts.forEach((t, i) => {
        ders[i] = () => t;
      });
      return ders;
    },
  },
  {
    // tf.split: the pieces' gradients side by side (tfjs fills unused outputs' gradients with zeros).
    kernelName: tf.SplitV,
    gradFunc: (dy, _saved, attrs) => ({
      x: () => tf.concat(Array.isArray(dy) ? dy : [dy], attrs['axis'] as number),
    }),
  },
  {
    kernelName: tf.Slice,
    inputsToSave: ['x'],
    gradFunc: (dyIn, saved, attrs) => {
      const dy = single(dyIn);
      const x = savedAt(saved, 0);
      const [begin, size] = tf.slice_util.parseSliceParams(x, attrs['begin'] as number[], attrs['size'] as number[]);
      const paddings: Array<[number, number]> = [];
      for (let i = 0; i < dy.rank; i++) {
        const b = begin?.[i] ?? 0;
        paddings.push([b, (x.shape[i] ?? 0) - b - (size?.[i] ?? 0)]);
      }
      return { x: () => tf.pad(dy, paddings) };
    },
  },
  {
    // Also what `tf.broadcastTo` runs. Output axis i of size reps[i]·s[i] is reps[i] copies of s[i]
    // entries, so splitting each axis into (copy, entry) and summing the copy axes undoes the tiling.
    kernelName: tf.Tile,
    inputsToSave: ['x'],
    gradFunc: (dyIn, saved, attrs) => {
      const dy = single(dyIn);
      const x = savedAt(saved, 0);
      const reps = attrs['reps'] as number[];
      const split = x.shape.flatMap((s, i) => [reps[i] ?? 1, s]);
      const copyAxes = x.shape.map((_, i) => 2 * i);
      return { x: () => tf.reshape(tf.sum(tf.reshape(dy, split), copyAxes), x.shape) };
    },
  },
];

let registered = false;

/** Registers the gradients above (once per process), skipping kernels that already have one. */
export function registerGradients(): void {
  if (registered) return;
  registered = true;
  for (const config of GRADIENTS) {
    if (tf.getGradient(config.kernelName) === undefined) tf.registerGradient(config);
  }
}

/** Kernel names this module provides gradients for (the finite-difference test walks this list). */
export const GRADIENT_KERNELS: readonly string[] = GRADIENTS.map((g) => g.kernelName);
