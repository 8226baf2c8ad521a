/**
 * A training checkpoint: everything that determines the rest of a run, so that resuming from it gives the
 * same parameters and curves, bit for bit, as never stopping. One format for every model family.
 *
 * File layout (little-endian): magic  u32 version  utf8 JSON header  blob parameter file of the family
 * f32 Adam m then v per trainable tensor (the family's fixed trainable order)  sha256 trailer.
 *
 * The magic is the family's ("WFTS" MLP, "WFCS" CNN, "WFRS" ResNet, "WFVS" ViT): the parameter blob inside
 * is that family's file, so a checkpoint handed to the wrong trainer fails on its first four bytes. The
 * MLP layout is the one MLP checkpoints have always had, byte for byte, so stored ones stay resumable.
 */
import { InputError } from '../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from './bytes';
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

/** The state of a run of any family; `P` is the family's host parameters (running BN statistics inside). */
export interface TrainStateOf<P> {
  version: 1;
  /** Identifies the run (data, init, hyper-parameters); resuming under a different one is refused. */
  fingerprint: string;
  /** Optimiser steps done. */
  step: number;
  /** Epoch of the next batch. */
  epoch: number;
  /** Index of the next batch in that epoch's permutation (derived from seed + epoch, so not stored). */
  batchIndex: number;
  params: P;
  /** Adam moments per trainable tensor, in the family's trainable order; `t` updates done. */
  adam: { t: number; m: Float32Array[]; v: Float32Array[] };
  /**
   * A random stream for stochastic regularisers (dropout, augmentation). None draws from it yet; it is
   * checkpointed already so that adding one keeps resume exact and old checkpoints loadable.
   */
  rngState: RngState;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** What the checkpoint format needs to know of a family. */
export interface CheckpointFormat<P> {
  /** Four ASCII bytes naming the family's checkpoints. */
  magic: string;
  /** e.g. "CNN training checkpoint", used in error messages. */
  what: string;
  serializeParams(p: P): Uint8Array;
  deserializeParams(bytes: Uint8Array): P;
  /** The arrays Adam trains, in the fixed order of the stored moments. */
  trainableArrays(p: P): Float32Array[];
}

const VERSION = 1;

/** Key order is part of the bytes: it is the order MLP checkpoints were always written in. */
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

export function serializeCheckpoint<P>(format: CheckpointFormat<P>, s: TrainStateOf<P>): Uint8Array {
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
  const sizes = format.trainableArrays(s.params).map((a) => a.length);
  const fits = (list: Float32Array[]): boolean => list.length === sizes.length && list.every((a, i) => a.length === sizes[i]);
  if (!fits(s.adam.m) || !fits(s.adam.v)) throw new Error(`${format.what}: Adam state does not match the parameters`);
  const out = new ByteWriter();
  out.ascii(format.magic);
  out.u32(VERSION);
  out.utf8(JSON.stringify(header));
  out.blob(format.serializeParams(s.params));
  for (const a of s.adam.m) out.f32Array(a);
  for (const a of s.adam.v) out.f32Array(a);
  return out.finishWithChecksum();
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

/**
 * Parses and checks a checkpoint; InputError says what is wrong with it. The header's own `version` is not
 * required: CNN, ResNet and ViT checkpoints written before the families shared this format lack it.
 */
export function deserializeCheckpoint<P>(format: CheckpointFormat<P>, bytes: Uint8Array): TrainStateOf<P> {
  const r = openContainer(bytes, { magic: format.magic, version: VERSION, what: format.what });
  const header = readJsonHeader<Header | null>(r, format.what);
  if (
    typeof header !== 'object' ||
    header === null ||
    typeof header.fingerprint !== 'string' ||
    ![header.step, header.epoch, header.batchIndex, header.adamT].every(isCount) ||
    header.adamT !== header.step ||
    !Array.isArray(header.rngState) ||
    !Array.isArray(header.curve) ||
    !Array.isArray(header.epochCurve) ||
    header.curve.length !== header.step
  ) {
    throw new InputError(`${format.what}: inconsistent header`);
  }
  const params = format.deserializeParams(r.blob());
  const sizes = format.trainableArrays(params).map((a) => a.length);
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
