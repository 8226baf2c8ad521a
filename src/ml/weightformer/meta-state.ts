/**
 * A meta-training checkpoint: the model, Adam's state, the random stream, the curves and the best model
 * so far, so that resuming gives the same final model, bit for bit, as never stopping.
 *
 * File layout (little-endian): "WFMT"  u32 version  utf8 JSON header  blob WeightFormer file
 *   f32 m  f32 v (flat, paramSpecs order)  [f32 best parameters]  sha256 trailer.
 */
import { InputError } from '../../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from '../bytes';
import type { RngState } from '../rng';
import type { LossPoint } from '../train-state';
import { deserializeWeightformer, serializeWeightformer } from './io';
import type { WeightformerModel } from './model';
import { paramCountOf } from './model';
import type { StudentArch } from './tokens';

export interface ValPoint {
  step: number;
  /** Mean top-1 accuracy on the validation data of the students of the validation ensembles. */
  accuracy: number;
}

export interface MetaTrainState {
  version: 1;
  /** Identifies the run (zoo, data, hyper-parameters); resuming under a different one is refused. */
  fingerprint: string;
  /** Meta-steps done. */
  step: number;
  /** The model after `step` steps (its stats and reference are fixed at initialisation); any family. */
  model: WeightformerModel<StudentArch>;
  /** Adam over all parameters as one flat vector in `paramSpecs` order; `t` updates done. */
  adam: { t: number; m: Float32Array; v: Float32Array };
  /** The stream that draws each step's teacher subset and data batch. */
  rngState: RngState;
  curve: LossPoint[];
  valCurve: ValPoint[];
  /** The best model by validation accuracy so far (flat parameters), or null before the first evaluation. */
  best: { step: number; accuracy: number; params: Float32Array } | null;
}

const MAGIC = 'WFMT';
const VERSION = 1;
const WHAT = 'meta-training checkpoint';

interface Header {
  fingerprint: string;
  step: number;
  adamT: number;
  rngState: RngState;
  curve: LossPoint[];
  valCurve: ValPoint[];
  best: { step: number; accuracy: number } | null;
}

export function serializeMetaTrainState(s: MetaTrainState): Uint8Array {
  const n = paramCountOf(s.model.arch, s.model.config);
  if (s.adam.m.length !== n || s.adam.v.length !== n || (s.best && s.best.params.length !== n)) {
    throw new Error(`${WHAT}: optimiser state does not match the model`);
  }
  const header: Header = {
    fingerprint: s.fingerprint,
    step: s.step,
    adamT: s.adam.t,
    rngState: s.rngState,
    curve: s.curve,
    valCurve: s.valCurve,
    best: s.best ? { step: s.best.step, accuracy: s.best.accuracy } : null,
  };
  const out = new ByteWriter();
  out.ascii(MAGIC);
  out.u32(VERSION);
  out.utf8(JSON.stringify(header));
  out.blob(serializeWeightformer(s.model));
  out.f32Array(s.adam.m);
  out.f32Array(s.adam.v);
  if (s.best) out.f32Array(s.best.params);
  return out.finishWithChecksum();
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;

export function deserializeMetaTrainState(bytes: Uint8Array): MetaTrainState {
  const r = openContainer(bytes, { magic: MAGIC, version: VERSION, what: WHAT });
  const h = readJsonHeader<Header>(r, WHAT);
  if (
    typeof h !== 'object' || h === null ||
    typeof h.fingerprint !== 'string' ||
    !isCount(h.step) || h.adamT !== h.step ||
    !Array.isArray(h.rngState) || !Array.isArray(h.curve) || !Array.isArray(h.valCurve) ||
    h.curve.length !== h.step ||
    (h.best !== null && (typeof h.best !== 'object' || !isCount(h.best.step) || typeof h.best.accuracy !== 'number'))
  ) {
    throw new InputError(`${WHAT}: inconsistent header`);
  }
  const model = deserializeWeightformer(r.blob());
  const n = paramCountOf(model.arch, model.config);
  const m = r.f32Array(n);
  const v = r.f32Array(n);
  const best = h.best ? { step: h.best.step, accuracy: h.best.accuracy, params: r.f32Array(n) } : null;
  r.expectEnd();
  return { version: 1, fingerprint: h.fingerprint, step: h.step, model, adam: { t: h.adamT, m, v }, rngState: h.rngState, curve: h.curve, valCurve: h.valCurve, best };
}
