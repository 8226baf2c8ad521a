/**
 * What the ResNet tests (layers, weight and activation alignment) share: random ResNets whose every entry
 * matters, random stream and inner-channel permutations, and logits on a small dataset.
 */
import type { Dataset } from '../../src/ml/data';
import type { ResnetArchitecture, ResnetParams, ResnetPermutations } from '../../src/ml/resnet';
import { disposeResnetTensors, initResnet, resnetBlocks, resnetConvs, resnetLogits, resnetParamsToTensors } from '../../src/ml/resnet';
import { Rng } from '../../src/ml/rng';
import { logitsOfParams } from './ml';

/** A ResNet whose every entry is non-trivial (initResnet's biases, β and running statistics are constants, which would hide permutation bugs). */
export function randomResnet(arch: ResnetArchitecture, seed: number): ResnetParams {
  const p = initResnet(arch, seed);
  const r = new Rng(seed + 1000);
  for (const c of resnetConvs(p)) {
    for (let i = 0; i < c.outChannels; i++) {
      c.bias[i] = r.normal(0, 0.3);
      c.bn.gamma[i] = 0.5 + r.nextFloat();
      c.bn.beta[i] = r.normal(0, 0.3);
      c.bn.runningMean[i] = r.normal(0, 0.3);
      c.bn.runningVar[i] = 0.5 + r.nextFloat();
    }
  }
  for (let i = 0; i < p.head.b.length; i++) p.head.b[i] = r.normal(0, 0.3);
  return p;
}

/** A random stream permutation and one per block's inner channels, as `permuteResnetChannels` takes them. */
export function randomResnetPerms(p: ResnetParams, seed: number): ResnetPermutations {
  const r = new Rng(seed);
  const width = p.stem.outChannels;
  return { stream: r.permutation(width), inner: resnetBlocks(p).map(() => r.permutation(width)) };
}

/** Logits of `p` on the whole (small) dataset, in BN eval mode unless `mode` says train. */
export function resnetLogitsOf(p: ResnetParams, ds: Dataset, mode: 'train' | 'eval' = 'eval'): Promise<Float32Array> {
  return logitsOfParams(p, ds, resnetParamsToTensors, (t, x) => resnetLogits(t, x, mode), disposeResnetTensors);
}
