/**
 * Best-epoch selection (and optional early stopping) on top of any family's trainer (`trainMlp`,
 * `trainCnn`, `trainResnet`, `trainVit`: the shared loop of train-engine.ts), plus the time-to-accuracy
 * measure built on its curve.
 *
 * `trainWithEarlyStopping` runs one ordinary training run of the family (same data order, same Adam state,
 * same fingerprint) and, at the end of every epoch, compares the validation accuracy with the best so far; on
 * a strict improvement it downloads and keeps that epoch's parameters. Ties keep the earlier epoch, so the
 * best epoch is the first to reach the best accuracy. With `patience` it also stops once that many epochs
 * in a row brought no improvement (at the start of the next epoch: no step is wasted).
 *
 * The family is an `EarlyStoppingTrainer` (its trainer, checkpoint and parameter file); without one it is the
 * MLP (`MLP_EARLY_STOPPING`), as before the families shared the loop, with the same checkpoint bytes.
 *
 * Checkpoints are `EarlyStoppingState`s: the trainer's `TrainState` plus the best parameters so far and the
 * wall time. Resuming from one gives the same parameters, best epoch and accuracies, bit for bit, as an
 * uninterrupted run (on deterministic backends); only the wall times differ, as wall times do.
 *
 * `secondsElapsed` of epoch e is the cumulative wall time from the start of training (plus
 * `secondsBefore`, e.g. the time spent computing distillation targets) to the end of epoch e's validation.
 * After a resume it continues from the time recorded in the checkpoint: work lost after the checkpoint and
 * the downtime are not counted, the redone work is.
 */
import { performance } from 'node:perf_hooks';
import { InputError } from '../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from './bytes';
import type { ArchitectureSpec } from '../spec/types';
import type { MlpParams } from './mlp';
import { cloneParams } from './mlp';
import { deserializeParams, serializeParams } from './params-io';
import type { LossPoint, StepInfo } from './train';
import { deserializeTrainState, serializeTrainState, trainMlp, TrainingAbortedError } from './train';
import type { TrainHooksOf, TrainOptionsOf, TrainResultOf } from './train-engine';
import type { TrainStateOf } from './train-state';

/**
 * What early stopping needs of a model family: its trainer and the two files its checkpoint holds (the
 * trainer's checkpoint and the parameter file of the best epoch). `A` architecture, `P` host parameters.
 */
export interface EarlyStoppingTrainer<A, P> {
  train(options: TrainOptionsOf<A, P>, hooks: TrainHooksOf<P>, resumeFrom?: TrainStateOf<P>): Promise<TrainResultOf<P>>;
  /** A deep copy: a checkpoint must not share arrays with the run that goes on. */
  clone(p: P): P;
  serializeTrainState(s: TrainStateOf<P>): Uint8Array;
  deserializeTrainState(bytes: Uint8Array): TrainStateOf<P>;
  serializeParams(p: P): Uint8Array;
  deserializeParams(bytes: Uint8Array): P;
}

/** The MLP: the default, and what `trainWithEarlyStopping` always was (same checkpoint bytes). */
export const MLP_EARLY_STOPPING: EarlyStoppingTrainer<ArchitectureSpec, MlpParams> = {
  train: trainMlp,
  clone: cloneParams,
  serializeTrainState,
  deserializeTrainState,
  serializeParams,
  deserializeParams,
};

/** Options of a family's trainer, plus the validation set (required) and the stopping rule. */
export interface EarlyStoppingOptionsOf<A, P> extends TrainOptionsOf<A, P> {
  /** Required here: the best epoch is chosen on it. */
  validation: NonNullable<TrainOptionsOf<A, P>['validation']>;
  /** Stop after this many consecutive epochs without a strict improvement; absent: run every epoch. */
  patience?: number;
  /** Added to every `secondsElapsed` of a fresh run (ignored on resume: the checkpoint has the time). */
  secondsBefore?: number;
}

