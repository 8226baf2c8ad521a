/**
 * A "plain port" of the seed prototype's WeightFormer forward pass, kept only so that the kernel-dispatch
 * saving of the batched model (src/ml/weightformer/model.ts) is measured in the same run, not claimed.
 *
 * It computes the same function as `studentRows` (same parameters, same maths), written the way the
 * prototype was: a loop over teachers for the input adapters, the norms, the projections and the MLPs; set
 * attention per layer and per head; axial attention per teacher and per head; pooling as a sum of per-teacher
 * tensors; and (in `plainMetaStep`) Adam per parameter tensor. Every loop body is one or a few small kernels,
 * which is what made the prototype dispatch-bound on a GPU.
 *
 * Caveat on the count: the per-teacher and per-head pieces are sliced out of the batched inputs (tokens,
 * qkv) and joined again, so Slice / Concat kernels and their gradients (PadV2, SplitV) — about 800 of the
 * 3,513 "computing" kernels at the prototype's shape (bench-2026-12-01-vm-0132.json) — are glue a prototype
 * holding per-teacher tensors need not have dispatched. Read the kernel ratio as an upper bound.
 *
 * Supports the MLP family with the options that do not change the block structure (no mixing head, no BN
 * variance columns); anything else is refused rather than silently computed differently.
 */
import type { ArchitectureSpec } from '../src/spec/types';
import { adamUpdate } from '../src/ml/adam';
import { tf } from '../src/ml/tf';
import { mlpLoss, type LossBatch } from '../src/ml/train';
import { rowsToMlpTensors } from '../src/ml/weightformer/family';
import { gelu, norm, param, type ModelConstants, type Params, type SetTensors } from '../src/ml/weightformer/model';
import { tokenSize } from '../src/ml/weightformer/tokens';

