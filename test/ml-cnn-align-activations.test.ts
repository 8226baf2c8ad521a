import assert from 'node:assert/strict';
import type { Dataset } from '../src/ml/data';
import { tf } from '../src/ml/tf';
import { InputError } from '../src/util/errors';
import { maxAbsDiff, onBackend, randomImageData } from './helpers/ml';
import { cnnLogitsOf as logitsOf, randomCnn, randomPerms } from './helpers/cnn';
import type { CnnArchitecture, CnnParams } from '../src/ml/cnn';
import { cnnLogits, cnnParamsToTensors, cnnSignature, disposeCnnTensors, permuteCnnUnits } from '../src/ml/cnn';
import { cnnLayerActivations, matchCnnActivations } from '../src/ml/cnn/align-activations';

/** Two positions per axis after the last pool, so the HWC flatten has several positions per channel. */
const SMALL: CnnArchitecture = { family: 'cnn', inputShape: [8, 8, 2], channels: [4, 5], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [6], outputSize: 4 };
/** Random instances (these seeds) with no unit dead on the test images (the test checks), so every unit is identifiable. */
const ARCHS: Array<{ arch: CnnArchitecture; seed: number }> = [
  { arch: SMALL, seed: 88 },
  { arch: { ...SMALL, batchNorm: false, hidden: [] }, seed: 62 },
  { arch: { ...SMALL, inputShape: [8, 8, 1], channels: [8, 16] }, seed: 64 },
];
/** Three blocks down to 1×1 and two hidden layers: several units are dead (never positive) on random images. */
const DEEP: CnnArchitecture = { ...SMALL, channels: [4, 5, 3], hidden: [6, 5], pool: 'avg' };

function inverse(perm: Int32Array): Int32Array {
  const inv = new Int32Array(perm.length);
  perm.forEach((old, i) => (inv[old] = i));
  return inv;
}

/** Per permutable layer, whether each unit is positive on some image. */
async function liveUnits(p: CnnParams, ds: Dataset): Promise<boolean[][]> {
  const t = cnnParamsToTensors(p);
  const x = tf.tensor2d(ds.x, [ds.n, ds.x.length / ds.n]);
  const { layers, logits } = cnnLayerActivations(t, x);
  const out: boolean[][] = [];
  for (const l of layers) out.push(Array.from(await tf.max(l, 0).data(), (m) => m > 0));
  tf.dispose([x, logits, ...layers]);
  disposeCnnTensors(t);
  return out;
}

describe('ml cnn: activation matching', () => {
  onBackend('cpu');

  it('records activations with the same forward pass as cnnLogits, one rows × units matrix per permutable layer', async () => {
    const p = randomCnn({ ...SMALL, channels: [4, 5, 3], hidden: [6, 5] }, 60);
    const ds = randomImageData(7, SMALL, 61);
    const t = cnnParamsToTensors(p);
    const x = tf.tensor2d(ds.x, [ds.n, 8 * 8 * 2]);
    try {
      for (const site of ['pooled', 'prepool'] as const) {
        const { layers, logits } = cnnLayerActivations(t, x, site);
        const expected = cnnLogits(t, x, 'eval');
        assert.ok(maxAbsDiff(await logits.data(), await expected.data()) < 1e-6, site);
        // pooled: 8→4→2→1 positions per axis; prepool: 8, 4, 2.
        const rows = site === 'pooled' ? [7 * 16, 7 * 4, 7 * 1, 7, 7] : [7 * 64, 7 * 16, 7 * 4, 7, 7];
        assert.deepEqual(layers.map((l) => l.shape), [[rows[0], 4], [rows[1], 5], [rows[2], 3], [7, 6], [7, 5]]);
        for (const l of layers) assert.ok(Math.min(...(await l.data())) >= 0, 'post-ReLU');
        tf.dispose([...layers, logits, expected]);
      }
    } finally {
      x.dispose();
      disposeCnnTensors(t);
    }
  });

  it('matches a randomly permuted copy back exactly: the permutations recovered, the same parameters and logits', async () => {
    for (const [k, { arch, seed }] of ARCHS.entries()) {
      const reference = randomCnn(arch, seed);
      const perms = randomPerms(reference, 70 + k);
      assert.ok(perms.some((p) => p.some((v, i) => v !== i)), 'the shuffle must move something');
      const copy = permuteCnnUnits(reference, perms);
      const images = randomImageData(64, arch, 80 + k);
      assert.ok((await liveUnits(reference, images)).flat().every(Boolean), `${cnnSignature(arch)}: every unit live, so the test can ask for exact recovery`);
      for (const convSite of ['pooled', 'prepool'] as const) {
        const found = await matchCnnActivations(reference, copy, images, { convSite });
        // copy unit i is reference unit perms[i]; so reference unit i is copy unit perms⁻¹[i].
        assert.deepEqual(found, perms.map(inverse), `${cnnSignature(arch)} ${convSite}`);
        const aligned = permuteCnnUnits(copy, found);
        assert.deepEqual(aligned, reference, cnnSignature(arch));
        assert.ok(maxAbsDiff(await logitsOf(aligned, images), await logitsOf(reference, images)) < 1e-5);
      }
    }
  });

  it('units dead on every image cannot be told apart: the live ones are still recovered, and the function kept', async () => {
    const reference = randomCnn(DEEP, 64);
    const perms = randomPerms(reference, 72);
    const copy = permuteCnnUnits(reference, perms);
    const images = randomImageData(64, DEEP, 82);
    const live = await liveUnits(reference, images);
    assert.ok(live.flat().some((l) => !l), 'this network has dead units on these images');
    const found = await matchCnnActivations(reference, copy, images);
    const expected = perms.map(inverse);
    found.forEach((perm, g) => perm.forEach((j, i) => live[g]?.[i] && assert.equal(j, expected[g]?.[i], `layer ${g} unit ${i}`)));
    assert.ok(maxAbsDiff(await logitsOf(permuteCnnUnits(copy, found), images), await logitsOf(reference, images)) < 1e-5);
  });

  it('aligning a different teacher changes its parameters but not its function (eval mode, < 1e-5), and frees its tensors', async () => {
    const reference = randomCnn(SMALL, 90);
    const images = randomImageData(64, SMALL, 91);
    const x = randomImageData(32, SMALL, 92);
    for (const seed of [93, 94]) {
      const teacher = randomCnn(SMALL, seed);
      const before = tf.memory().numTensors;
      const perms = await matchCnnActivations(reference, teacher, images);
      assert.equal(tf.memory().numTensors, before, 'no tensor left behind');
      assert.ok(perms.some((p) => p.some((v, i) => v !== i)), 'a different teacher needs some permutation');
      const aligned = permuteCnnUnits(teacher, perms);
      assert.notDeepEqual(aligned, teacher);
      assert.ok(maxAbsDiff(await logitsOf(aligned, x), await logitsOf(teacher, x)) < 1e-5);
    }
  });

  it('refuses models of different architectures and images of the wrong size', async () => {
    const reference = randomCnn(SMALL, 95);
    await assert.rejects(matchCnnActivations(reference, randomCnn({ ...SMALL, channels: [4, 6] }, 96), randomImageData(8, SMALL, 97)), InputError);
    await assert.rejects(matchCnnActivations(reference, reference, randomImageData(8, { ...SMALL, inputShape: [8, 8, 1] }, 98)), InputError);
  });
});
