/**
 * Aligning CNN teachers' channels and hidden units to a reference teacher, and averaging them.
 *
 * The same weight matching as `align.ts` (Git Re-Basin), with conv output channels as the units: a
 * channel's signature is its kernel slice, bias and BN entries (incoming) plus the next layer's weights
 * that read it (outgoing: the next conv's input-channel slice, or, after the last block, every row of the
 * first dense layer that holds this channel — rows (i·w + j)·c + ch, the flatten being HWC). Permuting a
 * channel consistently through kernel, bias, BN entries and its readers does not change the network's
 * function, in either BN mode (batch statistics are per channel too).
 *
 * Weight matching aligns independently trained CNNs poorly (on the cnn.yaml setting their aligned average
 * scores about 60% against the teachers' 84%); `align-activations.ts` matches channels by their activations instead, and a
 * pipeline chooses it with `alignment: {method: activations}` (every alignment of that pipeline).
 */
import { alignedAverageOf, averageArrays, checkSameSignature, coordinateAscent, featureSimilarity } from '../align';
import type { CnnParams } from './architecture';
import { cloneCnnParams, cnnSignature } from './architecture';
import { cnnParamArrays } from './io';
import { at, permuteConvInto, pushOutgoingSlice, pushReadingSlice } from './permute';

/** One permutation per permutable layer: each conv block, then each hidden dense layer. `perm[i]` is the old index of new unit i. */
export type CnnPermutations = Int32Array[];

function permutableCount(p: CnnParams): number {
  return p.convs.length + p.dense.length - 1;
}

function checkSameArchitecture(list: CnnParams[]): void {
  checkSameSignature(list, cnnSignature);
}

function unitsOf(p: CnnParams, g: number): number {
  const c = p.convs[g];
  if (c) return c.outChannels;
  const d = p.dense[g - p.convs.length];
  if (!d) throw new Error(`layer ${g} missing`);
  return d.outSize;
}

/** Positions (h·w) per channel in the flatten before the head. */
function flatPositions(p: CnnParams): number {
  const last = p.convs[p.convs.length - 1];
  const first = p.dense[0];
  if (!last || !first) throw new Error('a CNN needs a conv block and a dense layer');
  return first.inSize / last.outChannels;
}

/** `perm` of a layer's outputs, or undefined for the output layer (never permuted). */
function outputPerm(perms: CnnPermutations, g: number): Int32Array | undefined {
  return perms[g];
}

/**
 * How dense layer d's input rows move: the previous hidden layer's permutation, or for the first dense
 * layer the last block's channel permutation repeated at every flattened position (channel fastest).
 */
function denseInputPerm(p: CnnParams, perms: CnnPermutations, d: number): Int32Array | undefined {
  if (d > 0) return perms[p.convs.length + d - 1];
  const channelPerm = perms[p.convs.length - 1];
  if (!channelPerm) return undefined;
  const c = channelPerm.length;
  const positions = flatPositions(p);
  const rows = new Int32Array(positions * c);
  for (let s = 0; s < positions; s++) for (let ch = 0; ch < c; ch++) rows[s * c + ch] = s * c + (channelPerm[ch] ?? 0);
  return rows;
}

/**
 * Each unit's signature in layer g of `p` as rows of an units × features matrix, with `p`'s neighbouring
 * layers read through `perms` (identity for the reference), so reference and teacher features line up.
 */
function unitFeatures(p: CnnParams, perms: CnnPermutations, g: number): { features: Float64Array; size: number } {
  const units = unitsOf(p, g);
  const rows: number[][] = Array.from({ length: units }, () => []);
  const conv = p.convs[g];
  if (conv) {
    pushOutgoingSlice(rows, conv, g > 0 ? perms[g - 1] : undefined);
  } else {
    const d = g - p.convs.length;
    const layer = p.dense[d];
    if (!layer) throw new Error(`layer ${g} missing`);
    const inPerm = denseInputPerm(p, perms, d);
    rows.forEach((row, u) => {
      for (let i = 0; i < layer.inSize; i++) row.push(layer.w[at(inPerm, i) * layer.outSize + u] ?? 0);
      row.push(layer.b[u] ?? 0);
    });
  }
  // Outgoing: how the next layer reads each unit, its outputs matched by their permutation.
  const nextPerm = outputPerm(perms, g + 1);
  const nextConv = p.convs[g + 1];
  if (nextConv) {
    pushReadingSlice(rows, nextConv, nextPerm);
  } else {
    const d = g + 1 - p.convs.length;
    const next = p.dense[d];
    if (!next) throw new Error(`layer ${g + 1} missing`);
    const o = next.outSize;
    // After the last block a channel is read at every flattened position; a hidden unit at one row.
    const positions = d === 0 ? flatPositions(p) : 1;
    rows.forEach((row, u) => {
      for (let s = 0; s < positions; s++) {
        const r = s * units + u;
        for (let c = 0; c < o; c++) row.push(next.w[r * o + at(nextPerm, c)] ?? 0);
      }
    });
  }
  const size = rows[0]?.length ?? 0;
  const features = new Float64Array(units * size);
  rows.forEach((row, u) => features.set(row, u * size));
  return { features, size };
}