/** The MLP's options (the name this module always exported). */
export type EarlyStoppingOptions = EarlyStoppingOptionsOf<ArchitectureSpec, MlpParams>;

export interface EarlyStoppingHooksOf<P> {
  onStep?(info: StepInfo): void | Promise<void>;
  /** Called every `checkpointEvery` steps with a state that `trainWithEarlyStopping(…, resumeFrom)` continues exactly. */
  onCheckpoint?(state: EarlyStoppingStateOf<P>): void | Promise<void>;
  /** Polled before every step; true stops training with an `EarlyStoppingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
}

export type EarlyStoppingHooks = EarlyStoppingHooksOf<MlpParams>;

export interface EpochTiming {
  /** 0-based. */
  epoch: number;
  valAccuracy: number;
  meanLoss: number;
  /** Cumulative wall time at the end of this epoch (validation included), seconds. */
  secondsElapsed: number;
}

export interface EarlyStoppingResultOf<P> {
  /** The parameters after the best epoch. */
  params: P;
  bestEpoch: number;
  bestValAccuracy: number;
  epochCurve: EpochTiming[];
  /** Loss per step of the whole run. */
  curve: LossPoint[];
  /** The parameters at the end of the last epoch run. */
  finalParams: P;
  /** True when `patience` ended the run before `epochs`. */
  stoppedEarly: boolean;
}

export type EarlyStoppingResult = EarlyStoppingResultOf<MlpParams>;

export interface EarlyStoppingStateOf<P> {
  version: 1;
  train: TrainStateOf<P>;
  /** Null until the first epoch ends. */
  best: { epoch: number; valAccuracy: number; params: P } | null;
  /** `secondsElapsed` of every finished epoch (one per `train.epochCurve` entry). */
  epochSeconds: number[];
  /** Wall time of the run up to this state, seconds. */
  seconds: number;
  /** The patience the run was started with (part of its identity); null: none. */
  patience: number | null;
}

export type EarlyStoppingState = EarlyStoppingStateOf<MlpParams>;

/** Training stopped because `shouldAbort` said so; `earlyStoppingState` resumes it exactly. */
export class EarlyStoppingAbortedError<P = MlpParams> extends TrainingAbortedError<P> {
  constructor(public readonly earlyStoppingState: EarlyStoppingStateOf<P>) {
    super(earlyStoppingState.train);
  }
}

function checkEarlyStoppingOptions<A, P>(o: EarlyStoppingOptionsOf<A, P>): void {
  if (!o.validation || o.validation.n < 1) throw new InputError('early stopping needs a non-empty validation set');
  if (!Number.isInteger(o.epochs) || o.epochs < 1) throw new InputError(`epochs must be an integer ≥ 1, got ${o.epochs}`);
  if (o.patience !== undefined && (!Number.isInteger(o.patience) || o.patience < 1)) {
    throw new InputError(`patience must be an integer ≥ 1, got ${o.patience}`);
  }
  if (o.secondsBefore !== undefined && !(o.secondsBefore >= 0 && Number.isFinite(o.secondsBefore))) {
    throw new InputError(`secondsBefore must be a non-negative number, got ${o.secondsBefore}`);
  }
}

/** Epochs since the best one, given how many have finished. */
function epochsWithoutImprovement(best: EarlyStoppingStateOf<unknown>['best'], finished: number): number {
  return best ? finished - 1 - best.epoch : finished;
}

/**
 * Trains like the family's trainer (`trainer`; the MLP's `trainMlp` without one) and returns the parameters
 * of the epoch with the best validation accuracy, with the per-epoch accuracy and cumulative wall time.
 *
 * @example
 * const r = await trainWithEarlyStopping({ ...trainOptions, validation: split.validation, patience: 3 },
 *   { onCheckpoint: (s) => save(serializeEarlyStoppingState(s)) }, resumeFrom);
 * const { seconds, reached } = secondsToReach(r.epochCurve, 0.9, 600);
 * // Another family: its trainer, and the same trainer for the checkpoint's bytes.
 * const c = await trainWithEarlyStopping(cnnOptions, { onCheckpoint: (s) => save(serializeEarlyStoppingState(s, CNN)) }, undefined, CNN);
 */
