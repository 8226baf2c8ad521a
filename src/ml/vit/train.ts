/**
 * Training a ViT: `trainCnn`'s loop (same options, hooks, result and exact resume) for the ViT's
 * parameters, which are all trained (no running statistics, no train/eval mode: there is no dropout).
 *
 * Reused: the Adam update (`adam.ts`), the per-epoch data order (`epochPermutation`), the KD options and
 * the loss (`lossOfLogits` of the CNN trainer, i.e. `mlpLoss`'s objective on logits).
 * Written again here because train.ts and cnn/train.ts keep them private or type them to their family:
 * option checks, the run fingerprint, the fresh state, the per-row teacher entropy, the loop itself and
 * the checkpoint format (each a shortened copy of cnn/train.ts's).
 */
import { createHash } from 'node:crypto';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { InputError } from '../../util/errors';
import { adamUpdate, ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON } from '../adam';
import { ByteWriter, openContainer, readJsonHeader } from '../bytes';
import { lossOfLogits } from '../cnn/train';
import type { Dataset } from '../data';
import { datasetDigest, featureSize } from '../data';
import { Rng, deriveSeed } from '../rng';
import type { RngState } from '../rng';
import { tf } from '../tf';
import type { KdOptions, LossBatch, StepInfo } from '../train';
import { epochPermutation } from '../train';
import type { EpochPoint, LossPoint } from '../train-state';
import type { VitArchitecture, VitParams } from './architecture';
import { checkVitArchitecture, checkVitParamsMatch, vitParamArrays, vitParamsFromArrays, vitParamShapes, vitSignature } from './architecture';
import { vitAccuracyOfTensors, vitLogits, vitTensorsFromList } from './forward';
import { deserializeVitParams, serializeVitParams, vitParamsDigest } from './io';

export interface TrainVitOptions {
  arch: VitArchitecture;
  /** Starting parameters. Not modified. */
  init: VitParams;
  train: Dataset;
  epochs: number;
  batchSize: number;
  learningRate: number;
  /** Seeds the data order of every epoch. */
  seed: number;
  kd?: KdOptions;
  /** Scored after every epoch into `epochCurve[].valAccuracy`. */
  validation?: Dataset;
  /** Steps between `onCheckpoint` calls; 0 or absent: none. */
  checkpointEvery?: number;
}