function similarityMatrix(reference: CnnParams, teacher: CnnParams, g: number, perms: CnnPermutations): Float64Array {
  return featureSimilarity(unitFeatures(reference, [], g), unitFeatures(teacher, perms, g), unitsOf(reference, g));
}

/**
 * `p` with each conv block's channels and each hidden dense layer's units reordered (perms[g][i] = old
 * index of new unit i): kernels (output and next block's input channels), biases, BN entries and the
 * first dense layer's rows move together, so the function is unchanged.
 */
export function permuteCnnUnits(p: CnnParams, perms: CnnPermutations): CnnParams {
  if (perms.length !== permutableCount(p)) throw new Error(`one permutation per conv block and hidden dense layer (${permutableCount(p)}), got ${perms.length}`);
  perms.forEach((perm, g) => {
    if (perm.length !== unitsOf(p, g)) throw new Error(`permutation ${g} has ${perm.length} entries for ${unitsOf(p, g)} units`);
  });
  const out = cloneCnnParams(p);
  p.convs.forEach((c, b) => {
    const target = out.convs[b];
    if (target) permuteConvInto(target, c, b > 0 ? perms[b - 1] : undefined, perms[b]);
  });
  p.dense.forEach((l, d) => {
    const inPerm = denseInputPerm(p, perms, d);
    const outPerm = outputPerm(perms, p.convs.length + d);
    const target = out.dense[d];
    if (!target) return;
    for (let i = 0; i < l.inSize; i++) {
      for (let o = 0; o < l.outSize; o++) target.w[i * l.outSize + o] = l.w[at(inPerm, i) * l.outSize + at(outPerm, o)] ?? 0;
    }
    for (let o = 0; o < l.outSize; o++) target.b[o] = l.b[at(outPerm, o)] ?? 0;
  });
  return out;
}

/** The permutations weight matching chooses to align `teacher` to `reference`. */
export function matchCnnWeights(reference: CnnParams, teacher: CnnParams): CnnPermutations {
  checkSameArchitecture([reference, teacher]);
  const sizes = Array.from({ length: permutableCount(reference) }, (_, g) => unitsOf(reference, g));
  return coordinateAscent(sizes, (g, perms) => similarityMatrix(reference, teacher, g, perms));
}

/**
 * `teacher` with its channels and hidden units permuted to match `reference`. Function-preserving.
 *
 * @example
 * const aligned = teachers.map((t) => alignCnnToReference(teachers[0], t));
 */
export function alignCnnToReference(reference: CnnParams, teacher: CnnParams): CnnParams {
  return permuteCnnUnits(teacher, matchCnnWeights(reference, teacher));
}

/** Element-wise mean of every array, running BN statistics included (accumulated in float64). */
export function averageCnnParams(list: CnnParams[]): CnnParams {
  checkSameArchitecture(list);
  return averageArrays(list, cloneCnnParams, cnnParamArrays);
}

/** The naive baseline: average the teachers as they are (channel i with channel i). */
export function naiveAverageCnn(list: CnnParams[]): CnnParams {
  return averageCnnParams(list);
}

/**
 * Aligns every teacher to `list[referenceIndex]`, then averages. With BN, follow with
 * `recomputeBnStatistics`: averaged running statistics do not describe the averaged network.
 */
export function alignedAverageCnn(list: CnnParams[], referenceIndex = 0): CnnParams {
  return alignedAverageOf(list, referenceIndex, alignCnnToReference, averageCnnParams);
}
