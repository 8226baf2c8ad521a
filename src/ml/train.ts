/**
 * Training MLPs: teachers, fine-tuning and knowledge distillation all run through `trainMlp`, the shared
 * loop of train-engine.ts with the MLP adapter below (no running statistics: every array is trained).
 *
 * Also the public home of the loop's vocabulary (options, hooks, KD, loss, abort error, checkpoint state),
 * re-exported here because runner, early stopping and WeightFormer code import it from this module.
 */
import type { ArchitectureSpec } from '../spec/types';
import type { MlpParams, MlpTensors } from './mlp';
import { accuracyOfTensors, architectureSignature, checkArchitecture, checkParamsMatch, mlpLogits } from './mlp';
import { deserializeParams, paramsDigest, serializeParams } from './params-io';
import type { tf } from './tf';
import type { LossBatch, TrainFamily, TrainHooksOf, TrainOptionsOf, TrainResultOf } from './train-engine';
import { lossOfLogits, trainWith } from './train-engine';
import type { TrainStateOf } from './train-state';
import { deserializeCheckpoint, serializeCheckpoint } from './train-state';

export type { EpochPoint, LossPoint, TrainStateOf } from './train-state';
export type { KdOptions, LossBatch, StepInfo, TrainHooksOf, TrainOptionsOf, TrainResultOf } from './train-engine';
export { epochPermutation, lossOfLogits, TrainingAbortedError } from './train-engine';

export type TrainMlpOptions = TrainOptionsOf<ArchitectureSpec, MlpParams>;
export type TrainHooks = TrainHooksOf<MlpParams>;
export type TrainResult = TrainResultOf<MlpParams>;
export type TrainState = TrainStateOf<MlpParams>;

/**
 * Mean over the batch of (1 − w)·CE(labels) + w·τ²·KL(teachers ‖ softmax(logits / τ)); plain CE without kd.
 */
export function mlpLoss(t: MlpTensors, batch: LossBatch): tf.Scalar {
  return lossOfLogits(mlpLogits(t, batch.x), batch);
}

/** The MLP as the training loop and the checkpoint format see it: tensors w, b per layer, in layer order. */
const MLP_TRAINING: TrainFamily<ArchitectureSpec, MlpParams, MlpTensors> = {
  trainer: 'trainMlp/1',
  magic: 'WFTS',
  what: 'training checkpoint',
  serializeParams,
  deserializeParams,
  checkArchitecture,
  checkParamsMatch,
  signature: architectureSignature,
  paramsDigest,
  inputSize: (arch) => ({ size: arch.inputSize, text: `${arch.inputSize}` }),
  trainableArrays: (p) => p.layers.flatMap((l) => [l.w, l.b]),
  trainableShapes: (p) => p.layers.flatMap((l) => [[l.inSize, l.outSize], [l.outSize]]),
  tensors: ({ arch, init }, flat) => ({
    activation: arch.activation,
    layers: init.layers.map((_, i) => ({ w: flat[2 * i] as tf.Tensor2D, b: flat[2 * i + 1] as tf.Tensor1D })),
  }),
  trainForward: (t, x) => ({ logits: mlpLogits(t, x) }),
  accuracyOfTensors,
  hostParams: ({ arch, init }, p) => ({
    activation: arch.activation,
    layers: init.layers.map((l, i) => ({ w: p[2 * i] ?? new Float32Array(), b: p[2 * i + 1] ?? new Float32Array(), inSize: l.inSize, outSize: l.outSize })),
  }),
};

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
export function trainMlp(options: TrainMlpOptions, hooks: TrainHooks = {}, resumeFrom?: TrainState): Promise<TrainResult> {
  return trainWith(MLP_TRAINING, options, hooks, resumeFrom);
}

/** Checkpoint bytes ("WFTS", the layout of train-state.ts; unchanged since MLP checkpoints were first stored). */
export function serializeTrainState(s: TrainState): Uint8Array {
  return serializeCheckpoint(MLP_TRAINING, s);
}

export function deserializeTrainState(bytes: Uint8Array): TrainState {
  return deserializeCheckpoint(MLP_TRAINING, bytes);
}
