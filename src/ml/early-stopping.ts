/**
 * Best-epoch selection (and optional early stopping) on top of `trainMlp`, plus the time-to-accuracy
 * measure built on its curve.
 *
 * `trainWithEarlyStopping` runs one ordinary `trainMlp` run (same data order, same Adam state, same
 * fingerprint) and, at the end of every epoch, compares the validation accuracy with the best so far; on
 * a strict improvement it downloads and keeps that epoch's parameters. Ties keep the earlier epoch, so the
 * best epoch is the first to reach the best accuracy. With `patience` it also stops once that many epochs
 * in a row brought no improvement (at the start of the next epoch: no step is wasted).
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
import type { MlpParams } from './mlp';
import { cloneParams } from './mlp';
import { deserializeParams, serializeParams } from './params-io';
import type { LossPoint, StepInfo, TrainMlpOptions, TrainResult, TrainState } from './train';
import { deserializeTrainState, serializeTrainState, trainMlp, TrainingAbortedError } from './train';

export interface EarlyStoppingOptions extends TrainMlpOptions {
  /** Required here: the best epoch is chosen on it. */
  validation: NonNullable<TrainMlpOptions['validation']>;
  /** Stop after this many consecutive epochs without a strict improvement; absent: run every epoch. */
  patience?: number;
  /** Added to every `secondsElapsed` of a fresh run (ignored on resume: the checkpoint has the time). */
  secondsBefore?: number;
}

export interface EarlyStoppingHooks {
  onStep?(info: StepInfo): void | Promise<void>;
  /** Called every `checkpointEvery` steps with a state that `trainWithEarlyStopping(…, resumeFrom)` continues exactly. */
  onCheckpoint?(state: EarlyStoppingState): void | Promise<void>;
  /** Polled before every step; true stops training with an `EarlyStoppingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
}

export interface EpochTiming {
  /** 0-based. */
  epoch: number;
  valAccuracy: number;
  meanLoss: number;
  /** Cumulative wall time at the end of this epoch (validation included), seconds. */
  secondsElapsed: number;
}

export interface EarlyStoppingResult {
  /** The parameters after the best epoch. */
  params: MlpParams;
  bestEpoch: number;
  bestValAccuracy: number;
  epochCurve: EpochTiming[];
  /** Loss per step of the whole run. */
  curve: LossPoint[];
  /** The parameters at the end of the last epoch run. */
  finalParams: MlpParams;
  /** True when `patience` ended the run before `epochs`. */
  stoppedEarly: boolean;
}

export interface EarlyStoppingState {
  version: 1;
  train: TrainState;
  /** Null until the first epoch ends. */
  best: { epoch: number; valAccuracy: number; params: MlpParams } | null;
  /** `secondsElapsed` of every finished epoch (one per `train.epochCurve` entry). */
  epochSeconds: number[];
  /** Wall time of the run up to this state, seconds. */
  seconds: number;
  /** The patience the run was started with (part of its identity); null: none. */
  patience: number | null;
}

/** Training stopped because `shouldAbort` said so; `earlyStoppingState` resumes it exactly. */
export class EarlyStoppingAbortedError extends TrainingAbortedError {
  constructor(public readonly earlyStoppingState: EarlyStoppingState) {
    super(earlyStoppingState.train);
  }
}

function checkEarlyStoppingOptions(o: EarlyStoppingOptions): void {
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
function epochsWithoutImprovement(best: EarlyStoppingState['best'], finished: number): number {
  return best ? finished - 1 - best.epoch : finished;
}

/**
 * Trains like `trainMlp` and returns the parameters of the epoch with the best validation accuracy, with
 * the per-epoch accuracy and cumulative wall time.
 *
 * @example
 * const r = await trainWithEarlyStopping({ ...trainOptions, validation: split.validation, patience: 3 },
 *   { onCheckpoint: (s) => save(serializeEarlyStoppingState(s)) }, resumeFrom);
 * const { seconds, reached } = secondsToReach(r.epochCurve, 0.9, 600);
 */
export async function trainWithEarlyStopping(
  options: EarlyStoppingOptions,
  hooks: EarlyStoppingHooks = {},
  resumeFrom?: EarlyStoppingState,
): Promise<EarlyStoppingResult> {
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

  const wrap = (train: TrainState): EarlyStoppingState => ({
    version: 1,
    train,
    best: best ? { ...best, params: cloneParams(best.params) } : null,
    epochSeconds: epochSeconds.slice(),
    seconds: elapsed(),
    patience,
  });

  let result: TrainResult;
  let stoppedEarly = false;
  try {
    result = await trainMlp(
      options,
      {
        ...(hooks.onStep ? { onStep: hooks.onStep } : {}),
        ...(hooks.onCheckpoint ? { onCheckpoint: async (s: TrainState) => hooks.onCheckpoint?.(wrap(s)) } : {}),
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
      if (err instanceof TrainingAbortedError) throw new EarlyStoppingAbortedError(wrap(err.state));
      throw err;
    }
    result = { params: err.state.params, curve: err.state.curve, epochCurve: err.state.epochCurve };
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

function checkResumable(s: EarlyStoppingState, patience: number | null): void {
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
 */
export function serializeEarlyStoppingState(s: EarlyStoppingState): Uint8Array {
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
  out.blob(serializeTrainState(s.train));
  out.blob(s.best ? serializeParams(s.best.params) : new Uint8Array());
  return out.finishWithChecksum();
}

export function deserializeEarlyStoppingState(bytes: Uint8Array): EarlyStoppingState {
  const r = openContainer(bytes, { magic: MAGIC, version: VERSION, what: WHAT, article: 'an' });
  const header = readJsonHeader<Header>(r, WHAT);
  const train = deserializeTrainState(r.blob());
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
  const state: EarlyStoppingState = {
    version: 1,
    train,
    best: hasBest ? { epoch: header.bestEpoch ?? 0, valAccuracy: header.bestValAccuracy ?? NaN, params: deserializeParams(bestBytes) } : null,
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
