/**
 * Training a CNN: `trainMlp`'s loop (same options, hooks, result and exact resume), for conv nets with
 * batch norm.
 *
 * What differs from `train.ts`: the forward pass runs in train mode, and each step also advances the
 * running BN statistics (PyTorch's momentum rule) from the batch moments it normalised with. Those
 * statistics are not trained by Adam but are part of the parameters, so they travel in the checkpoint and
 * resume exactly like everything else.
 *
 * Reused from the MLP trainer: the Adam update (`adam.ts`), the per-epoch data order
 * (`epochPermutation`), the KD options and loss (`mlpLoss` applied to logits, see `lossOfLogits`).
 * Written again here because train.ts keeps them private or MLP-typed: option checks, the run
 * fingerprint, the fresh state, the per-row teacher entropy (`rowNegEntropy`), the loop itself, the hooks
 * and abort error types, and the checkpoint format.
 */
import { createHash } from 'node:crypto';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { InputError } from '../../util/errors';
import { adamUpdate, ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON } from '../adam';
import { ByteWriter, openContainer, readJsonHeader } from '../bytes';
import type { Dataset } from '../data';
import { datasetDigest, featureSize } from '../data';
import type { MlpTensors } from '../mlp';
import { Rng, deriveSeed } from '../rng';
import type { RngState } from '../rng';
import { tf } from '../tf';
import type { KdOptions, LossBatch, StepInfo } from '../train';
import { epochPermutation, mlpLoss } from '../train';
import type { EpochPoint, LossPoint } from '../train-state';
import type { CnnArchitecture, CnnParams } from './architecture';
import { checkCnnArchitecture, checkCnnParamsMatch, cnnSignature } from './architecture';
import type { CnnTensors } from './forward';
import { cnnAccuracyOfTensors, cnnForward, updatedRunningStats } from './forward';
import { cnnParamsDigest, deserializeCnnParams, serializeCnnParams } from './io';

export interface TrainCnnOptions {
  arch: CnnArchitecture;
  /** Starting parameters (running BN statistics included). Not modified. */
  init: CnnParams;
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
}

