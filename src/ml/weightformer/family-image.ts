/**
 * The StudentFamily adapters of the ResNet and ViT families (the MLP's and the CNN's are in family.ts).
 *
 * Every parameter is a row entry, so every parameter is predicted:
 * - ResNet (`resnet/rows.ts`): per conv (stem, then each block's conv1 and conv2) one row per output
 *   channel = the kernel slice (k·k·cin), the bias, γ, β, running mean, running variance; the head one row
 *   per class = its incoming weights and bias. Teachers are aligned with one permutation for the whole
 *   residual stream plus one per block's inner channels (`alignResnetToReference`; by activations,
 *   `alignResnetByActivations`).
 * - ViT (`vit/rows.ts`): patch embedding, q, k, v, proj, fc1, fc2 and head rows (incoming weights, bias),
 *   LayerNorm rows [γ, β] per feature, position-embedding rows per token. Teachers are aligned by heads
 *   (q/k/v rows move with their head, proj's columns follow) and MLP units (`alignVitToReference`).
 *
 * Layouts (which column reads which unit, which column is a variance) are in layouts.ts.
 */
import { InputError } from '../../util/errors';
import type { Dataset } from '../data';
import type { ResnetArchitecture, ResnetParams } from '../resnet/architecture';
import { checkResnetArchitecture, checkResnetParamsMatch, resnetSignature } from '../resnet/architecture';
import { alignResnetToReference, alignedAverageResnet, averageResnetParams } from '../resnet/align';
import { alignAllByActivations } from '../align-activations';
import { RESNET_ACTIVATION_MATCHER } from '../resnet/align-activations';
import { predictResnetLogits, resnetAccuracy, resnetLogits } from '../resnet/forward';
import { deserializeResnetParams, resnetParamsDigest, serializeResnetParams } from '../resnet/io';
import { resnetToRows, rowsToResnetParams, rowsToResnetTensors } from '../resnet/rows';
import { lossOfLogits } from '../train-engine';
import type { VitArchitecture, VitParams } from '../vit/architecture';
import { checkVitArchitecture, checkVitParamsMatch, vitSignature } from '../vit/architecture';
import { alignVitToReference, alignedAverageVit, averageVitParams } from '../vit/align';
import { predictVitLogits, vitAccuracy, vitLogits } from '../vit/forward';
import { deserializeVitParams, serializeVitParams, vitParamsDigest } from '../vit/io';
import { rowsToVitParams, rowsToVitTensors, vitToRows } from '../vit/rows';
import type { StudentFamily } from './family';
import { resnetLayoutOf, vitLayoutOf } from './layouts';
import type { StudentArch, StudentParams } from './tokens';
import { paramsFamily } from './tokens';
import { softmaxOfLogits } from '../evaluate';

function archFamily(arch: StudentArch): string {
  return String((arch as { family?: unknown } | null)?.family);
}

function resnetArch(arch: StudentArch): ResnetArchitecture {
  if (arch.family !== 'resnet') throw new InputError(`expected a ResNet architecture, got family ${archFamily(arch)}`);
  return arch;
}

function resnetParams(p: StudentParams): ResnetParams {
  if (!('family' in p) || p.family !== 'resnet') throw new InputError(`parameters of the ${paramsFamily(p)} family where a ResNet was expected`);
  return p;
}

function vitArch(arch: StudentArch): VitArchitecture {
  if (arch.family !== 'vit') throw new InputError(`expected a ViT architecture, got family ${archFamily(arch)}`);
  return arch;
}

function vitParams(p: StudentParams): VitParams {
  if (!('family' in p) || p.family !== 'vit') throw new InputError(`parameters of the ${paramsFamily(p)} family where a ViT was expected`);
  return p;
}

function imageSize(shape: [number, number, number]): number {
  return shape[0] * shape[1] * shape[2];
}