/** `TrainState` of `train-state.ts` with ViT parameters. */
export interface VitTrainState {
  version: 1;
  fingerprint: string;
  step: number;
  epoch: number;
  batchIndex: number;
  params: VitParams;
  /** Adam moments per parameter array, in `vitParamArrays` order; `t` updates done. */
  adam: { t: number; m: Float32Array[]; v: Float32Array[] };
  rngState: RngState;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** `TrainHooks` of `train.ts`, with ViT parameters and state. */
export interface VitTrainHooks {
  onStep?(info: StepInfo): void | Promise<void>;
  /** Called every `checkpointEvery` steps with a state that `trainVit(…, resumeFrom)` continues exactly. */
  onCheckpoint?(state: VitTrainState): void | Promise<void>;
  /** Polled before every step; true stops training with a `VitTrainingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
  /** When an epoch ends, after its validation score and before that step's `onStep` / `onCheckpoint`. */
  onEpochEnd?(point: EpochPoint, params: () => Promise<VitParams>): void | Promise<void>;
}

export interface VitTrainResult {
  params: VitParams;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** Training stopped because `shouldAbort` said so; `state` resumes it exactly. */
export class VitTrainingAbortedError extends Error {
  override name = 'VitTrainingAbortedError';
  constructor(public readonly state: VitTrainState) {
    super(`training aborted after step ${state.step}`);
  }
}

function checkOptions(o: TrainVitOptions): void {
  checkVitArchitecture(o.arch);
  checkVitParamsMatch(o.init, o.arch);
  const int = (name: string, v: number, min: number): void => {
    if (!Number.isInteger(v) || v < min) throw new InputError(`${name} must be an integer ≥ ${min}, got ${v}`);
  };
  int('epochs', o.epochs, 0);
  int('batchSize', o.batchSize, 1);
  int('checkpointEvery', o.checkpointEvery ?? 0, 0);
  if (!(o.learningRate > 0) || !Number.isFinite(o.learningRate)) throw new InputError(`learningRate must be positive, got ${o.learningRate}`);
  if (o.train.n < 1) throw new InputError('the training set is empty');
  const [h, w, c] = o.arch.inputShape;
  if (featureSize(o.train) !== h * w * c) {
    throw new InputError(`training data has ${featureSize(o.train)} features but the model takes ${h}×${w}×${c} = ${h * w * c}`);
  }
  for (const label of o.train.y) {
    if (!(label >= 0 && label < o.arch.outputSize)) throw new InputError(`label ${label} outside 0..${o.arch.outputSize - 1}`);
  }
  if (o.kd) {
    if (o.kd.teacherProbs.length !== o.train.n * o.arch.outputSize) {
      throw new InputError(`kd.teacherProbs has ${o.kd.teacherProbs.length} values, expected ${o.train.n} × ${o.arch.outputSize}`);
    }
    if (!(o.kd.weight >= 0 && o.kd.weight <= 1)) throw new InputError(`kd.weight must be in [0, 1], got ${o.kd.weight}`);
    if (!(o.kd.temperature > 0) || !Number.isFinite(o.kd.temperature)) throw new InputError(`kd.temperature must be positive, got ${o.kd.temperature}`);
  }
}

/** Everything that determines the run; a checkpoint from another run must not be resumed here. */
function fingerprintOf(o: TrainVitOptions): string {
  const probsDigest = o.kd
    ? createHash('sha256').update(new Uint8Array(o.kd.teacherProbs.buffer, o.kd.teacherProbs.byteOffset, o.kd.teacherProbs.byteLength)).digest('hex')
    : null;
  return createHash('sha256')
    .update(
      JSON.stringify({
        trainer: 'trainVit/1',
        arch: vitSignature(o.arch),
        init: vitParamsDigest(o.init),
        train: datasetDigest(o.train),
        validation: o.validation ? datasetDigest(o.validation) : null,
        epochs: o.epochs,
        batchSize: o.batchSize,
        learningRate: o.learningRate,
        seed: o.seed,
        kd: o.kd ? { weight: o.kd.weight, temperature: o.kd.temperature, probs: probsDigest } : null,
        adam: [ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON],
      }),
    )
    .digest('hex');
}

function freshState(o: TrainVitOptions, fingerprint: string): VitTrainState {
  const sizes = vitParamArrays(o.init).map((a) => a.length);
  return {
    version: 1,
    fingerprint,
    step: 0,
    epoch: 0,
    batchIndex: 0,
    params: o.init,
    adam: { t: 0, m: sizes.map((n) => new Float32Array(n)), v: sizes.map((n) => new Float32Array(n)) },
    rngState: new Rng(deriveSeed(o.seed, 'train-stream')).getState(),
    curve: [],
    epochCurve: [],
  };
}

/** Σ p·log p per row (0·log 0 = 0), in float64, rounded once to float32 (as train.ts does). */
function rowNegEntropy(probs: Float32Array, rows: number, classes: number): Float32Array {
  const out = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < classes; c++) {
      const p = probs[r * classes + c] ?? 0;
      if (p > 0) s += p * Math.log(p);
    }
    out[r] = s;
  }
  return out;
}

/**
 * Trains a ViT with Adam on mini-batches, optionally distilling from precomputed ensemble targets.
 * Options, hooks, result and resume behave as in `trainMlp` / `trainCnn`: a run resumed from a checkpoint
 * equals the uninterrupted run bit for bit on deterministic backends (cpu, wasm).
 *
 * @example
 * const { params } = await trainVit({ arch, init: initVit(arch, 1), train, epochs: 5, batchSize: 32,
 *   learningRate: 3e-3, seed: 7, checkpointEvery: 50 }, { onCheckpoint: (s) => save(serializeVitTrainState(s)) });
 */