/** `TrainState` of `train-state.ts` with CNN parameters (running BN statistics inside `params`). */
export interface CnnTrainState {
  version: 1;
  fingerprint: string;
  step: number;
  epoch: number;
  batchIndex: number;
  params: CnnParams;
  /** Adam moments per trainable tensor, in `cnnTrainableArrays` order; `t` updates done. */
  adam: { t: number; m: Float32Array[]; v: Float32Array[] };
  rngState: RngState;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** `TrainHooks` of `train.ts`, with CNN parameters and state. */
export interface CnnTrainHooks {
  onStep?(info: StepInfo): void | Promise<void>;
  /** Called every `checkpointEvery` steps with a state that `trainCnn(…, resumeFrom)` continues exactly. */
  onCheckpoint?(state: CnnTrainState): void | Promise<void>;
  /** Polled before every step; true stops training with a `CnnTrainingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
  /** When an epoch ends, after its validation score and before that step's `onStep` / `onCheckpoint`. */
  onEpochEnd?(point: EpochPoint, params: () => Promise<CnnParams>): void | Promise<void>;
}

export interface CnnTrainResult {
  params: CnnParams;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** Training stopped because `shouldAbort` said so; `state` resumes it exactly. */
export class CnnTrainingAbortedError extends Error {
  override name = 'CnnTrainingAbortedError';
  constructor(public readonly state: CnnTrainState) {
    super(`training aborted after step ${state.step}`);
  }
}

/** A network of no layers is the identity, so `mlpLoss` of it is the training loss of given logits. */
const IDENTITY_MLP: MlpTensors = { activation: 'relu', layers: [] };

/** (1 − w)·CE + w·τ²·KL of `logits`, exactly `mlpLoss`'s objective (one definition for both families). */
export function lossOfLogits(logits: tf.Tensor2D, batch: Omit<LossBatch, 'x'>): tf.Scalar {
  return mlpLoss(IDENTITY_MLP, { ...batch, x: logits });
}

/** The tensors Adam trains, in a fixed order: per block kernel, bias[, gamma, beta]; per dense layer w, b. */
export function cnnTrainableArrays(p: CnnParams): Float32Array[] {
  const out: Float32Array[] = [];
  for (const c of p.convs) {
    out.push(c.kernel, c.bias);
    if (c.bn) out.push(c.bn.gamma, c.bn.beta);
  }
  for (const l of p.dense) out.push(l.w, l.b);
  return out;
}

function trainableShapes(p: CnnParams): number[][] {
  const out: number[][] = [];
  for (const c of p.convs) {
    out.push([c.kernelSize, c.kernelSize, c.inChannels, c.outChannels], [c.outChannels]);
    if (c.bn) out.push([c.outChannels], [c.outChannels]);
  }
  for (const l of p.dense) out.push([l.inSize, l.outSize], [l.outSize]);
  return out;
}

/** Running statistics per BN block, in block order: [mean, var, mean, var, …]. */
function runningArrays(p: CnnParams): Float32Array[] {
  return p.convs.flatMap((c) => (c.bn ? [c.bn.runningMean, c.bn.runningVar] : []));
}

/** Parameters as tensors from the flat trainable list and the running list (both in the orders above). */
function assemble(template: CnnParams, trainable: tf.Tensor[], running: tf.Tensor[]): CnnTensors {
  let t = 0;
  let r = 0;
  const next = <T extends tf.Tensor>(list: tf.Tensor[], i: number): T => {
    const x = list[i];
    if (!x) throw new Error(`trainCnn: tensor ${i} missing`);
    return x as T;
  };
  const convs: CnnTensors['convs'] = template.convs.map((c) => {
    const block: CnnTensors['convs'][number] = { kernel: next(trainable, t++), bias: next(trainable, t++) };
    if (c.bn) {
      block.bn = { gamma: next(trainable, t++), beta: next(trainable, t++), runningMean: next(running, r++), runningVar: next(running, r++) };
    }
    return block;
  });
  const dense = template.dense.map(() => ({ w: next<tf.Tensor2D>(trainable, t++), b: next<tf.Tensor1D>(trainable, t++) }));
  return { inputShape: template.inputShape, pool: template.pool, convs, dense };
}

/** Host parameters from the downloaded trainable and running arrays (orders above). */
function hostParams(template: CnnParams, trainable: Float32Array[], running: Float32Array[]): CnnParams {
  let t = 0;
  let r = 0;
  const next = (list: Float32Array[], i: number): Float32Array => list[i] ?? new Float32Array();
  return {
    family: 'cnn',
    inputShape: [template.inputShape[0], template.inputShape[1], template.inputShape[2]],
    pool: template.pool,
    convs: template.convs.map((c) => {
      const kernel = next(trainable, t++);
      const bias = next(trainable, t++);
      const block: CnnParams['convs'][number] = { kernelSize: c.kernelSize, inChannels: c.inChannels, outChannels: c.outChannels, kernel, bias };
      if (c.bn) {
        block.bn = { gamma: next(trainable, t++), beta: next(trainable, t++), runningMean: next(running, r++), runningVar: next(running, r++) };
      }
      return block;
    }),
    dense: template.dense.map((l) => ({ w: next(trainable, t++), b: next(trainable, t++), inSize: l.inSize, outSize: l.outSize })),
  };
}

function checkOptions(o: TrainCnnOptions): void {
  checkCnnArchitecture(o.arch);
  checkCnnParamsMatch(o.init, o.arch);
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
function fingerprintOf(o: TrainCnnOptions): string {
  const probsDigest = o.kd
    ? createHash('sha256').update(new Uint8Array(o.kd.teacherProbs.buffer, o.kd.teacherProbs.byteOffset, o.kd.teacherProbs.byteLength)).digest('hex')
    : null;
  return createHash('sha256')
    .update(
      JSON.stringify({
        trainer: 'trainCnn/1',
        arch: cnnSignature(o.arch),
        init: cnnParamsDigest(o.init),
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

function freshState(o: TrainCnnOptions, fingerprint: string): CnnTrainState {
  const sizes = cnnTrainableArrays(o.init).map((a) => a.length);
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
 * Trains a CNN with Adam on mini-batches (train-mode BN, running statistics updated every step),
 * optionally distilling from precomputed ensemble targets. Options, hooks, result and resume behave as in
 * `trainMlp`.
 *
 * @example
 * const { params } = await trainCnn({ arch, init: initCnn(arch, 1), train, epochs: 3, batchSize: 64,
 *   learningRate: 2e-3, seed: 7, checkpointEvery: 50 }, { onCheckpoint: (s) => save(serializeCnnTrainState(s)) });
 */
export async function trainCnn(options: TrainCnnOptions, hooks: CnnTrainHooks = {}, resumeFrom?: CnnTrainState): Promise<CnnTrainResult> {
  checkOptions(options);
  const fingerprint = fingerprintOf(options);
  if (resumeFrom && resumeFrom.fingerprint !== fingerprint) {
    throw new InputError('the checkpoint belongs to a different training run (data, initial parameters or hyper-parameters differ)');
  }
  const start = resumeFrom ?? freshState(options, fingerprint);
  checkCnnParamsMatch(start.params, options.arch);
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
  const template = options.init;
  const shapes = trainableShapes(template);

  let step = start.step;
  let epoch = start.epoch;
  let batchIndex = start.batchIndex;
  const curve = start.curve.slice();
  const epochCurve = start.epochCurve.slice();
  const rngState = start.rngState.slice();
  const upload = (a: Float32Array, shape: number[]): tf.Tensor => tf.tensor(new Float32Array(a), shape, 'float32');
  let params: tf.Tensor[] = cnnTrainableArrays(start.params).map((a, i) => upload(a, shapes[i] ?? []));
  let running: tf.Tensor[] = runningArrays(start.params).map((a) => upload(a, [a.length]));
  let m: tf.Tensor[] = start.adam.m.map((a, i) => upload(a, shapes[i] ?? []));
  let v: tf.Tensor[] = start.adam.v.map((a, i) => upload(a, shapes[i] ?? []));
  if (m.length !== params.length || v.length !== params.length) {
    tf.dispose([...params, ...running, ...m, ...v]);
    throw new InputError('the checkpoint’s optimiser state does not match the parameters');
  }

  const download = async (ts: tf.Tensor[]): Promise<Float32Array[]> => {
    const out: Float32Array[] = [];
    for (const t of ts) out.push(new Float32Array(await t.data()));
    return out;
  };
  const currentParams = async (): Promise<CnnParams> => hostParams(template, await download(params), await download(running));
  const snapshot = async (): Promise<CnnTrainState> => ({
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
      if (hooks.shouldAbort?.()) throw new CnnTrainingAbortedError(await snapshot());

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
          const current = assemble(template, ps, running);
          const { logits, batchMoments } = cnnForward(current, x, 'train');
          newRunning = updatedRunningStats(current, batchMoments).flatMap((s) => (s ? [tf.keep(s.runningMean), tf.keep(s.runningVar)] : []));
          return lossOfLogits(logits, batch);
        })(params);
        const updated = adamUpdate({ params, m, v }, grads, t, options.learningRate);
        return { loss: value, params: updated.params, m: updated.m, v: updated.v };
      });
      if (newRunning.length !== running.length) {
        tf.dispose([...newRunning, ...next.params, ...next.m, ...next.v, next.loss]);
        throw new Error('trainCnn: running statistics missing after a step');
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
        const losses = curve.slice(curve.length - stepsPerEpoch);
        const point: EpochPoint = { epoch, meanLoss: losses.reduce((s, c) => s + c.loss, 0) / losses.length };
        if (options.validation) point.valAccuracy = await cnnAccuracyOfTensors(assemble(template, params, running), options.validation);
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

const STATE_FORMAT = { magic: 'WFCS', version: 1, what: 'CNN training checkpoint' };

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
 * Checkpoint bytes (little-endian): "WFCS"  u32 version  utf8 JSON header  blob CNN parameter file
 * (running statistics included)  f32 Adam m then v per trainable tensor  sha256 trailer.
 */
export function serializeCnnTrainState(s: CnnTrainState): Uint8Array {
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
  const sizes = cnnTrainableArrays(s.params).map((a) => a.length);
  const fits = (list: Float32Array[]): boolean => list.length === sizes.length && list.every((a, i) => a.length === sizes[i]);
  if (!fits(s.adam.m) || !fits(s.adam.v)) throw new Error(`${STATE_FORMAT.what}: Adam state does not match the parameters`);
  const out = new ByteWriter();
  out.ascii(STATE_FORMAT.magic);
  out.u32(STATE_FORMAT.version);
  out.utf8(JSON.stringify(header));
  out.blob(serializeCnnParams(s.params));
  for (const a of s.adam.m) out.f32Array(a);
  for (const a of s.adam.v) out.f32Array(a);
  return out.finishWithChecksum();
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

export function deserializeCnnTrainState(bytes: Uint8Array): CnnTrainState {
  const r = openContainer(bytes, STATE_FORMAT);
  const header = readJsonHeader<StateHeader>(r, STATE_FORMAT.what);
  if (
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
  const params = deserializeCnnParams(r.blob());
  const sizes = cnnTrainableArrays(params).map((a) => a.length);
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
