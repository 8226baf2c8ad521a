/**
 * The one trainer: teachers, fine-tuning and knowledge distillation all run through `trainMlp`.
 *
 * It is checkpointable and exact: the per-epoch data order is derived from (seed, epoch), the optimiser
 * is our own Adam whose moments are plain arrays, and everything else that shapes the rest of the run
 * lives in `TrainState`. Resuming from a checkpoint taken at step k therefore reproduces an uninterrupted
 * run bit for bit (on deterministic backends: cpu, wasm).
 *
 * The loop awaits between steps (reading the loss with `await loss.data()`, then yielding a macrotask),
 * so hooks, heartbeats and abort messages get their turn even on the synchronous wasm backend.
 */
import { createHash } from 'node:crypto';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import type { ArchitectureSpec } from '../spec/types';
import { InputError } from '../util/errors';
import { adamUpdate, ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON } from './adam';
import type { Dataset } from './data';
import { datasetDigest, featureSize } from './data';
import type { MlpParams, MlpTensors } from './mlp';
import { accuracyOfTensors, architectureSignature, checkArchitecture, checkParamsMatch, mlpLogits } from './mlp';
import { paramsDigest } from './params-io';
import { Rng, deriveSeed } from './rng';
import { tf } from './tf';
import type { EpochPoint, LossPoint, TrainState } from './train-state';
import { tensorSizes } from './train-state';

export type { EpochPoint, LossPoint, TrainState } from './train-state';
export { serializeTrainState, deserializeTrainState } from './train-state';

/** Distillation from an ensemble whose soft targets were computed once, before training. */
export interface KdOptions {
  /**
   * n × classes: the mean over teachers of softmax(teacher logits / temperature) on the training set, in
   * the training set's order (`ensembleProbs(teachers, train, temperature)`).
   */
  teacherProbs: Float32Array;
  /** Weight of the KD term; cross-entropy on labels gets 1 − weight. */
  weight: number;
  /** Softening temperature τ; the KD term is τ²·KL(teachers ‖ softmax(student / τ)), as in Hinton et al. */
  temperature: number;
}

