/**
 * The one training loop: MLPs, CNNs, ResNets and ViTs — teachers, fine-tuning and knowledge distillation —
 * all run through `trainWith`, each family describing itself by a small `TrainFamily` adapter.
 *
 * It is checkpointable and exact: the per-epoch data order is derived from (seed, epoch), the optimiser
 * is our own Adam whose moments are plain arrays, and everything else that shapes the rest of the run
 * lives in the `TrainStateOf` checkpoint (one format for every family, train-state.ts). Resuming from a
 * checkpoint taken at step k therefore reproduces an uninterrupted run bit for bit (on deterministic
 * backends: cpu, wasm).
 *
 * Batch norm: a family may carry running statistics that Adam does not train but that every train-mode
 * step advances (PyTorch's momentum rule, from the batch moments it normalised with). They are part of
 * the parameters, so they travel in the checkpoint and resume exactly like everything else.
 *
 * The loop awaits between steps (reading the loss with `await loss.data()`, then yielding a macrotask),
 * so hooks, heartbeats and abort messages get their turn even on the synchronous wasm backend.
 */
import { createHash } from 'node:crypto';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { InputError } from '../util/errors';
import { adamUpdate, ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON } from './adam';
import type { AugmentOptions } from './augment';
import { augmentBatch } from './augment';
import type { Dataset } from './data';
import { datasetDigest, featureSize } from './data';
import type { MlpParams } from './mlp';
import { Rng, deriveSeed } from './rng';
import { tf } from './tf';
import type { CheckpointFormat, EpochPoint, LossPoint, TrainStateOf } from './train-state';

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

/** Options of every family's trainer; `A` is its architecture, `P` its host parameters. */
export interface TrainOptionsOf<A, P> {
  arch: A;
  /** Starting parameters (a fresh init, a generated student, an aligned average…; running BN statistics included). Not modified. */
  init: P;
  train: Dataset;
  epochs: number;
  batchSize: number;
  learningRate: number;
  /** Seeds the data order of every epoch. */
  seed: number;
  kd?: KdOptions;
  /** Scored (eval mode) after every epoch into `epochCurve[].valAccuracy`. */
  validation?: Dataset;
  /** Steps between `onCheckpoint` calls; 0 or absent: none. */
  checkpointEvery?: number;
  /**
   * Image augmentation of every training batch (augment.ts): example i of epoch e gets the transform drawn
   * from (seed, e, i), so a resumed run sees exactly the batches of an uninterrupted one. Absent: none.
   */
  augment?: { options: AugmentOptions; inputShape: [number, number, number] };
}

export interface StepInfo {
  /** Steps done, 1-based. */
  step: number;
  totalSteps: number;
  loss: number;
  /** Epoch this step belonged to, 0-based. */
  epoch: number;
}

export interface TrainHooksOf<P> {
  onStep?(info: StepInfo): void | Promise<void>;
  /** Called every `checkpointEvery` steps with a state that the same trainer, given it as `resumeFrom`, continues exactly. */
  onCheckpoint?(state: TrainStateOf<P>): void | Promise<void>;
  /** Polled before every step; true stops training with a `TrainingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
  /**
   * Called when an epoch ends, after its validation score and before that step's `onStep` / `onCheckpoint`
   * (so a checkpoint taken at an epoch's end already reflects what this hook did). `params()` downloads the
   * parameters as they are at the end of the epoch; call it only when needed.
   */
  onEpochEnd?(point: EpochPoint, params: () => Promise<P>): void | Promise<void>;
}

