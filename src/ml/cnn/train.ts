/**
 * Training a CNN: the shared loop of train-engine.ts (same options, hooks, result, abort error and exact
 * resume as `trainMlp`) with the CNN adapter below.
 *
 * What the adapter adds: the forward pass runs in train mode, and each step also advances the running BN
 * statistics (PyTorch's momentum rule) from the batch moments it normalised with; the engine keeps them
 * as parameters that Adam does not train, so they travel in the checkpoint and resume exactly.
 */
import { trainWith, imageInputSize, TrainingAbortedError } from '../train-engine';
import type { TrainFamily, TrainHooksOf, TrainOptionsOf, TrainResultOf } from '../train-engine';
import { deserializeCheckpoint, serializeCheckpoint } from '../train-state';
import type { TrainStateOf } from '../train-state';
import { tf } from '../tf';
import type { CnnArchitecture, CnnParams } from './architecture';
import { checkCnnArchitecture, checkCnnParamsMatch, cnnSignature } from './architecture';
import type { CnnTensors } from './forward';
import { cnnAccuracyOfTensors, cnnForward, updatedRunningStats } from './forward';
import { cnnParamsDigest, deserializeCnnParams, serializeCnnParams } from './io';

/** The objective on logits, shared by every family (re-exported: WeightFormer and tests import it from here). */
export { lossOfLogits } from '../train-engine';

export type TrainCnnOptions = TrainOptionsOf<CnnArchitecture, CnnParams>;
/** The shared `TrainStateOf` with CNN parameters (running BN statistics inside `params`). */
export type CnnTrainState = TrainStateOf<CnnParams>;
export type CnnTrainHooks = TrainHooksOf<CnnParams>;
export type CnnTrainResult = TrainResultOf<CnnParams>;
/** The shared `TrainingAbortedError`, under the name this module exported before the families shared it. */
export const CnnTrainingAbortedError = TrainingAbortedError;
export type CnnTrainingAbortedError = TrainingAbortedError<CnnParams>;

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

/** The CNN adapter of the shared training loop (exported so tests can observe the batches it is fed). */
export const CNN_TRAINING: TrainFamily<CnnArchitecture, CnnParams, CnnTensors> = {
  trainer: 'trainCnn/1',
  magic: 'WFCS',
  what: 'CNN training checkpoint',
  serializeParams: serializeCnnParams,
  deserializeParams: deserializeCnnParams,
  checkArchitecture: checkCnnArchitecture,
  checkParamsMatch: checkCnnParamsMatch,
  signature: cnnSignature,
  paramsDigest: cnnParamsDigest,
  inputSize: (arch) => imageInputSize(arch.inputShape),
  trainableArrays: cnnTrainableArrays,
  trainableShapes,
  runningArrays,
  tensors: ({ init }, trainable, running) => assemble(init, trainable, running),
  trainForward: (t, x) => {
    const { logits, batchMoments } = cnnForward(t, x, 'train');
    return { logits, running: updatedRunningStats(t, batchMoments).flatMap((s) => (s ? [s.runningMean, s.runningVar] : [])) };
  },
  accuracyOfTensors: cnnAccuracyOfTensors,
  hostParams: ({ init }, trainable, running) => hostParams(init, trainable, running),
};

/**
 * Trains a CNN with Adam on mini-batches (train-mode BN, running statistics updated every step),
 * optionally distilling from precomputed ensemble targets. Options, hooks, result and resume behave as in
 * `trainMlp`.
 *
 * @example
 * const { params } = await trainCnn({ arch, init: initCnn(arch, 1), train, epochs: 3, batchSize: 64,
 *   learningRate: 2e-3, seed: 7, checkpointEvery: 50 }, { onCheckpoint: (s) => save(serializeCnnTrainState(s)) });
 */
export function trainCnn(options: TrainCnnOptions, hooks: CnnTrainHooks = {}, resumeFrom?: CnnTrainState): Promise<CnnTrainResult> {
  return trainWith(CNN_TRAINING, options, hooks, resumeFrom);
}

/** Checkpoint bytes: the shared layout of train-state.ts under "WFCS", the CNN parameter file inside. */
export function serializeCnnTrainState(s: CnnTrainState): Uint8Array {
  return serializeCheckpoint(CNN_TRAINING, s);
}

export function deserializeCnnTrainState(bytes: Uint8Array): CnnTrainState {
  return deserializeCheckpoint(CNN_TRAINING, bytes);
}
