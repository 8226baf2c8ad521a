/**
 * Aligning ResNet teachers' channels to a reference teacher, and averaging them.
 *
 * The identity shortcuts tie every stream channel together across the whole net: channel i of the stem's
 * output is added to channel i of every block's conv2 output and read by channel i of every conv1 input
 * and row i of the head. So the stream has a single permutation, and it can only be chosen by looking at
 * all those weights at once — weight matching (Git Re-Basin, as `align.ts`) with the stream channel's
 * signature being the concatenation of the stem's output slice (kernel, bias, BN), every conv2's output
 * slice, every conv1's input slice and the head's row. Each block's inner channels (conv1 output and BN,
 * conv2 input) are private to the block and get their own permutation, matched on conv1's output slice
 * and conv2's input slice. Coordinate ascent: the stream, then each block, repeated until nothing
 * changes (each choice reads the others through the teacher's current permutations).
 *
 * Permuting consistently is function-preserving in both BN modes (BN, ReLU, the max pool and the global
 * average pool all act per channel).
 */
import { InputError } from '../../util/errors';
import { alignedAverageOf, averageArrays, checkSameSignature, coordinateAscent, featureSimilarity } from '../align';
import { at, permuteConvInto, pushOutgoingSlice, pushReadingSlice } from '../cnn/permute';
import type { ResnetParams } from './architecture';
import { cloneResnetParams, resnetBlocks, resnetParamArrays, resnetSignature } from './architecture';

/** `perm[i]` is the old index of new channel i. */
export interface ResnetPermutations {
  /** The residual stream's channels (width). */
  stream: Int32Array;
  /** Each block's inner channels, in `resnetBlocks` order. */
  inner: Int32Array[];
}

function checkSameArchitecture(list: ResnetParams[]): void {
  checkSameSignature(list, resnetSignature);
}

/**
 * The signature of every channel of one permutation group of `p` (`group` −1: the stream, b ≥ 0: block
 * b's inner channels), with neighbouring groups read through `perms` (none: identity, the reference).
 */
function channelFeatures(p: ResnetParams, group: number, perms: ResnetPermutations | undefined): { features: Float64Array; size: number } {
  const width = p.stem.outChannels;
  const rows: number[][] = Array.from({ length: width }, () => []);
  const blocks = resnetBlocks(p);
  if (group < 0) {
    pushOutgoingSlice(rows, p.stem, undefined);
    blocks.forEach((block, b) => {
      const inner = perms?.inner[b];
      pushReadingSlice(rows, block.conv1, inner);
      pushOutgoingSlice(rows, block.conv2, inner);
    });
    const o = p.head.outSize;
    rows.forEach((row, u) => {
      for (let c = 0; c < o; c++) row.push(p.head.w[u * o + c] ?? 0);
    });
  } else {
    const block = blocks[group];
    if (!block) throw new Error(`block ${group} missing`);
    pushOutgoingSlice(rows, block.conv1, perms?.stream);
    pushReadingSlice(rows, block.conv2, perms?.stream);
  }
  const size = rows[0]?.length ?? 0;
  const features = new Float64Array(width * size);
  rows.forEach((row, u) => features.set(row, u * size));
  return { features, size };
}

function similarityMatrix(reference: ResnetParams, teacher: ResnetParams, group: number, perms: ResnetPermutations): Float64Array {
  return featureSimilarity(channelFeatures(reference, group, undefined), channelFeatures(teacher, group, perms), reference.stem.outChannels);
}

function checkPermutation(perm: Int32Array, n: number, what: string): void {
  const seen = new Uint8Array(n);
  if (perm.length !== n) throw new InputError(`${what} permutation has ${perm.length} entries for ${n} channels`);
  for (const v of perm) {
    if (!(v >= 0 && v < n) || seen[v]) throw new InputError(`${what} permutation is not a permutation of 0..${n - 1}`);
    seen[v] = 1;
  }
}

/**
 * `p` with its stream channels and each block's inner channels reordered (`perm[i]` = old index of new
 * channel i): kernels, biases and BN entries of every conv and the head's rows move together, so the
 * function is unchanged.
 */
export function permuteResnetChannels(p: ResnetParams, perms: ResnetPermutations): ResnetParams {
  const width = p.stem.outChannels;
  const blocks = resnetBlocks(p);
  checkPermutation(perms.stream, width, 'stream');
  if (perms.inner.length !== blocks.length) throw new InputError(`one inner permutation per block (${blocks.length}), got ${perms.inner.length}`);
  perms.inner.forEach((perm, b) => checkPermutation(perm, width, `block ${b} inner`));
  const out = cloneResnetParams(p);
  const outBlocks = resnetBlocks(out);
  permuteConvInto(out.stem, p.stem, undefined, perms.stream);
  blocks.forEach((block, b) => {
    const target = outBlocks[b];
    const inner = perms.inner[b];
    if (!target) return;
    permuteConvInto(target.conv1, block.conv1, perms.stream, inner);
    permuteConvInto(target.conv2, block.conv2, inner, perms.stream);
  });
  const o = p.head.outSize;
  for (let i = 0; i < width; i++) out.head.w.set(p.head.w.subarray(at(perms.stream, i) * o, (at(perms.stream, i) + 1) * o), i * o);
  return out;
}

/** The permutations weight matching chooses to align `teacher` to `reference`. */
export function matchResnetWeights(reference: ResnetParams, teacher: ResnetParams): ResnetPermutations {
  checkSameArchitecture([reference, teacher]);
  const width = reference.stem.outChannels;
  // Groups in a fixed order: the stream (group 0 here, −1 for `similarityMatrix`), then the blocks in order.
  const asPermutations = (flat: Int32Array[]): ResnetPermutations => ({ stream: flat[0] as Int32Array, inner: flat.slice(1) });
  const sizes = Array.from({ length: 1 + resnetBlocks(reference).length }, () => width);
  return asPermutations(coordinateAscent(sizes, (g, flat) => similarityMatrix(reference, teacher, g - 1, asPermutations(flat))));
}

/**
 * `teacher` with its channels permuted to match `reference`. Function-preserving.
 *
 * @example
 * const aligned = teachers.map((t) => alignResnetToReference(teachers[0], t));
 */
export function alignResnetToReference(reference: ResnetParams, teacher: ResnetParams): ResnetParams {
  return permuteResnetChannels(teacher, matchResnetWeights(reference, teacher));
}

/** Element-wise mean of every array, running BN statistics included (accumulated in float64). */
export function averageResnetParams(list: ResnetParams[]): ResnetParams {
  checkSameArchitecture(list);
  return averageArrays(list, cloneResnetParams, resnetParamArrays);
}

/** The naive baseline: average the teachers as they are (channel i with channel i). */
export function naiveAverageResnet(list: ResnetParams[]): ResnetParams {
  return averageResnetParams(list);
}

/**
 * Aligns every teacher to `list[referenceIndex]`, then averages. Follow with
 * `recomputeResnetBnStatistics`: averaged running statistics do not describe the averaged network.
 */
export function alignedAverageResnet(list: ResnetParams[], referenceIndex = 0): ResnetParams {
  return alignedAverageOf(list, referenceIndex, alignResnetToReference, averageResnetParams);
}