export interface TrainResultOf<P> {
  params: P;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/**
 * Training stopped because `shouldAbort` said so; `state` resumes it exactly. One class for every family
 * (`P` defaults to MLP parameters, what the name meant before the families shared the loop).
 */
export class TrainingAbortedError<P = MlpParams> extends Error {
  override name = 'TrainingAbortedError';
  constructor(public readonly state: TrainStateOf<P>) {
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
 * The training objective of every family, on logits: mean over the batch of
 * (1 − w)·CE(labels) + w·τ²·KL(teachers ‖ softmax(logits / τ)); plain CE without kd.
 */
export function lossOfLogits(logits: tf.Tensor2D, batch: Omit<LossBatch, 'x'>): tf.Scalar {
  const ce = tf.neg(tf.mean(tf.sum(tf.mul(batch.yOneHot, tf.logSoftmax(logits)), 1)));
  const kd = batch.kd;
  if (!kd) return ce as tf.Scalar;
  const logQ = tf.logSoftmax(tf.div(logits, kd.temperature));
  const kl = tf.mean(tf.sub(kd.negEntropy, tf.sum(tf.mul(kd.probs, logQ), 1)));
  return tf.add(tf.mul(ce, 1 - kd.weight), tf.mul(kl, kd.weight * kd.temperature * kd.temperature)) as tf.Scalar;
}

/** The shape of one run, as the adapter's tensor and host assembly need it. */
export interface RunShape<A, P> {
  arch: A;
  /** The starting parameters: their structure (not their values) is what flat lists are put back into. */
  init: P;
}

/**
 * What the loop needs of a model family. `A` architecture, `P` host parameters, `T` the family's
 * parameter tensors for one computation. Trainable arrays are one flat list in a fixed order (the order of
 * Adam's moments in a checkpoint); BN families add a second list of running statistics.
 */
export interface TrainFamily<A extends { outputSize: number }, P, T> extends CheckpointFormat<P> {
  /** Names the trainer in the run fingerprint ("trainCnn/1"): a checkpoint of another trainer is refused. */
  trainer: string;
  checkArchitecture(arch: A): void;
  checkParamsMatch(p: P, arch: A): void;
  signature(arch: A): string;
  /** Content address of parameters (part of the fingerprint). */
  paramsDigest(p: P): string;
  /** Features per example, and how an error message spells them ("784", "28×28×1 = 784"). */
  inputSize(arch: A): { size: number; text: string };
  /** Tensor shapes of `trainableArrays(p)`, same order. */
  trainableShapes(p: P): number[][];
  /** Running BN statistics, not trained by Adam, in the order `trainForward` returns their updates; absent: none. */
  runningArrays?(p: P): Float32Array[];
  /** The family's tensors from the flat lists, taken as they are (not copied). */
  tensors(run: RunShape<A, P>, trainable: tf.Tensor[], running: tf.Tensor[]): T;
  /** Train-mode logits and, for BN families, the running statistics after this step (`runningArrays` order). */
  trainForward(t: T, x: tf.Tensor2D): { logits: tf.Tensor2D; running?: tf.Tensor[] };
  /** Eval-mode top-1 accuracy on `ds` (the per-epoch validation score). */
  accuracyOfTensors(t: T, ds: Dataset): Promise<number>;
  /** Host parameters from the downloaded flat lists (orders above). */
  hostParams(run: RunShape<A, P>, trainable: Float32Array[], running: Float32Array[]): P;
}

/** `inputSize` of the image families: inputs are h×w×c, flattened HWC in the dataset. */
export function imageInputSize(inputShape: readonly [number, number, number]): { size: number; text: string } {
  const [h, w, c] = inputShape;
  return { size: h * w * c, text: `${h}×${w}×${c} = ${h * w * c}` };
}

function checkOptions<A extends { outputSize: number }, P, T>(family: TrainFamily<A, P, T>, o: TrainOptionsOf<A, P>): void {
  family.checkArchitecture(o.arch);
  family.checkParamsMatch(o.init, o.arch);
  const positiveInt = (name: string, v: number, min: number): void => {
    if (!Number.isInteger(v) || v < min) throw new InputError(`${name} must be an integer ≥ ${min}, got ${v}`);
  };
  positiveInt('epochs', o.epochs, 0);
  positiveInt('batchSize', o.batchSize, 1);
  positiveInt('checkpointEvery', o.checkpointEvery ?? 0, 0);
  if (!(o.learningRate > 0) || !Number.isFinite(o.learningRate)) throw new InputError(`learningRate must be positive, got ${o.learningRate}`);
  if (o.train.n < 1) throw new InputError('the training set is empty');
  const input = family.inputSize(o.arch);
  if (o.augment) {
    const [h, w, c] = o.augment.inputShape;
    if (h * w * c !== input.size) throw new InputError(`augmentation of ${h}×${w}×${c} images, but the model takes ${input.text}`);
  }
  if (featureSize(o.train) !== input.size) {
    throw new InputError(`training data has ${featureSize(o.train)} features but the model takes ${input.text}`);
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

/**
 * Everything that determines the run; a checkpoint from another run must not be resumed here. The JSON
 * (keys and their order) is what each family's trainer always hashed, so existing checkpoints still fit.
 */
function fingerprintOf<A extends { outputSize: number }, P, T>(family: TrainFamily<A, P, T>, o: TrainOptionsOf<A, P>): string {
  const probsDigest = o.kd
    ? createHash('sha256').update(new Uint8Array(o.kd.teacherProbs.buffer, o.kd.teacherProbs.byteOffset, o.kd.teacherProbs.byteLength)).digest('hex')
    : null;
  return createHash('sha256')
    .update(
      JSON.stringify({
        trainer: family.trainer,
        arch: family.signature(o.arch),
        init: family.paramsDigest(o.init),
        train: datasetDigest(o.train),
        validation: o.validation ? datasetDigest(o.validation) : null,
        epochs: o.epochs,
        batchSize: o.batchSize,
        learningRate: o.learningRate,
        seed: o.seed,
        kd: o.kd ? { weight: o.kd.weight, temperature: o.kd.temperature, probs: probsDigest } : null,
        adam: [ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON],
        // Only when set, so runs without augmentation keep the fingerprints they always had.
        ...(o.augment ? { augment: { flip: o.augment.options.flip, cropPadding: o.augment.options.cropPadding, inputShape: o.augment.inputShape } } : {}),
      }),
    )
    .digest('hex');
}

/** The data order of one epoch: a function of (seed, epoch) only, so a checkpoint needs just the position. */
export function epochPermutation(seed: number, epoch: number, n: number): Int32Array {
  return new Rng(deriveSeed(seed, 'epoch-order', epoch)).permutation(n);
}

function freshState<A extends { outputSize: number }, P, T>(family: TrainFamily<A, P, T>, o: TrainOptionsOf<A, P>, fingerprint: string): TrainStateOf<P> {
  const sizes = family.trainableArrays(o.init).map((a) => a.length);
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
 * Trains a model of `family` with Adam on mini-batches, optionally distilling from precomputed ensemble
 * targets; resumes exactly from `resumeFrom`. The families' trainers (`trainMlp`, `trainCnn`,
 * `trainResnet`, `trainVit`) are this with their adapter.
 */
export async function trainWith<A extends { outputSize: number }, P, T>(
  family: TrainFamily<A, P, T>,
  options: TrainOptionsOf<A, P>,
  hooks: TrainHooksOf<P> = {},
  resumeFrom?: TrainStateOf<P>,
): Promise<TrainResultOf<P>> {
  checkOptions(family, options);
  const fingerprint = fingerprintOf(family, options);
  if (resumeFrom && resumeFrom.fingerprint !== fingerprint) {
    throw new InputError('the checkpoint belongs to a different training run (data, initial parameters or hyper-parameters differ)');
  }
  const start = resumeFrom ?? freshState(family, options, fingerprint);
  family.checkParamsMatch(start.params, options.arch);
  const { train, batchSize, epochs } = options;
  const n = train.n;
  const d = featureSize(train);
  const classes = options.arch.outputSize;
  const stepsPerEpoch = Math.ceil(n / batchSize);
  const totalSteps = epochs * stepsPerEpoch;
  if (start.batchIndex >= stepsPerEpoch || start.step !== start.epoch * stepsPerEpoch + start.batchIndex) {
    throw new InputError('the checkpoint position does not fit this run');
  }
  const shapes = family.trainableShapes(options.init);
  if (start.adam.m.length !== shapes.length || start.adam.v.length !== shapes.length) {
    throw new InputError('the checkpoint’s optimiser state does not match the parameters');
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
  let params: tf.Tensor[] = family.trainableArrays(start.params).map((a, i) => upload(a, shapes[i] ?? []));
  let running: tf.Tensor[] = (family.runningArrays?.(start.params) ?? []).map((a) => upload(a, [a.length]));
  let m: tf.Tensor[] = start.adam.m.map((a, i) => upload(a, shapes[i] ?? []));
  let v: tf.Tensor[] = start.adam.v.map((a, i) => upload(a, shapes[i] ?? []));

  const download = async (ts: tf.Tensor[]): Promise<Float32Array[]> => {
    const out: Float32Array[] = [];
    for (const t of ts) out.push(new Float32Array(await t.data()));
    return out;
  };
  const currentParams = async (): Promise<P> => family.hostParams(options, await download(params), await download(running));
  const snapshot = async (): Promise<TrainStateOf<P>> => ({
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
      if (hooks.shouldAbort?.()) throw new TrainingAbortedError<P>(await snapshot());

      const from = batchIndex * batchSize;
      const rows = Math.min(batchSize, n - from);
      let xb: Float32Array = new Float32Array(rows * d);
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

      if (options.augment) {
        xb = augmentBatch(xb, options.augment.inputShape, rows, options.augment.options, options.seed, epoch, order.subarray(from, from + rows));
      }

      const t = step + 1;
      // Running statistics come out of the differentiated forward pass, whose intermediates tfjs frees on
      // return; `tf.keep` saves the new ones (owned here, freed when replaced).
      let newRunning: tf.Tensor[] = [];
      const next = tf.tidy(() => {
        const x = tf.tensor2d(xb, [rows, d]);
        const batch: Omit<LossBatch, 'x'> = {
          yOneHot: tf.tensor2d(yb, [rows, classes]),
          ...(options.kd && pb && hb
            ? { kd: { probs: tf.tensor2d(pb, [rows, classes]), negEntropy: tf.tensor1d(hb), weight: options.kd.weight, temperature: options.kd.temperature } }
            : {}),
        };
        const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) => {
          const forward = family.trainForward(family.tensors(options, ps, running), x);
          newRunning = (forward.running ?? []).map((s) => tf.keep(s));
          return lossOfLogits(forward.logits, batch);
        })(params);
        const updated = adamUpdate({ params, m, v }, grads, t, options.learningRate);
        return { loss: value, params: updated.params, m: updated.m, v: updated.v };
      });
      if (newRunning.length !== running.length) {
        tf.dispose([...newRunning, ...next.params, ...next.m, ...next.v, next.loss]);
        throw new Error(`${family.trainer}: running statistics missing after a step`);
      }
      tf.dispose([...params, ...m, ...v, ...running]);
      params = next.params;
      m = next.m;
      v = next.v;
      running = newRunning;
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
        if (options.validation) point.valAccuracy = await family.accuracyOfTensors(family.tensors(options, params, running), options.validation);
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
    tf.dispose([...params, ...running, ...m, ...v]);
  }
}
