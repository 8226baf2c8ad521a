import assert from 'node:assert/strict';
import type { Dataset } from '../src/ml/data';
import { alignedAverageByActivations } from '../src/ml/align-activations';
import type { ResnetArchitecture, ResnetParams, ResnetPermutations } from '../src/ml/resnet';
import { averageResnetParams, cloneResnetParams, disposeResnetTensors, permuteResnetChannels, resnetLogits, resnetParamArrays, resnetParamsToTensors, resnetSignature } from '../src/ml/resnet';
import { RESNET_ACTIVATION_MATCHER, alignResnetByActivations, matchResnetActivations, resnetSiteActivations } from '../src/ml/resnet/align-activations';
import { Rng } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import { alignTeachers } from '../src/ml/weightformer';
import { RESNET_FAMILY } from '../src/ml/weightformer/family-image';
import { RESNET_RUNTIME } from '../src/runner/families';
import { InputError } from '../src/util/errors';
import { maxAbsDiff, onBackend, randomImageData } from './helpers/ml';
import { randomResnet, randomResnetPerms, resnetLogitsOf as logitsOf } from './helpers/resnet';

/** Two stages (one pool), two blocks each, two input channels: stream sites at 8×8 and 4×4, four inner groups. */
const SMALL: ResnetArchitecture = { family: 'resnet', inputShape: [8, 8, 2], width: 4, stages: 2, blocksPerStage: 2, kernelSize: 3, outputSize: 4 };
/** pipelines/resnet.yaml's shape on a smaller image: three stages, one block each, width 8. */
const DEEPER: ResnetArchitecture = { family: 'resnet', inputShape: [12, 12, 1], width: 8, stages: 3, blocksPerStage: 1, kernelSize: 3, outputSize: 5 };
const ARCHS: Array<{ arch: ResnetArchitecture; seed: number }> = [
  { arch: SMALL, seed: 40 },
  { arch: DEEPER, seed: 41 },
  { arch: { ...SMALL, width: 7, blocksPerStage: 1 }, seed: 42 },
];

function inverse(perm: Int32Array): Int32Array {
  const inv = new Int32Array(perm.length);
  perm.forEach((old, i) => (inv[old] = i));
  return inv;
}

function inversePerms(perms: ResnetPermutations): ResnetPermutations {
  return { stream: inverse(perms.stream), inner: perms.inner.map(inverse) };
}

function moves(perms: ResnetPermutations): boolean {
  return [perms.stream, ...perms.inner].some((p) => p.some((v, i) => v !== i));
}

/** Whether each stream channel varies at some stream site, and each block's inner channel at its site, on `ds`. */
async function identifiable(p: ResnetParams, ds: Dataset): Promise<{ stream: boolean[]; inner: boolean[][] }> {
  const t = resnetParamsToTensors(p);
  const x = tf.tensor2d(ds.x, [ds.n, ds.x.length / ds.n]);
  const { stream, inner, logits } = resnetSiteActivations(t, x);
  const varies = async (site: tf.Tensor2D): Promise<boolean[]> => {
    const spread = tf.tidy(() => tf.sub(tf.max(site, 0), tf.min(site, 0)));
    const out = Array.from(await spread.data(), (d) => d > 1e-6);
    spread.dispose();
    return out;
  };
  const width = p.stem.outChannels;
  const streamLive = new Array<boolean>(width).fill(false);
  for (const site of stream) (await varies(site)).forEach((v, c) => (streamLive[c] = streamLive[c] || v));
  const innerLive: boolean[][] = [];
  for (const site of inner) innerLive.push(await varies(site));
  tf.dispose([x, logits, ...stream, ...inner]);
  disposeResnetTensors(t);
  return { stream: streamLive, inner: innerLive };
}

/** `p` with every parameter moved by relative noise of scale `scale` (a "further-trained" copy). */
function jitter(p: ResnetParams, scale: number, seed: number): ResnetParams {
  const out = cloneResnetParams(p);
  const r = new Rng(seed);
  for (const a of resnetParamArrays(out)) for (let i = 0; i < a.length; i++) a[i] = (a[i] ?? 0) * (1 + r.normal(0, scale));
  return out;
}

