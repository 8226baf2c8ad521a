/**
 * Conv channel permutations as the CNN and ResNet alignments use them (kernels `[k, k, cin, cout]`
 * row-major; `perm[i]` the old index of new channel i, undefined for the identity): the per-channel
 * signatures weight matching compares, and moving a conv's channels. Not part of the family's exports.
 */
import type { CnnConvBlock } from './architecture';

/** `perm[i]`, or i for no permutation (identity). */
export const at = (perm: Int32Array | undefined, i: number): number => (perm ? (perm[i] ?? 0) : i);

/** Appends to each output channel's row its kernel slice (inputs read through `inPerm`), bias and BN entries. */
export function pushOutgoingSlice(rows: number[][], c: CnnConvBlock, inPerm: Int32Array | undefined): void {
  const taps = c.kernelSize * c.kernelSize;
  const { inChannels: cin, outChannels: cout } = c;
  rows.forEach((row, u) => {
    for (let t = 0; t < taps; t++) for (let ci = 0; ci < cin; ci++) row.push(c.kernel[(t * cin + at(inPerm, ci)) * cout + u] ?? 0);
    row.push(c.bias[u] ?? 0);
    if (c.bn) row.push(c.bn.gamma[u] ?? 0, c.bn.beta[u] ?? 0, c.bn.runningMean[u] ?? 0, c.bn.runningVar[u] ?? 0);
  });
}

/** Appends to each input channel's row how the conv reads it (outputs read through `outPerm`). */
export function pushReadingSlice(rows: number[][], c: CnnConvBlock, outPerm: Int32Array | undefined): void {
  const taps = c.kernelSize * c.kernelSize;
  const { inChannels: cin, outChannels: cout } = c;
  rows.forEach((row, u) => {
    for (let t = 0; t < taps; t++) for (let co = 0; co < cout; co++) row.push(c.kernel[(t * cin + u) * cout + at(outPerm, co)] ?? 0);
  });
}

/** `target` := `c` with its input channels moved by `inPerm` and output channels (bias, BN entries too) by `outPerm`. */
export function permuteConvInto(target: CnnConvBlock, c: CnnConvBlock, inPerm: Int32Array | undefined, outPerm: Int32Array | undefined): void {
  const taps = c.kernelSize * c.kernelSize;
  const { inChannels: cin, outChannels: cout } = c;
  for (let t = 0; t < taps; t++) {
    for (let ci = 0; ci < cin; ci++) {
      for (let co = 0; co < cout; co++) target.kernel[(t * cin + ci) * cout + co] = c.kernel[(t * cin + at(inPerm, ci)) * cout + at(outPerm, co)] ?? 0;
    }
  }
  for (let co = 0; co < cout; co++) {
    const old = at(outPerm, co);
    target.bias[co] = c.bias[old] ?? 0;
    if (c.bn && target.bn) {
      target.bn.gamma[co] = c.bn.gamma[old] ?? 0;
      target.bn.beta[co] = c.bn.beta[old] ?? 0;
      target.bn.runningMean[co] = c.bn.runningMean[old] ?? 0;
      target.bn.runningVar[co] = c.bn.runningVar[old] ?? 0;
    }
  }
}