export async function trainVit(options: TrainVitOptions, hooks: VitTrainHooks = {}, resumeFrom?: VitTrainState): Promise<VitTrainResult> {
  checkOptions(options);
  const fingerprint = fingerprintOf(options);
  if (resumeFrom && resumeFrom.fingerprint !== fingerprint) {
    throw new InputError('the checkpoint belongs to a different training run (data, initial parameters or hyper-parameters differ)');
  }
  const start = resumeFrom ?? freshState(options, fingerprint);
  checkVitParamsMatch(start.params, options.arch);
  const { train, batchSize, epochs, arch } = options;
  const n = train.n;
  const d = featureSize(train);
  const classes = arch.outputSize;
  const stepsPerEpoch = Math.ceil(n / batchSize);
  const totalSteps = epochs * stepsPerEpoch;
  if (start.batchIndex >= stepsPerEpoch || start.step !== start.epoch * stepsPerEpoch + start.batchIndex) {
    throw new InputError('the checkpoint position does not fit this run');
  }
  const negEntropy = options.kd ? rowNegEntropy(options.kd.teacherProbs, n, classes) : undefined;
  const shapes = vitParamShapes(arch);

  let step = start.step;
  let epoch = start.epoch;
  let batchIndex = start.batchIndex;
  const curve = start.curve.slice();
  const epochCurve = start.epochCurve.slice();
  const rngState = start.rngState.slice();
  const upload = (list: Float32Array[]): tf.Tensor[] => list.map((a, i) => tf.tensor(new Float32Array(a), shapes[i], 'float32'));
  if (start.adam.m.length !== shapes.length || start.adam.v.length !== shapes.length) {
    throw new InputError('the checkpoint’s optimiser state does not match the parameters');
  }
  let params = upload(vitParamArrays(start.params));
  let m = upload(start.adam.m);
  let v = upload(start.adam.v);

  const download = async (ts: tf.Tensor[]): Promise<Float32Array[]> => {
    const out: Float32Array[] = [];
    for (const t of ts) out.push(new Float32Array(await t.data()));
    return out;
  };
  const currentParams = async (): Promise<VitParams> => vitParamsFromArrays(arch, await download(params));
  const snapshot = async (): Promise<VitTrainState> => ({
    version: 1,
    fingerprint,
    step,
    epoch,
    batchIndex,
    params: await currentParams(),
    adam: { t: step, m: await download(m), v: await download(v) },
    rngState: rngState.slice(),
    curve: curve.slice(),
    epochCurve: epochCurve.map((e) => ({ ...e })),
  });

  try {
    let order = epoch < epochs ? epochPermutation(options.seed, epoch, n) : new Int32Array();
    while (epoch < epochs) {
      if (hooks.shouldAbort?.()) throw new VitTrainingAbortedError(await snapshot());

      const from = batchIndex * batchSize;
      const rows = Math.min(batchSize, n - from);
      const xb = new Float32Array(rows * d);
      const yb = new Float32Array(rows * classes);
      const pb = options.kd ? new Float32Array(rows * classes) : undefined;
      const hb = options.kd ? new Float32Array(rows) : undefined;
      for (let r = 0; r < rows; r++) {
        const i = order[from + r] ?? 0;
        xb.set(train.x.subarray(i * d, (i + 1) * d), r * d);
        yb[r * classes + (train.y[i] ?? 0)] = 1;
        if (pb && hb && options.kd && negEntropy) {
          pb.set(options.kd.teacherProbs.subarray(i * classes, (i + 1) * classes), r * classes);
          hb[r] = negEntropy[i] ?? 0;
        }
      }

      const t = step + 1;
      const next = tf.tidy(() => {
        const x = tf.tensor2d(xb, [rows, d]);
        const batch: Omit<LossBatch, 'x'> = {
          yOneHot: tf.tensor2d(yb, [rows, classes]),
          ...(options.kd && pb && hb
            ? { kd: { probs: tf.tensor2d(pb, [rows, classes]), negEntropy: tf.tensor1d(hb), weight: options.kd.weight, temperature: options.kd.temperature } }
            : {}),
        };
        const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) => lossOfLogits(vitLogits(vitTensorsFromList(arch, ps), x), batch))(params);
        const updated = adamUpdate({ params, m, v }, grads, t, options.learningRate);
        return { loss: value, params: updated.params, m: updated.m, v: updated.v };
      });
      tf.dispose([...params, ...m, ...v]);
      params = next.params;
      m = next.m;
      v = next.v;
      const loss = (await next.loss.data())[0] ?? NaN;
      next.loss.dispose();
      if (!Number.isFinite(loss)) throw new InputError(`training diverged at step ${t} (loss ${loss}); lower the learning rate`);

      step = t;
      curve.push({ step, loss });
      const stepEpoch = epoch;
      batchIndex++;
      if (batchIndex === stepsPerEpoch) {
        const losses = curve.slice(curve.length - stepsPerEpoch);
        const point: EpochPoint = { epoch, meanLoss: losses.reduce((s, c) => s + c.loss, 0) / losses.length };
        if (options.validation) point.valAccuracy = await vitAccuracyOfTensors(vitTensorsFromList(arch, params), options.validation);
        epochCurve.push(point);
        epoch++;
        batchIndex = 0;
        if (epoch < epochs) order = epochPermutation(options.seed, epoch, n);
        if (hooks.onEpochEnd) await hooks.onEpochEnd({ ...point }, currentParams);
      }
      await hooks.onStep?.({ step, totalSteps, loss, epoch: stepEpoch });
      const every = options.checkpointEvery ?? 0;
      if (every > 0 && step % every === 0 && hooks.onCheckpoint) await hooks.onCheckpoint(await snapshot());
      // A macrotask turn, so worker messages (abort) and timers (heartbeats) run between steps.
      await nextMacrotask();
    }
    const final = await snapshot();
    return { params: final.params, curve, epochCurve };
  } finally {
    tf.dispose([...params, ...m, ...v]);
  }
}