export function plainStudentRows(p: Params, c: ModelConstants, s: SetTensors): tf.Tensor2D[] {
  const { layout, config } = c;
  if (config.mixing) throw new Error('plain port: the mixing head is not ported');
  if (layout.layers.some((L) => L.varianceColumn !== undefined || L.inputUnit !== undefined)) throw new Error('plain port: MLP students only');
  const { d, heads } = config;
  const dh = d / heads;
  const T = s.T;
  const R = layout.totalRows;

  // Input adapters and embeddings, teacher by teacher and layer by layer.
  let h: tf.Tensor2D[] = [];
  for (let t = 0; t < T; t++) {
    const parts = layout.layers.map((L, l) => {
      const tokens = s.tokens[l] as tf.Tensor2D;
      const x = tf.slice(tokens, [t * L.rows, 0], [L.rows, tokenSize(L, config)]);
      let z: tf.Tensor = tf.add(tf.matMul(x, param(p, `in.${l}.w`) as tf.Tensor2D), param(p, `in.${l}.b`));
      if (config.contentGate) z = tf.mul(z, param(p, 'gate'));
      const layerEmb = tf.slice(param(p, 'emb.layer'), [l, 0], [1, d]);
      const rowEmb = tf.slice(param(p, 'emb.row'), [L.rowOffset, 0], [L.rows, d]);
      return tf.add(tf.add(z, rowEmb), layerEmb) as tf.Tensor2D;
    });
    h.push(parts.length === 1 ? (parts[0] as tf.Tensor2D) : (tf.concat(parts, 0) as tf.Tensor2D));
  }

  for (let i = 0; i < config.blocks; i++) {
    // Set attention: for each layer and head, the T teachers' tokens of each row attend to each other.
    const setQkv: tf.Tensor2D[] = h.map((ht) => tf.matMul(norm(ht), param(p, `block.${i}.set.qkv`) as tf.Tensor2D));
    const setOut: tf.Tensor2D[][] = h.map(() => []); // per teacher, per layer: [rows, d]
    layout.layers.forEach((L) => {
      const headOuts: tf.Tensor[] = []; // per head: [rows, T, dh]
      for (let k = 0; k < heads; k++) {
        // tf.stack has no gradient in tfjs: a [rows, 1, dh] slice per teacher, concatenated on axis 1.
        const pick = (qkv: tf.Tensor2D, part: number): tf.Tensor => tf.reshape(tf.slice(qkv, [L.rowOffset, part * d + k * dh], [L.rows, dh]), [L.rows, 1, dh]);
        const q = tf.concat(setQkv.map((x) => pick(x, 0)), 1) as tf.Tensor3D; // [rows, T, dh]
        const kk = tf.concat(setQkv.map((x) => pick(x, 1)), 1) as tf.Tensor3D;
        const v = tf.concat(setQkv.map((x) => pick(x, 2)), 1) as tf.Tensor3D;
        const a = tf.softmax(tf.mul(tf.matMul(q, kk, false, true), 1 / Math.sqrt(dh)));
        headOuts.push(tf.matMul(a, v));
      }
      const joined = tf.concat(headOuts, 2); // [rows, T, d]
      for (let t = 0; t < T; t++) setOut[t]?.push(tf.reshape(tf.slice(joined, [0, t, 0], [L.rows, 1, d]), [L.rows, d]) as tf.Tensor2D);
    });
    h = h.map((ht, t) => {
      const o = (setOut[t] ?? []).length === 1 ? (setOut[t]?.[0] as tf.Tensor2D) : (tf.concat(setOut[t] ?? [], 0) as tf.Tensor2D);
      return tf.add(ht, tf.matMul(o, param(p, `block.${i}.set.out`) as tf.Tensor2D)) as tf.Tensor2D;
    });

    // Axial attention: each teacher's rows attend to each other, head by head.
    h = h.map((ht) => {
      const qkv = tf.matMul(norm(ht), param(p, `block.${i}.row.qkv`) as tf.Tensor2D);
      const headOuts: tf.Tensor[] = [];
      for (let k = 0; k < heads; k++) {
        const q = tf.slice(qkv, [0, k * dh], [R, dh]) as tf.Tensor2D;
        const kk = tf.slice(qkv, [0, d + k * dh], [R, dh]) as tf.Tensor2D;
        const v = tf.slice(qkv, [0, 2 * d + k * dh], [R, dh]) as tf.Tensor2D;
        let scores = tf.mul(tf.matMul(q, kk, false, true), 1 / Math.sqrt(dh));
        if (c.mask) scores = tf.add(scores, c.mask);
        headOuts.push(tf.matMul(tf.softmax(scores) as tf.Tensor2D, v));
      }
      return tf.add(ht, tf.matMul(tf.concat(headOuts, 1) as tf.Tensor2D, param(p, `block.${i}.row.out`) as tf.Tensor2D)) as tf.Tensor2D;
    });

    // MLP, teacher by teacher.
    h = h.map((ht) => {
      const u = gelu(tf.add(tf.matMul(norm(ht), param(p, `block.${i}.mlp.w1`) as tf.Tensor2D), param(p, `block.${i}.mlp.b1`)));
      return tf.add(ht, tf.add(tf.matMul(u as tf.Tensor2D, param(p, `block.${i}.mlp.w2`) as tf.Tensor2D), param(p, `block.${i}.mlp.b2`))) as tf.Tensor2D;
    });
  }

  let pooled: tf.Tensor = norm(h[0] as tf.Tensor2D);
  for (let t = 1; t < T; t++) pooled = tf.add(pooled, norm(h[t] as tf.Tensor2D));
  pooled = tf.div(pooled, T);
  return layout.layers.map((L, l) => {
    const rows = tf.slice(pooled, [L.rowOffset, 0], [L.rows, d]) as tf.Tensor2D;
    const delta = tf.add(tf.matMul(rows, param(p, `out.${l}.w`) as tf.Tensor2D), param(p, `out.${l}.b`));
    return tf.add(s.base[l] as tf.Tensor2D, tf.mul(delta, c.scale[l] as tf.Tensor2D)) as tf.Tensor2D;
  });
}

/**
 * One plain-port meta-step: the MLP meta-loss through `plainStudentRows`, then Adam tensor by tensor (the
 * prototype's optimiser loop). Returns new tensors; the caller disposes the old ones.
 */
export function plainMetaStep(
  names: string[],
  state: { params: tf.Tensor[]; m: tf.Tensor[]; v: tf.Tensor[] },
  c: ModelConstants,
  set: SetTensors,
  arch: ArchitectureSpec,
  batch: LossBatch,
  t: number,
  learningRate: number,
): { loss: tf.Scalar; params: tf.Tensor[]; m: tf.Tensor[]; v: tf.Tensor[] } {
  return tf.tidy(() => {
    const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) => {
      const p: Params = {};
      names.forEach((n, i) => (p[n] = ps[i] as tf.Tensor));
      return mlpLoss(rowsToMlpTensors(plainStudentRows(p, c, set), c.layout, arch.activation), batch);
    })(state.params);
    const next = adamUpdate({ params: state.params, m: state.m, v: state.v }, grads, t, learningRate);
    return { loss: value, params: next.params, m: next.m, v: next.v };
  });
}
