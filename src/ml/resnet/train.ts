/**
 * Training a ResNet: `trainCnn`'s loop (same options, hooks, result and exact resume) over the ResNet's
 * parameters.
 *
 * Reused: the Adam update (`adam.ts`), the per-epoch data order (`epochPermutation`), the loss of logits
 * (`lossOfLogits` of the CNN module, i.e. `mlpLoss`'s CE + KD objective), the KD/step/loss types.
 * Written again (trainCnn is typed to `CnnParams` and keeps these private; cnn/ is not ours to change):
 * option checks, the run fingerprint, the fresh state, the per-row teacher entropy, the loop, the hooks
 * and abort error types, and the checkpoint format. They follow cnn/train.ts line for line, so a later
 * generic BN trainer can replace both.
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
import type { ResnetArchitecture, ResnetConv, ResnetParams } from './architecture';
import { checkResnetArchitecture, checkResnetParamsMatch, resnetConvs, resnetSignature } from './architecture';
import type { ResnetConvTensors, ResnetTensors } from './forward';
import { resnetAccuracyOfTensors, resnetForward, updatedResnetRunningStats } from './forward';
import { deserializeResnetParams, resnetParamsDigest, serializeResnetParams } from './io';

export interface TrainResnetOptions {
  arch: ResnetArchitecture;
  /** Starting parameters (running BN statistics included). Not modified. */
  init: ResnetParams;
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