const STATE_FORMAT = { magic: 'WFVS', version: 1, what: 'ViT training checkpoint' };

interface StateHeader {
  fingerprint: string;
  step: number;
  epoch: number;
  batchIndex: number;
  adamT: number;
  rngState: RngState;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/**
 * Checkpoint bytes (little-endian): "WFVS"  u32 version  utf8 JSON header  blob ViT parameter file
 * f32 Adam m then v per parameter array  sha256 trailer.
 */
export function serializeVitTrainState(s: VitTrainState): Uint8Array {
  const header: StateHeader = {
    fingerprint: s.fingerprint,
    step: s.step,
    epoch: s.epoch,
    batchIndex: s.batchIndex,
    adamT: s.adam.t,
    rngState: s.rngState,
    curve: s.curve,
    epochCurve: s.epochCurve,
  };
  const sizes = vitParamArrays(s.params).map((a) => a.length);
  const fits = (list: Float32Array[]): boolean => list.length === sizes.length && list.every((a, i) => a.length === sizes[i]);
  if (!fits(s.adam.m) || !fits(s.adam.v)) throw new Error(`${STATE_FORMAT.what}: Adam state does not match the parameters`);
  const out = new ByteWriter();
  out.ascii(STATE_FORMAT.magic);
  out.u32(STATE_FORMAT.version);
  out.utf8(JSON.stringify(header));
  out.blob(serializeVitParams(s.params));
  for (const a of s.adam.m) out.f32Array(a);
  for (const a of s.adam.v) out.f32Array(a);
  return out.finishWithChecksum();
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

export function deserializeVitTrainState(bytes: Uint8Array): VitTrainState {
  const r = openContainer(bytes, STATE_FORMAT);
  const header = readJsonHeader<StateHeader>(r, STATE_FORMAT.what);
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
    throw new InputError(`${STATE_FORMAT.what}: inconsistent header`);
  }
  const params = deserializeVitParams(r.blob());
  const sizes = vitParamArrays(params).map((a) => a.length);
  const m = sizes.map((k) => r.f32Array(k));
  const v = sizes.map((k) => r.f32Array(k));
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