describe('ml resnet: activation matching', () => {
  onBackend('cpu');

  it('records the stream where it is read and every inner map with the same forward pass as resnetLogits (eval mode)', async () => {
    const p = randomResnet(SMALL, 30);
    const ds = randomImageData(5, SMALL, 31);
    const t = resnetParamsToTensors(p);
    const x = tf.tensor2d(ds.x, [ds.n, 8 * 8 * 2]);
    try {
      const { stream, inner, logits } = resnetSiteActivations(t, x);
      const expected = resnetLogits(t, x, 'eval');
      assert.ok(maxAbsDiff(await logits.data(), await expected.data()) < 1e-6);
      // Stream: the inputs of blocks 0, 1 (8×8), blocks 2, 3 (4×4, after the pool), then the head's input (4×4).
      assert.deepEqual(stream.map((s) => s.shape), [[5 * 64, 4], [5 * 64, 4], [5 * 16, 4], [5 * 16, 4], [5 * 16, 4]]);
      assert.deepEqual(inner.map((s) => s.shape), [[5 * 64, 4], [5 * 64, 4], [5 * 16, 4], [5 * 16, 4]]);
      for (const s of [...stream, ...inner]) assert.ok(Math.min(...(await s.data())) >= 0, 'post-ReLU');
      tf.dispose([...stream, ...inner, logits, expected]);
    } finally {
      x.dispose();
      disposeResnetTensors(t);
    }
  });

  it('matches a random stream + inner permutation of the reference back exactly: the inverse permutations, the same parameters and function', async () => {
    for (const [k, { arch, seed }] of ARCHS.entries()) {
      const reference = randomResnet(arch, seed);
      const perms = randomResnetPerms(reference, 50 + k);
      assert.ok(moves(perms), 'the shuffle must move something');
      const copy = permuteResnetChannels(reference, perms);
      const images = randomImageData(48, arch, 60 + k);
      const live = await identifiable(reference, images);
      assert.ok(live.stream.every(Boolean) && live.inner.flat().every(Boolean), `${resnetSignature(arch)}: every channel varies, so the test can ask for exact recovery`);
      const found = await matchResnetActivations(reference, copy, images);
      // copy channel i is reference channel perms[i]; so reference channel i is copy channel perms⁻¹[i].
      assert.deepEqual(found, inversePerms(perms), resnetSignature(arch));
      const aligned = permuteResnetChannels(copy, found);
      assert.deepEqual(aligned, reference, resnetSignature(arch));
      const x = randomImageData(16, arch, 70 + k);
      assert.ok(maxAbsDiff(await logitsOf(aligned, x), await logitsOf(reference, x)) < 1e-5);
      // The wired entry points: the aligned average, the runner's and the WeightFormer adapter's.
      assert.deepEqual(await alignResnetByActivations(reference, copy, images), reference);
      assert.deepEqual(await alignedAverageByActivations([reference, copy], images, RESNET_ACTIVATION_MATCHER, averageResnetParams), reference);
      assert.deepEqual(await RESNET_RUNTIME.alignedAverageByActivations?.([reference, copy], images), reference);
      assert.deepEqual(await alignTeachers(RESNET_FAMILY, reference, [copy], { method: 'activations', images }), [reference]);
    }
  });

  it('recovers the permutation of a perturbed copy (every parameter jittered by 5%, like a further-trained one)', async () => {
    const reference = randomResnet(DEEPER, 43);
    const perms = randomResnetPerms(reference, 53);
    const copy = permuteResnetChannels(jitter(reference, 0.05, 44), perms);
    const found = await matchResnetActivations(reference, copy, randomImageData(64, DEEPER, 63));
    assert.deepEqual(found, inversePerms(perms));
  });

  it('aligning an independent teacher changes its parameters but not its function (eval mode, < 1e-5), and frees its tensors', async () => {
    const reference = randomResnet(SMALL, 80);
    const images = randomImageData(48, SMALL, 81);
    const x = randomImageData(32, SMALL, 82);
    for (const seed of [83, 84]) {
      const teacher = randomResnet(SMALL, seed);
      const before = tf.memory().numTensors;
      const perms = await matchResnetActivations(reference, teacher, images);
      assert.equal(tf.memory().numTensors, before, 'no tensor left behind');
      assert.ok(moves(perms), 'an independent teacher needs some permutation');
      const aligned = permuteResnetChannels(teacher, perms);
      assert.notDeepEqual(aligned, teacher);
      assert.ok(maxAbsDiff(await logitsOf(aligned, x), await logitsOf(teacher, x)) < 1e-5);
      assert.ok(maxAbsDiff(await logitsOf(aligned, x, 'train'), await logitsOf(teacher, x, 'train')) < 1e-5, 'train mode too');
    }
  });

  it('refuses models of different architectures, images of the wrong size and fewer than 2 images', async () => {
    const reference = randomResnet(SMALL, 90);
    await assert.rejects(matchResnetActivations(reference, randomResnet({ ...SMALL, width: 5 }, 91), randomImageData(8, SMALL, 92)), InputError);
    await assert.rejects(matchResnetActivations(reference, reference, randomImageData(8, { ...SMALL, inputShape: [8, 8, 1] }, 93)), InputError);
    await assert.rejects(matchResnetActivations(reference, reference, randomImageData(1, SMALL, 94)), InputError);
  });
});
