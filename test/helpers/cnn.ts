/**
 * What the CNN tests (layers, alignment, the WeightFormer) share: random CNNs whose every entry matters,
 * random unit permutations, all parameters as one vector, and logits on a small dataset.
 */
import type { CnnArchitecture, CnnParams } from '../../src/ml/cnn';
import { cnnLogits, cnnParamArrays, cnnParamsToTensors, disposeCnnTensors, initCnn } from '../../src/ml/cnn';
import type { Dataset } from '../../src/ml/data';
import { Rng } from '../../src/ml/rng';
import { concatArrays, logitsOfParams } from './ml';

/** A CNN whose every entry is non-trivial (initCnn's biases, β and running statistics are constants, which would hide permutation bugs). */
export function randomCnn(arch: CnnArchitecture, seed: number): CnnParams {
  const p = initCnn(arch, seed);
  const r = new Rng(seed + 1000);
  for (const c of p.convs) {
    for (let i = 0; i < c.bias.length; i++) c.bias[i] = r.normal(0, 0.3);
    if (c.bn) {
      for (let i = 0; i < c.outChannels; i++) {
        c.bn.gamma[i] = 0.5 + r.nextFloat();
        c.bn.beta[i] = r.normal(0, 0.3);
        c.bn.runningMean[i] = r.normal(0, 0.3);
        c.bn.runningVar[i] = 0.5 + r.nextFloat();
      }
    }
  }
  for (const l of p.dense) for (let i = 0; i < l.b.length; i++) l.b[i] = r.normal(0, 0.3);
  return p;
}

/** One random permutation per permutable layer (each conv block, each hidden dense layer), as `permuteCnnUnits` takes them. */
export function randomPerms(p: CnnParams, seed: number): Int32Array[] {
  const r = new Rng(seed);
  return [...p.convs.map((c) => r.permutation(c.outChannels)), ...p.dense.slice(0, -1).map((l) => r.permutation(l.outSize))];
}

/** Every array of `p` (running statistics included), concatenated in `cnnParamArrays` order. */
export function flatCnn(p: CnnParams): Float32Array {
  return concatArrays(cnnParamArrays(p));
}

/** Logits of `p` on the whole (small) dataset, in BN eval mode unless `mode` says train. */
export function cnnLogitsOf(p: CnnParams, ds: Dataset, mode: 'train' | 'eval' = 'eval'): Promise<Float32Array> {
  return logitsOfParams(p, ds, cnnParamsToTensors, (t, x) => cnnLogits(t, x, mode), disposeCnnTensors);
}