export interface TrainMlpOptions {
  arch: ArchitectureSpec;
  /** Starting parameters (a fresh `initMlp`, a generated student, an aligned average…). Not modified. */
  init: MlpParams;
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

export interface StepInfo {
  /** Steps done, 1-based. */
  step: number;
  totalSteps: number;
  loss: number;
  /** Epoch this step belonged to, 0-based. */
  epoch: number;
}

export interface TrainHooks {
  onStep?(info: StepInfo): void | Promise<void>;
  /** Called every `checkpointEvery` steps with a state that `trainMlp(…, resumeFrom)` continues exactly. */
  onCheckpoint?(state: TrainState): void | Promise<void>;
  /** Polled before every step; true stops training with a `TrainingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
  /**
   * Called when an epoch ends, after its validation score and before that step's `onStep` / `onCheckpoint`
   * (so a checkpoint taken at an epoch's end already reflects what this hook did). `params()` downloads the
   * parameters as they are at the end of the epoch; call it only when needed.
   */
  onEpochEnd?(point: EpochPoint, params: () => Promise<MlpParams>): void | Promise<void>;
}

export interface TrainResult {
  params: MlpParams;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** Training stopped because `shouldAbort` said so; `state` resumes it exactly. */
export class TrainingAbortedError extends Error {
  override name = 'TrainingAbortedError';
  constructor(public readonly state: TrainState) {
    super(`training aborted after step ${state.step}`);
  }
}

/** Loss on one batch, as a function of the parameter tensors (so it can be differentiated). */
export interface LossBatch {
  x: tf.Tensor2D;
  /** One-hot labels, batch × classes. */
  yOneHot: tf.Tensor2D;
  kd?: {
    /** Teachers' softened probabilities for the batch, batch × classes. */
    probs: tf.Tensor2D;
    /** Σ p·log p of each row of `probs` (constant; makes the reported KD term a true KL ≥ 0). */
    negEntropy: tf.Tensor1D;
    weight: number;
    temperature: number;
  };
}

/**
 * Mean over the batch of (1 − w)·CE(labels) + w·τ²·KL(teachers ‖ softmax(logits / τ)); plain CE without kd.
 */
export function mlpLoss(t: MlpTensors, batch: LossBatch): tf.Scalar {
  const logits = mlpLogits(t, batch.x);
  const ce = tf.neg(tf.mean(tf.sum(tf.mul(batch.yOneHot, tf.logSoftmax(logits)), 1)));
  const kd = batch.kd;
  if (!kd) return ce as tf.Scalar;
  const logQ = tf.logSoftmax(tf.div(logits, kd.temperature));
  const kl = tf.mean(tf.sub(kd.negEntropy, tf.sum(tf.mul(kd.probs, logQ), 1)));
  return tf.add(tf.mul(ce, 1 - kd.weight), tf.mul(kl, kd.weight * kd.temperature * kd.temperature)) as tf.Scalar;
}

function checkOptions(o: TrainMlpOptions): void {
  checkArchitecture(o.arch);
  checkParamsMatch(o.init, o.arch);
  const positiveInt = (name: string, v: number, min: number): void => {
    if (!Number.isInteger(v) || v < min) throw new InputError(`${name} must be an integer ≥ ${min}, got ${v}`);
  };
  positiveInt('epochs', o.epochs, 0);
  positiveInt('batchSize', o.batchSize, 1);
  positiveInt('checkpointEvery', o.checkpointEvery ?? 0, 0);
  if (!(o.learningRate > 0) || !Number.isFinite(o.learningRate)) throw new InputError(`learningRate must be positive, got ${o.learningRate}`);
  if (o.train.n < 1) throw new InputError('the training set is empty');
  if (featureSize(o.train) !== o.arch.inputSize) {
    throw new InputError(`training data has ${featureSize(o.train)} features but the model takes ${o.arch.inputSize}`);
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
function fingerprintOf(o: TrainMlpOptions): string {
  const probsDigest = o.kd
    ? createHash('sha256').update(new Uint8Array(o.kd.teacherProbs.buffer, o.kd.teacherProbs.byteOffset, o.kd.teacherProbs.byteLength)).digest('hex')
    : null;
  return createHash('sha256')
    .update(
      JSON.stringify({
        trainer: 'trainMlp/1',
        arch: architectureSignature(o.arch),
        init: paramsDigest(o.init),
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

/** The data order of one epoch: a function of (seed, epoch) only, so a checkpoint needs just the position. */
export function epochPermutation(seed: number, epoch: number, n: number): Int32Array {
  return new Rng(deriveSeed(seed, 'epoch-order', epoch)).permutation(n);
}

function freshState(o: TrainMlpOptions, fingerprint: string): TrainState {
  const sizes = tensorSizes(o.init);
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

/** Σ p·log p per row (0·log 0 = 0), in float64, rounded once to float32. */
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
 * Trains an MLP with Adam on mini-batches, optionally distilling from precomputed ensemble targets.
 *
 * @example
 * const { params, curve } = await trainMlp(
 *   { arch, init: initMlp(arch, deriveSeed(seed, 'init', i)), train: shard, epochs: 3, batchSize: 64,
 *     learningRate: 1e-3, seed: deriveSeed(seed, 'teacher', i), checkpointEvery: 50 },
 *   { onStep: (s) => heartbeat(s), onCheckpoint: (st) => save(serializeTrainState(st)), shouldAbort: () => cancelled },
 *   resumeFrom,
 * );
 */
export async function trainMlp(options: TrainMlpOptions, hooks: TrainHooks = {}, resumeFrom?: TrainState): Promise<TrainResult> {
  checkOptions(options);
  const fingerprint = fingerprintOf(options);
  if (resumeFrom && resumeFrom.fingerprint !== fingerprint) {
    throw new InputError('the checkpoint belongs to a different training run (data, initial parameters or hyper-parameters differ)');
  }
  const start = resumeFrom ?? freshState(options, fingerprint);
  const { train, batchSize, epochs } = options;
  const n = train.n;
  const d = featureSize(train);
  const classes = options.arch.outputSize;
  const stepsPerEpoch = Math.ceil(n / batchSize);
  const totalSteps = epochs * stepsPerEpoch;
  if (start.batchIndex >= stepsPerEpoch || start.step !== start.epoch * stepsPerEpoch + start.batchIndex) {
    throw new InputError('the checkpoint position does not fit this run');
  }
  const negEntropy = options.kd ? rowNegEntropy(options.kd.teacherProbs, n, classes) : undefined;

  // Mutable run state; the tensors are replaced (and the old ones freed) at every step.
  let step = start.step;
  let epoch = start.epoch;
  let batchIndex = start.batchIndex;
  const curve = start.curve.slice();
  const epochCurve = start.epochCurve.slice();
  const rngState = start.rngState.slice();
  const upload = (a: Float32Array, shape: number[]): tf.Tensor => tf.tensor(new Float32Array(a), shape, 'float32');
  const shapes = options.init.layers.flatMap((l) => [[l.inSize, l.outSize], [l.outSize]]);
  let params: tf.Tensor[] = start.params.layers.flatMap((l, i) => [upload(l.w, shapes[2 * i] ?? []), upload(l.b, shapes[2 * i + 1] ?? [])]);
  let m: tf.Tensor[] = start.adam.m.map((a, i) => upload(a, shapes[i] ?? []));
  let v: tf.Tensor[] = start.adam.v.map((a, i) => upload(a, shapes[i] ?? []));
  const asMlp = (flat: tf.Tensor[]): MlpTensors => ({
    activation: options.arch.activation,
    layers: options.init.layers.map((_, i) => ({ w: flat[2 * i] as tf.Tensor2D, b: flat[2 * i + 1] as tf.Tensor1D })),
  });

  const download = async (ts: tf.Tensor[]): Promise<Float32Array[]> => {
    const out: Float32Array[] = [];
    for (const t of ts) out.push(new Float32Array(await t.data()));
    return out;
  };
  const currentParams = async (): Promise<MlpParams> => {
    const p = await download(params);
    return {
      activation: options.arch.activation,
      layers: options.init.layers.map((l, i) => ({ w: p[2 * i] ?? new Float32Array(), b: p[2 * i + 1] ?? new Float32Array(), inSize: l.inSize, outSize: l.outSize })),
    };
  };
  const snapshot = async (): Promise<TrainState> => {
    return {
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
    };
  };

  try {
    let order = epoch < epochs ? epochPermutation(options.seed, epoch, n) : new Int32Array();
    while (epoch < epochs) {
      if (hooks.shouldAbort?.()) throw new TrainingAbortedError(await snapshot());

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
        const batch: LossBatch = {
          x: tf.tensor2d(xb, [rows, d]),
          yOneHot: tf.tensor2d(yb, [rows, classes]),
          ...(options.kd && pb && hb
            ? { kd: { probs: tf.tensor2d(pb, [rows, classes]), negEntropy: tf.tensor1d(hb), weight: options.kd.weight, temperature: options.kd.temperature } }
            : {}),
        };
        const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) => mlpLoss(asMlp(ps), batch))(params);
        const updated = adamUpdate({ params, m, v }, grads, t, options.learningRate);
        return { loss: value, params: updated.params, m: updated.m, v: updated.v };
      });
      for (const old of [...params, ...m, ...v]) old.dispose();
      params = next.params;
      m = next.m;
      v = next.v;
      const loss = (await next.loss.data())[0] ?? NaN;
      next.loss.dispose();
      if (!Number.isFinite(loss)) {
        throw new InputError(`training diverged at step ${t} (loss ${loss}); lower the learning rate`);
      }

      step = t;
      curve.push({ step, loss });
      const stepEpoch = epoch;
      batchIndex++;
      if (batchIndex === stepsPerEpoch) {
        // Epoch bookkeeping happens before the checkpoint, so a checkpoint at an epoch's end includes it.
        const losses = curve.slice(curve.length - stepsPerEpoch);
        const point: EpochPoint = { epoch, meanLoss: losses.reduce((s, c) => s + c.loss, 0) / losses.length };
        if (options.validation) point.valAccuracy = await accuracyOfTensors(asMlp(params), options.validation);
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
    for (const t of [...params, ...m, ...v]) t.dispose();
  }
}