export function trainWithEarlyStopping(options: EarlyStoppingOptions, hooks?: EarlyStoppingHooks, resumeFrom?: EarlyStoppingState): Promise<EarlyStoppingResult>;
export function trainWithEarlyStopping<A, P>(
  options: EarlyStoppingOptionsOf<A, P>,
  hooks: EarlyStoppingHooksOf<P>,
  resumeFrom: EarlyStoppingStateOf<P> | undefined,
  trainer: EarlyStoppingTrainer<A, P>,
): Promise<EarlyStoppingResultOf<P>>;
export function trainWithEarlyStopping<A, P>(
  options: EarlyStoppingOptionsOf<A, P>,
  hooks: EarlyStoppingHooksOf<P> = {},
  resumeFrom?: EarlyStoppingStateOf<P>,
  trainer?: EarlyStoppingTrainer<A, P>,
): Promise<EarlyStoppingResultOf<P>> {
  // Without a trainer the options are an MLP's (the first overload), so the MLP trainer fits them.
  return trainWithEarlyStoppingOf(trainer ?? (MLP_EARLY_STOPPING as unknown as EarlyStoppingTrainer<A, P>), options, hooks, resumeFrom);
}

async function trainWithEarlyStoppingOf<A, P>(
  trainer: EarlyStoppingTrainer<A, P>,
  options: EarlyStoppingOptionsOf<A, P>,
  hooks: EarlyStoppingHooksOf<P>,
  resumeFrom: EarlyStoppingStateOf<P> | undefined,
): Promise<EarlyStoppingResultOf<P>> {
  checkEarlyStoppingOptions(options);
  const patience = options.patience ?? null;
  if (resumeFrom) checkResumable(resumeFrom, patience);

  let best = resumeFrom?.best ? { ...resumeFrom.best } : null;
  const epochSeconds = resumeFrom ? resumeFrom.epochSeconds.slice() : [];
  const base = resumeFrom ? resumeFrom.seconds : (options.secondsBefore ?? 0);
  const t0 = performance.now();
  const elapsed = (): number => base + (performance.now() - t0) / 1000;
  // Also true when resuming from a state whose patience ran out (taken at the epoch end that exhausted it).
  let exhausted = patience !== null && epochsWithoutImprovement(best, epochSeconds.length) >= patience && epochSeconds.length < options.epochs;
  let userAbort = false;

  const wrap = (train: TrainStateOf<P>): EarlyStoppingStateOf<P> => ({
    version: 1,
    train,
    best: best ? { ...best, params: trainer.clone(best.params) } : null,
    epochSeconds: epochSeconds.slice(),
    seconds: elapsed(),
    patience,
  });

  let result: TrainResultOf<P>;
  let stoppedEarly = false;
  try {
    result = await trainer.train(
      options,
      {
        ...(hooks.onStep ? { onStep: hooks.onStep } : {}),
        ...(hooks.onCheckpoint ? { onCheckpoint: async (s: TrainStateOf<P>) => hooks.onCheckpoint?.(wrap(s)) } : {}),
        shouldAbort: () => {
          if (exhausted) return true;
          userAbort = hooks.shouldAbort?.() ?? false;
          return userAbort;
        },
        onEpochEnd: async (point, params) => {
          const seconds = elapsed();
          const acc = point.valAccuracy ?? NaN;
          epochSeconds.push(seconds);
          if (!best || acc > best.valAccuracy) best = { epoch: point.epoch, valAccuracy: acc, params: await params() };
          if (patience !== null && epochsWithoutImprovement(best, epochSeconds.length) >= patience) exhausted = true;
        },
      },
      resumeFrom?.train,
    );
  } catch (err) {
    if (!(err instanceof TrainingAbortedError) || userAbort || !exhausted) {
      if (err instanceof TrainingAbortedError) throw new EarlyStoppingAbortedError<P>(wrap(err.state as TrainStateOf<P>));
      throw err;
    }
    // The trainer threw it, so it carries this family's state.
    const state = err.state as TrainStateOf<P>;
    result = { params: state.params, curve: state.curve, epochCurve: state.epochCurve };
    stoppedEarly = true;
  }
  if (!best) throw new Error('no epoch finished'); // unreachable: epochs ≥ 1
  const epochCurve: EpochTiming[] = result.epochCurve.map((e, i) => ({
    epoch: e.epoch,
    valAccuracy: e.valAccuracy ?? NaN,
    meanLoss: e.meanLoss,
    secondsElapsed: epochSeconds[i] ?? NaN,
  }));
  return {
    params: best.params,
    bestEpoch: best.epoch,
    bestValAccuracy: best.valAccuracy,
    epochCurve,
    curve: result.curve,
    finalParams: result.params,
    stoppedEarly,
  };
}

