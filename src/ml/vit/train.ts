/**
 * Training a ViT: the shared loop of train-engine.ts (same options, hooks, result, abort error and exact
 * resume as `trainMlp`) with the ViT adapter below. Every parameter array is trained: no running
 * statistics, and no train/eval mode (there is no dropout).
 */
import { imageInputSize, trainWith, TrainingAbortedError } from '../train-engine';
import type { TrainFamily, TrainHooksOf, TrainOptionsOf, TrainResultOf } from '../train-engine';
import { deserializeCheckpoint, serializeCheckpoint } from '../train-state';
import type { TrainStateOf } from '../train-state';
import type { VitArchitecture, VitParams } from './architecture';
import { checkVitArchitecture, checkVitParamsMatch, vitArchitectureOf, vitParamArrays, vitParamsFromArrays, vitParamShapes, vitSignature } from './architecture';
import type { VitTensors } from './forward';
import { vitAccuracyOfTensors, vitLogits, vitTensorsFromList } from './forward';
import { deserializeVitParams, serializeVitParams, vitParamsDigest } from './io';

export type TrainVitOptions = TrainOptionsOf<VitArchitecture, VitParams>;
/** The shared `TrainStateOf` with ViT parameters (Adam moments in `vitParamArrays` order). */
export type VitTrainState = TrainStateOf<VitParams>;
export type VitTrainHooks = TrainHooksOf<VitParams>;
export type VitTrainResult = TrainResultOf<VitParams>;
/** The shared `TrainingAbortedError`, under the name this module exported before the families shared it. */
export const VitTrainingAbortedError = TrainingAbortedError;
export type VitTrainingAbortedError = TrainingAbortedError<VitParams>;

const VIT_TRAINING: TrainFamily<VitArchitecture, VitParams, VitTensors> = {
  trainer: 'trainVit/1',
  magic: 'WFVS',
  what: 'ViT training checkpoint',
  serializeParams: serializeVitParams,
  deserializeParams: deserializeVitParams,
  checkArchitecture: checkVitArchitecture,
  checkParamsMatch: checkVitParamsMatch,
  signature: vitSignature,
  paramsDigest: vitParamsDigest,
  inputSize: (arch) => imageInputSize(arch.inputShape),
  trainableArrays: vitParamArrays,
  trainableShapes: (p) => vitParamShapes(vitArchitectureOf(p)),
  tensors: ({ arch }, trainable) => vitTensorsFromList(arch, trainable),
  trainForward: (t, x) => ({ logits: vitLogits(t, x) }),
  accuracyOfTensors: vitAccuracyOfTensors,
  hostParams: ({ arch }, trainable) => vitParamsFromArrays(arch, trainable),
};

/**
 * Trains a ViT with Adam on mini-batches, optionally distilling from precomputed ensemble targets.
 * Options, hooks, result and resume behave as in `trainMlp` / `trainCnn`: a run resumed from a checkpoint
 * equals the uninterrupted run bit for bit on deterministic backends (cpu, wasm).
 *
 * @example
 * const { params } = await trainVit({ arch, init: initVit(arch, 1), train, epochs: 5, batchSize: 32,
 *   learningRate: 3e-3, seed: 7, checkpointEvery: 50 }, { onCheckpoint: (s) => save(serializeVitTrainState(s)) });
 */
export function trainVit(options: TrainVitOptions, hooks: VitTrainHooks = {}, resumeFrom?: VitTrainState): Promise<VitTrainResult> {
  return trainWith(VIT_TRAINING, options, hooks, resumeFrom);
}

/** Checkpoint bytes: the shared layout of train-state.ts under "WFVS", the ViT parameter file inside. */
export function serializeVitTrainState(s: VitTrainState): Uint8Array {
  return serializeCheckpoint(VIT_TRAINING, s);
}

export function deserializeVitTrainState(bytes: Uint8Array): VitTrainState {
  return deserializeCheckpoint(VIT_TRAINING, bytes);
}