export const RESNET_FAMILY: StudentFamily = {
  name: 'resnet',
  probeTokens: false,
  checkArch: (arch) => checkResnetArchitecture(resnetArch(arch)),
  signature: (arch) => resnetSignature(resnetArch(arch)),
  checkParams: (p, arch) => checkResnetParamsMatch(resnetParams(p), resnetArch(arch)),
  cloneArch: (arch) => {
    const a = resnetArch(arch);
    return { ...a, inputShape: [a.inputShape[0], a.inputShape[1], a.inputShape[2]] };
  },
  inputSize: (arch) => imageSize(resnetArch(arch).inputShape),
  outputSize: (arch) => resnetArch(arch).outputSize,
  layout: (arch) => resnetLayoutOf(resnetArch(arch)),
  toRows: (p) => resnetToRows(resnetParams(p)),
  fromRows: (rows, arch) => {
    const p = rowsToResnetParams(rows, resnetArch(arch));
    // As for CNNs (family.ts): predicted variances are positive by construction, but a mixing
    // correction's rounding can leave −1e-12 where every teacher's variance is 0.
    for (const c of [p.stem, ...p.stages.flat().flatMap((b) => [b.conv1, b.conv2])]) {
      for (let i = 0; i < c.bn.runningVar.length; i++) c.bn.runningVar[i] = Math.max(0, c.bn.runningVar[i] ?? 0);
    }
    return p;
  },
  align: (reference, teacher) => alignResnetToReference(resnetParams(reference), resnetParams(teacher)),
  alignAllByActivations: (reference, teachers, images) => alignAllByActivations(RESNET_ACTIVATION_MATCHER, resnetParams(reference), teachers.map(resnetParams), images),
  alignedAverage: (list) => alignedAverageResnet(list.map(resnetParams), 0),
  average: (list) => averageResnetParams(list.map(resnetParams)),
  digest: (p) => resnetParamsDigest(resnetParams(p)),
  serialize: (p) => serializeResnetParams(resnetParams(p)),
  deserialize: (bytes) => deserializeResnetParams(bytes),
  logits: (rows, _layout, arch, x, bn) => resnetLogits(rowsToResnetTensors(rows, resnetArch(arch)), x, bn),
  loss: (rows, layout, arch, batch, bn) => lossOfLogits(RESNET_FAMILY.logits(rows, layout, arch, batch.x, bn), batch),
  predictProbs: async (p, ds: Dataset, temperature) => softmaxOfLogits(await predictResnetLogits(resnetParams(p), ds), ds.n, temperature),
  accuracy: (p, ds) => resnetAccuracy(resnetParams(p), ds),
};

export const VIT_FAMILY: StudentFamily = {
  name: 'vit',
  probeTokens: false,
  checkArch: (arch) => checkVitArchitecture(vitArch(arch)),
  signature: (arch) => vitSignature(vitArch(arch)),
  checkParams: (p, arch) => checkVitParamsMatch(vitParams(p), vitArch(arch)),
  cloneArch: (arch) => {
    const a = vitArch(arch);
    return { ...a, inputShape: [a.inputShape[0], a.inputShape[1], a.inputShape[2]] };
  },
  inputSize: (arch) => imageSize(vitArch(arch).inputShape),
  outputSize: (arch) => vitArch(arch).outputSize,
  layout: (arch) => vitLayoutOf(vitArch(arch)),
  toRows: (p) => vitToRows(vitParams(p)),
  fromRows: (rows, arch) => rowsToVitParams(rows, vitArch(arch)),
  align: (reference, teacher) => alignVitToReference(vitParams(reference), vitParams(teacher)),
  alignedAverage: (list) => alignedAverageVit(list.map(vitParams), 0),
  average: (list) => averageVitParams(list.map(vitParams)),
  digest: (p) => vitParamsDigest(vitParams(p)),
  serialize: (p) => serializeVitParams(vitParams(p)),
  deserialize: (bytes) => deserializeVitParams(bytes),
  // No batch norm: the BN mode is irrelevant.
  logits: (rows, _layout, arch, x) => vitLogits(rowsToVitTensors(rows, vitArch(arch)), x),
  loss: (rows, layout, arch, batch, bn) => lossOfLogits(VIT_FAMILY.logits(rows, layout, arch, batch.x, bn), batch),
  predictProbs: async (p, ds: Dataset, temperature) => softmaxOfLogits(await predictVitLogits(vitParams(p), ds), ds.n, temperature),
  accuracy: (p, ds) => vitAccuracy(vitParams(p), ds),
};