function checkResumable<P>(s: EarlyStoppingStateOf<P>, patience: number | null): void {
  if (s.patience !== patience) {
    throw new InputError(`the checkpoint was taken with patience ${String(s.patience)}, not ${String(patience)}`);
  }
  if (s.epochSeconds.length !== s.train.epochCurve.length || (s.best !== null) !== s.epochSeconds.length > 0) {
    throw new InputError('early-stopping checkpoint: its epoch records do not match its training state');
  }
  if (s.best && (s.best.epoch >= s.epochSeconds.length || s.train.epochCurve[s.best.epoch]?.valAccuracy !== s.best.valAccuracy)) {
    throw new InputError('early-stopping checkpoint: its best epoch does not match its training state');
  }
}

// ------------------------------------------------------------------------------------------ checkpoint

const MAGIC = 'WFES';
const VERSION = 1;
const WHAT = 'early-stopping checkpoint';

interface Header {
  bestEpoch: number | null;
  bestValAccuracy: number | null;
  epochSeconds: number[];
  seconds: number;
  patience: number | null;
}

/**
 * Layout (little-endian): "WFES"  u32 version  utf8 JSON header  blob training checkpoint (train-state)
 * blob best parameters (parameter file; empty when none)  sha256 trailer.
 *
 * The two blobs are the family's (`trainer`, the MLP's without one), each with its own magic, so a
 * checkpoint read as another family's fails on the training checkpoint's first bytes.
 */
export function serializeEarlyStoppingState(s: EarlyStoppingState): Uint8Array;
export function serializeEarlyStoppingState<A, P>(s: EarlyStoppingStateOf<P>, trainer: EarlyStoppingTrainer<A, P>): Uint8Array;
export function serializeEarlyStoppingState<A, P>(s: EarlyStoppingStateOf<P>, trainer?: EarlyStoppingTrainer<A, P>): Uint8Array {
  const t = trainer ?? (MLP_EARLY_STOPPING as unknown as EarlyStoppingTrainer<A, P>);
  const header: Header = {
    bestEpoch: s.best?.epoch ?? null,
    bestValAccuracy: s.best?.valAccuracy ?? null,
    epochSeconds: s.epochSeconds,
    seconds: s.seconds,
    patience: s.patience,
  };
  const out = new ByteWriter();
  out.ascii(MAGIC);
  out.u32(VERSION);
  out.utf8(JSON.stringify(header));
  out.blob(t.serializeTrainState(s.train));
  out.blob(s.best ? t.serializeParams(s.best.params) : new Uint8Array());
  return out.finishWithChecksum();
}

