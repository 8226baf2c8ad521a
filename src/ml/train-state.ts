/**
 * A training checkpoint: everything that determines the rest of a run, so that resuming from it gives the
 * same parameters and curves, bit for bit, as never stopping.
 *
 * File layout (little-endian): "WFTS"  u32 version  utf8 JSON header  blob parameter file (params-io)
 * f32 m and v per tensor (layer 0 w, layer 0 b, layer 1 w, …)  sha256 trailer.
 */
import { InputError } from '../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from './bytes';
import type { MlpParams } from './mlp';
import { deserializeParams, serializeParams } from './params-io';
import type { RngState } from './rng';

export interface LossPoint {
  step: number;
  loss: number;
}

export interface EpochPoint {
  epoch: number;
  /** Mean training loss over the epoch's steps. */
  meanLoss: number;
  /** Top-1 accuracy on the validation set after the epoch, when one was given. */
  valAccuracy?: number;
}

export interface TrainState {
  version: 1;
  /** Identifies the run (data, init, hyper-parameters); resuming under a different one is refused. */
  fingerprint: string;
  /** Optimiser steps done. */
  step: number;
  /** Epoch of the next batch. */
  epoch: number;
  /** Index of the next batch in that epoch's permutation (derived from seed + epoch, so not stored). */
  batchIndex: number;
  params: MlpParams;
  /** Adam moments per tensor in layer order (w, b, w, b, …); `t` updates done. */
  adam: { t: number; m: Float32Array[]; v: Float32Array[] };
  /**
   * A random stream for stochastic regularisers (dropout, augmentation). None draws from it yet; it is
   * checkpointed already so that adding one keeps resume exact and old checkpoints loadable.
   */
  rngState: RngState;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

const MAGIC = 'WFTS';
const VERSION = 1;
const WHAT = 'training checkpoint';

interface Header {
  version: number;
  fingerprint: string;
  step: number;
  epoch: number;
  batchIndex: number;
  adamT: number;
  rngState: RngState;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** Sizes of the tensors in layer order (w, b, w, b, …). */
export function tensorSizes(p: MlpParams): number[] {
  return p.layers.flatMap((l) => [l.w.length, l.b.length]);
}

export function serializeTrainState(s: TrainState): Uint8Array {
  const header: Header = {
    version: s.version,
    fingerprint: s.fingerprint,
    step: s.step,
    epoch: s.epoch,
    batchIndex: s.batchIndex,
    adamT: s.adam.t,
    rngState: s.rngState,
    curve: s.curve,
    epochCurve: s.epochCurve,
  };
  const sizes = tensorSizes(s.params);
  if (s.adam.m.length !== sizes.length || s.adam.v.length !== sizes.length) throw new Error(`${WHAT}: Adam state does not match the parameters`);
  const out = new ByteWriter();
  out.ascii(MAGIC);
  out.u32(VERSION);
  out.utf8(JSON.stringify(header));
  out.blob(serializeParams(s.params));
  for (const m of s.adam.m) out.f32Array(m);
  for (const v of s.adam.v) out.f32Array(v);
  return out.finishWithChecksum();
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

export function deserializeTrainState(bytes: Uint8Array): TrainState {
  const r = openContainer(bytes, { magic: MAGIC, version: VERSION, what: WHAT });
  const header = readJsonHeader<Header>(r, WHAT);
  if (
    typeof header.fingerprint !== 'string' ||
    ![header.step, header.epoch, header.batchIndex, header.adamT].every(isCount) ||
    header.adamT !== header.step ||
    !Array.isArray(header.rngState) ||
    !Array.isArray(header.curve) ||
    !Array.isArray(header.epochCurve) ||
    header.curve.length !== header.step
  ) {
    throw new InputError(`${WHAT}: inconsistent header`);
  }
  const params = deserializeParams(r.blob());
  const sizes = tensorSizes(params);
  const m = sizes.map((n) => r.f32Array(n));
  const v = sizes.map((n) => r.f32Array(n));
  r.expectEnd();
  return {
    version: 1,
    fingerprint: header.fingerprint,
    step: header.step,
    epoch: header.epoch,
    batchIndex: header.batchIndex,
    params,
    adam: { t: header.adamT, m, v },
    rngState: header.rngState,
    curve: header.curve,
    epochCurve: header.epochCurve,
  };
}
