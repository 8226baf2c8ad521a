/**
 * Training a ResNet: the shared loop of train-engine.ts (same options, hooks, result, abort error and
 * exact resume as `trainMlp` and `trainCnn`) with the ResNet adapter below: train-mode BN on every conv,
 * running statistics advanced every step (as for CNNs).
 */
import { tf } from '../tf';
import { imageInputSize, trainWith, TrainingAbortedError } from '../train-engine';
import type { TrainFamily, TrainHooksOf, TrainOptionsOf, TrainResultOf } from '../train-engine';
import { deserializeCheckpoint, serializeCheckpoint } from '../train-state';
import type { TrainStateOf } from '../train-state';
import type { ResnetArchitecture, ResnetConv, ResnetParams } from './architecture';
import { checkResnetArchitecture, checkResnetParamsMatch, resnetConvs, resnetSignature } from './architecture';
import type { ResnetConvTensors, ResnetTensors } from './forward';
import { resnetAccuracyOfTensors, resnetForward, updatedResnetRunningStats } from './forward';
import { deserializeResnetParams, resnetParamsDigest, serializeResnetParams } from './io';

export type TrainResnetOptions = TrainOptionsOf<ResnetArchitecture, ResnetParams>;
/** The shared `TrainStateOf` with ResNet parameters (running BN statistics inside `params`). */
export type ResnetTrainState = TrainStateOf<ResnetParams>;
export type ResnetTrainHooks = TrainHooksOf<ResnetParams>;
export type ResnetTrainResult = TrainResultOf<ResnetParams>;
/** The shared `TrainingAbortedError`, under the name this module exported before the families shared it. */
export const ResnetTrainingAbortedError = TrainingAbortedError;
export type ResnetTrainingAbortedError = TrainingAbortedError<ResnetParams>;

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

const RESNET_TRAINING: TrainFamily<ResnetArchitecture, ResnetParams, ResnetTensors> = {
  trainer: 'trainResnet/1',
  magic: 'WFRS',
  what: 'ResNet training checkpoint',
  serializeParams: serializeResnetParams,
  deserializeParams: deserializeResnetParams,
  checkArchitecture: checkResnetArchitecture,
  checkParamsMatch: checkResnetParamsMatch,
  signature: resnetSignature,
  paramsDigest: resnetParamsDigest,
  inputSize: (arch) => imageInputSize(arch.inputShape),
  trainableArrays: resnetTrainableArrays,
  trainableShapes,
  runningArrays,
  tensors: ({ init }, trainable, running) => assemble(init, trainable, running),
  trainForward: (t, x) => {
    const { logits, batchMoments } = resnetForward(t, x, 'train');
    return { logits, running: updatedResnetRunningStats(t, batchMoments).flatMap((s) => [s.runningMean, s.runningVar]) };
  },
  accuracyOfTensors: resnetAccuracyOfTensors,
  hostParams: ({ init }, trainable, running) => hostParams(init, trainable, running),
};

/**
 * Trains a ResNet with Adam on mini-batches (train-mode BN, running statistics updated every step),
 * optionally distilling from precomputed ensemble targets. Options, hooks, result and resume behave as in
 * `trainCnn`.
 *
 * @example
 * const { params } = await trainResnet({ arch, init: initResnet(arch, 1), train, epochs: 3, batchSize: 32,
 *   learningRate: 3e-3, seed: 7, checkpointEvery: 50 }, { onCheckpoint: (s) => save(serializeResnetTrainState(s)) });
 */
export function trainResnet(options: TrainResnetOptions, hooks: ResnetTrainHooks = {}, resumeFrom?: ResnetTrainState): Promise<ResnetTrainResult> {
  return trainWith(RESNET_TRAINING, options, hooks, resumeFrom);
}

/** Checkpoint bytes: the shared layout of train-state.ts under "WFRS", the ResNet parameter file inside. */
export function serializeResnetTrainState(s: ResnetTrainState): Uint8Array {
  return serializeCheckpoint(RESNET_TRAINING, s);
}

export function deserializeResnetTrainState(bytes: Uint8Array): ResnetTrainState {
  return deserializeCheckpoint(RESNET_TRAINING, bytes);
}