/** `CnnTrainState` with ResNet parameters (running BN statistics inside `params`). */
export interface ResnetTrainState {
  version: 1;
  fingerprint: string;
  step: number;
  epoch: number;
  batchIndex: number;
  params: ResnetParams;
  /** Adam moments per trainable tensor, in `resnetTrainableArrays` order; `t` updates done. */
  adam: { t: number; m: Float32Array[]; v: Float32Array[] };
  rngState: RngState;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** `CnnTrainHooks` with ResNet parameters and state. */
export interface ResnetTrainHooks {
  onStep?(info: StepInfo): void | Promise<void>;
  /** Called every `checkpointEvery` steps with a state that `trainResnet(…, resumeFrom)` continues exactly. */
  onCheckpoint?(state: ResnetTrainState): void | Promise<void>;
  /** Polled before every step; true stops training with a `ResnetTrainingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
  /** When an epoch ends, after its validation score and before that step's `onStep` / `onCheckpoint`. */
  onEpochEnd?(point: EpochPoint, params: () => Promise<ResnetParams>): void | Promise<void>;
}

export interface ResnetTrainResult {
  params: ResnetParams;
  curve: LossPoint[];
  epochCurve: EpochPoint[];
}

/** Training stopped because `shouldAbort` said so; `state` resumes it exactly. */
export class ResnetTrainingAbortedError extends Error {
  override name = 'ResnetTrainingAbortedError';
  constructor(public readonly state: ResnetTrainState) {
    super(`training aborted after step ${state.step}`);
  }
}

/** The tensors Adam trains, in a fixed order: per conv (`resnetConvs` order) kernel, bias, γ, β; head w, b. */
export function resnetTrainableArrays(p: ResnetParams): Float32Array[] {
  const out = resnetConvs(p).flatMap((c) => [c.kernel, c.bias, c.bn.gamma, c.bn.beta]);
  out.push(p.head.w, p.head.b);
  return out;
}

function trainableShapes(p: ResnetParams): number[][] {
  const out = resnetConvs(p).flatMap((c) => [[c.kernelSize, c.kernelSize, c.inChannels, c.outChannels], [c.outChannels], [c.outChannels], [c.outChannels]]);
  out.push([p.head.inSize, p.head.outSize], [p.head.outSize]);
  return out;
}

/** Running statistics per conv, in `resnetConvs` order: [mean, var, mean, var, …]. */
function runningArrays(p: ResnetParams): Float32Array[] {
  return resnetConvs(p).flatMap((c) => [c.bn.runningMean, c.bn.runningVar]);
}

/**
 * Rebuilds the nested structure of `template` from flat lists: `conv(i)` makes conv i (`resnetConvs`
 * order), `head()` the head. Shared by the tensor and the host assembly below.
 */
function nest<C, H>(template: ResnetParams, conv: (i: number) => C, head: () => H): { stem: C; stages: Array<Array<{ conv1: C; conv2: C }>>; head: H } {
  let i = 0;
  const stem = conv(i++);
  const stages = template.stages.map((stage) => stage.map(() => ({ conv1: conv(i++), conv2: conv(i++) })));
  return { stem, stages, head: head() };
}

/** Parameters as tensors from the flat trainable list and the running list (both in the orders above). */
function assemble(template: ResnetParams, trainable: tf.Tensor[], running: tf.Tensor[]): ResnetTensors {
  const get = <T extends tf.Tensor>(list: tf.Tensor[], i: number): T => {
    const x = list[i];
    if (!x) throw new Error(`trainResnet: tensor ${i} missing`);
    return x as T;
  };
  const convCount = resnetConvs(template).length;
  const nested = nest(
    template,
    (i): ResnetConvTensors => ({
      kernel: get(trainable, 4 * i),
      bias: get(trainable, 4 * i + 1),
      bn: { gamma: get(trainable, 4 * i + 2), beta: get(trainable, 4 * i + 3), runningMean: get(running, 2 * i), runningVar: get(running, 2 * i + 1) },
    }),
    () => ({ w: get<tf.Tensor2D>(trainable, 4 * convCount), b: get<tf.Tensor1D>(trainable, 4 * convCount + 1) }),
  );
  return { inputShape: template.inputShape, ...nested };
}

/** Host parameters from the downloaded trainable and running arrays (orders above). */
function hostParams(template: ResnetParams, trainable: Float32Array[], running: Float32Array[]): ResnetParams {
  const get = (list: Float32Array[], i: number): Float32Array => list[i] ?? new Float32Array();
  const convs = resnetConvs(template);
  const nested = nest(
    template,
    (i): ResnetConv => {
      const c = convs[i] as ResnetConv;
      return {
        kernelSize: c.kernelSize,
        inChannels: c.inChannels,
        outChannels: c.outChannels,
        kernel: get(trainable, 4 * i),
        bias: get(trainable, 4 * i + 1),
        bn: { gamma: get(trainable, 4 * i + 2), beta: get(trainable, 4 * i + 3), runningMean: get(running, 2 * i), runningVar: get(running, 2 * i + 1) },
      };
    },
    () => ({ w: get(trainable, 4 * convs.length), b: get(trainable, 4 * convs.length + 1), inSize: template.head.inSize, outSize: template.head.outSize }),
  );
  return { family: 'resnet', inputShape: [template.inputShape[0], template.inputShape[1], template.inputShape[2]], ...nested };
}

function checkOptions(o: TrainResnetOptions): void {
  checkResnetArchitecture(o.arch);
  checkResnetParamsMatch(o.init, o.arch);
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
function fingerprintOf(o: TrainResnetOptions): string {
  const probsDigest = o.kd
    ? createHash('sha256').update(new Uint8Array(o.kd.teacherProbs.buffer, o.kd.teacherProbs.byteOffset, o.kd.teacherProbs.byteLength)).digest('hex')
    : null;
  return createHash('sha256')
    .update(
      JSON.stringify({
        trainer: 'trainResnet/1',
        arch: resnetSignature(o.arch),
        init: resnetParamsDigest(o.init),
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

function freshState(o: TrainResnetOptions, fingerprint: string): ResnetTrainState {
  const sizes = resnetTrainableArrays(o.init).map((a) => a.length);
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
 * Trains a ResNet with Adam on mini-batches (train-mode BN, running statistics updated every step),
 * optionally distilling from precomputed ensemble targets. Options, hooks, result and resume behave as in
 * `trainCnn`.
 *
 * @example
 * const { params } = await trainResnet({ arch, init: initResnet(arch, 1), train, epochs: 3, batchSize: 32,
 *   learningRate: 3e-3, seed: 7, checkpointEvery: 50 }, { onCheckpoint: (s) => save(serializeResnetTrainState(s)) });
 */
export async function trainResnet(options: TrainResnetOptions, hooks: ResnetTrainHooks = {}, resumeFrom?: ResnetTrainState): Promise<ResnetTrainResult> {
  checkOptions(options);
  const fingerprint = fingerprintOf(options);
  if (resumeFrom && resumeFrom.fingerprint !== fingerprint) {
    throw new InputError('the checkpoint belongs to a different training run (data, initial parameters or hyper-parameters differ)');
  }
  const start = resumeFrom ?? freshState(options, fingerprint);
  checkResnetParamsMatch(start.params, options.arch);
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
  let params: tf.Tensor[] = resnetTrainableArrays(start.params).map((a, i) => upload(a, shapes[i] ?? []));
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
  const currentParams = async (): Promise<ResnetParams> => hostParams(template, await download(params), await download(running));
  const snapshot = async (): Promise<ResnetTrainState> => ({
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
      if (hooks.shouldAbort?.()) throw new ResnetTrainingAbortedError(await snapshot());

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
          const { logits, batchMoments } = resnetForward(current, x, 'train');
          newRunning = updatedResnetRunningStats(current, batchMoments).flatMap((s) => [tf.keep(s.runningMean), tf.keep(s.runningVar)]);
          return lossOfLogits(logits, batch);
        })(params);
        const updated = adamUpdate({ params, m, v }, grads, t, options.learningRate);
        return { loss: value, params: updated.params, m: updated.m, v: updated.v };
      });
      if (newRunning.length !== running.length) {
        tf.dispose([...newRunning, ...next.params, ...next.m, ...next.v, next.loss]);
        throw new Error('trainResnet: running statistics missing after a step');
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
        if (options.validation) point.valAccuracy = await resnetAccuracyOfTensors(assemble(template, params, running), options.validation);
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

const STATE_FORMAT = { magic: 'WFRS', version: 1, what: 'ResNet training checkpoint' };

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
 * Checkpoint bytes (little-endian): "WFRS"  u32 version  utf8 JSON header  blob ResNet parameter file
 * (running statistics included)  f32 Adam m then v per trainable tensor  sha256 trailer.
 */
export function serializeResnetTrainState(s: ResnetTrainState): Uint8Array {
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
  const sizes = resnetTrainableArrays(s.params).map((a) => a.length);
  const fits = (list: Float32Array[]): boolean => list.length === sizes.length && list.every((a, i) => a.length === sizes[i]);
  if (!fits(s.adam.m) || !fits(s.adam.v)) throw new Error(`${STATE_FORMAT.what}: Adam state does not match the parameters`);
  const out = new ByteWriter();
  out.ascii(STATE_FORMAT.magic);
  out.u32(STATE_FORMAT.version);
  out.utf8(JSON.stringify(header));
  out.blob(serializeResnetParams(s.params));
  for (const a of s.adam.m) out.f32Array(a);
  for (const a of s.adam.v) out.f32Array(a);
  return out.finishWithChecksum();
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

export function deserializeResnetTrainState(bytes: Uint8Array): ResnetTrainState {
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
  const params = deserializeResnetParams(r.blob());
  const sizes = resnetTrainableArrays(params).map((a) => a.length);
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
