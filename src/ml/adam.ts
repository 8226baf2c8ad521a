/**
 * Adam written out over tensors, instead of tfjs's optimizer, so that its whole state (m, v and the step
 * count) is ours: it can be downloaded into a checkpoint and uploaded again bit for bit.
 */
import { tf } from './tf';

/** Kingma & Ba's defaults (also tfjs's and PyTorch's). Fixed: they are part of every checkpoint's meaning. */
export const ADAM_BETA1 = 0.9;
export const ADAM_BETA2 = 0.999;
export const ADAM_EPSILON = 1e-8;

export interface AdamTensors {
  params: tf.Tensor[];
  m: tf.Tensor[];
  v: tf.Tensor[];
}

/**
 * One Adam update; `t` is the 1-based number of this update. Returns new tensors and leaves the inputs
 * alone (call inside `tf.tidy`). The bias corrections are folded into the step size in float64 on the host,
 * as tfjs and PyTorch do, so no extra tensor ops run per parameter.
 */
export function adamUpdate(state: AdamTensors, grads: tf.Tensor[], t: number, learningRate: number): AdamTensors {
  const stepSize = (learningRate * Math.sqrt(1 - Math.pow(ADAM_BETA2, t))) / (1 - Math.pow(ADAM_BETA1, t));
  const out: AdamTensors = { params: [], m: [], v: [] };
  state.params.forEach((p, i) => {
    const g = grads[i];
    const m = state.m[i];
    const v = state.v[i];
    if (!g || !m || !v) throw new Error(`adamUpdate: missing state for tensor ${i}`);
    const m1 = tf.add(tf.mul(m, ADAM_BETA1), tf.mul(g, 1 - ADAM_BETA1));
    const v1 = tf.add(tf.mul(v, ADAM_BETA2), tf.mul(tf.square(g), 1 - ADAM_BETA2));
    const update = tf.div(tf.mul(m1, stepSize), tf.add(tf.sqrt(v1), ADAM_EPSILON));
    out.params.push(tf.sub(p, update));
    out.m.push(m1);
    out.v.push(v1);
  });
  return out;
}