export function deserializeEarlyStoppingState(bytes: Uint8Array): EarlyStoppingState;
export function deserializeEarlyStoppingState<A, P>(bytes: Uint8Array, trainer: EarlyStoppingTrainer<A, P>): EarlyStoppingStateOf<P>;
export function deserializeEarlyStoppingState<A, P>(bytes: Uint8Array, trainer?: EarlyStoppingTrainer<A, P>): EarlyStoppingStateOf<P> {
  const t = trainer ?? (MLP_EARLY_STOPPING as unknown as EarlyStoppingTrainer<A, P>);
  const r = openContainer(bytes, { magic: MAGIC, version: VERSION, what: WHAT, article: 'an' });
  const header = readJsonHeader<Header>(r, WHAT);
  const train = t.deserializeTrainState(r.blob());
  const bestBytes = r.blob();
  r.expectEnd();
  const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
  const hasBest = bestBytes.length > 0;
  if (
    !Array.isArray(header.epochSeconds) ||
    !header.epochSeconds.every(isNum) ||
    !isNum(header.seconds) ||
    !(header.patience === null || (Number.isInteger(header.patience) && header.patience >= 1)) ||
    hasBest !== (header.bestEpoch !== null) ||
    (hasBest && !(Number.isInteger(header.bestEpoch) && isNum(header.bestValAccuracy)))
  ) {
    throw new InputError(`${WHAT}: inconsistent header`);
  }
  const state: EarlyStoppingStateOf<P> = {
    version: 1,
    train,
    best: hasBest ? { epoch: header.bestEpoch ?? 0, valAccuracy: header.bestValAccuracy ?? NaN, params: t.deserializeParams(bestBytes) } : null,
    epochSeconds: header.epochSeconds,
    seconds: header.seconds,
    patience: header.patience,
  };
  checkResumable(state, state.patience);
  return state;
}

// ------------------------------------------------------------------------------------ time to accuracy

export interface SecondsToReach {
  /** End time of the first epoch at or above the target; `capSeconds` when not reached within it. */
  seconds: number;
  reached: boolean;
  /** That epoch, or null. */
  epoch: number | null;
}

/**
 * Wall time until validation accuracy first reaches `targetAccuracy`: the `secondsElapsed` of the first
 * epoch (in curve order) with `valAccuracy ≥ targetAccuracy` — the epoch's end time, never interpolated.
 * Not reached, or reached only after `capSeconds`: `{ seconds: capSeconds, reached: false }`.
 *
 * @example
 * secondsToReach([{ epoch: 0, valAccuracy: 0.8, secondsElapsed: 2 }, { epoch: 1, valAccuracy: 0.9, secondsElapsed: 4 }], 0.85, 60)
 * // → { seconds: 4, reached: true, epoch: 1 }
 */
export function secondsToReach(
  epochCurve: ReadonlyArray<{ epoch?: number; valAccuracy: number; secondsElapsed: number }>,
  targetAccuracy: number,
  capSeconds: number,
): SecondsToReach {
  if (typeof targetAccuracy !== 'number' || Number.isNaN(targetAccuracy)) throw new InputError(`target accuracy must be a number, got ${targetAccuracy}`);
  if (typeof capSeconds !== 'number' || !(capSeconds >= 0)) throw new InputError(`capSeconds must be a non-negative number, got ${capSeconds}`);
  for (let i = 0; i < epochCurve.length; i++) {
    const p = epochCurve[i];
    if (!p || !Number.isFinite(p.secondsElapsed) || p.secondsElapsed < 0) {
      throw new InputError(`epoch curve entry ${i} has secondsElapsed ${String(p?.secondsElapsed)}`);
    }
    if (p.valAccuracy >= targetAccuracy) {
      return p.secondsElapsed <= capSeconds ? { seconds: p.secondsElapsed, reached: true, epoch: p.epoch ?? i } : { seconds: capSeconds, reached: false, epoch: null };
    }
  }
  return { seconds: capSeconds, reached: false, epoch: null };
}
