import assert from 'node:assert/strict';
import type { ArchitectureSpec } from '../src/spec/types';
import { alignedAverage, alignToReference, matchWeights, maximizeAssignment, naiveAverage, permuteHiddenUnits } from '../src/ml/align';
import { initBackend } from '../src/ml/backend';
import type { Dataset } from '../src/ml/data';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import type { MlpParams } from '../src/ml/mlp';
import { accuracy, initMlp, predictLogits, serializeParams } from '../src/ml/mlp';
import { Rng, deriveSeed } from '../src/ml/rng';
import { trainMlp } from '../src/ml/train';
import { InputError } from '../src/util/errors';

const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 20, hidden: [16, 12], outputSize: 5, activation: 'tanh' };

/** A random MLP with non-zero biases (initMlp's are zero, which would hide bias permutation bugs). */
function randomTeacher(seed: number, arch = ARCH): MlpParams {
  const p = initMlp(arch, seed);
  const r = new Rng(seed + 1000);
  for (const l of p.layers) for (let i = 0; i < l.b.length; i++) l.b[i] = r.normal(0, 0.5);
  return p;
}

function randomInputs(n: number, d: number, seed: number): Dataset {
  const r = new Rng(seed);
  return { x: Float32Array.from({ length: n * d }, () => r.normal()), y: new Int32Array(n), n };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] ?? 0) - (b[i] ?? 0)));
  return m;
}

function randomPerms(p: MlpParams, seed: number): Int32Array[] {
  const r = new Rng(seed);
  return p.layers.slice(0, -1).map((l) => r.permutation(l.outSize));
}

describe('ml alignment', () => {
  before(async () => {
    await initBackend('cpu');
  });

  it('the assignment solver finds the optimum (vs brute force over all permutations)', () => {
    const perms = (n: number): number[][] =>
      n === 0 ? [[]] : perms(n - 1).flatMap((p) => Array.from({ length: n }, (_, i) => [...p.slice(0, i), n - 1, ...p.slice(i)]));
    const all = perms(5);
    for (let trial = 0; trial < 20; trial++) {
      const r = new Rng(trial);
      const sim = Float64Array.from({ length: 25 }, () => (trial % 4 === 0 ? r.nextInt(3) : r.normal())); // some with ties
      const best = Math.max(...all.map((p) => p.reduce((s, j, i) => s + sim[i * 5 + j]!, 0)));
      const got = maximizeAssignment(sim, 5);
      assert.equal(new Set(got).size, 5);
      assert.ok(Math.abs(Array.from(got).reduce((s, j, i) => s + sim[i * 5 + j]!, 0) - best) < 1e-9);
    }
    assert.deepEqual(Array.from(maximizeAssignment(new Float64Array(9), 3)).sort(), [0, 1, 2]);
  });

  it('permuting hidden units preserves the function', async () => {
    const t = randomTeacher(1);
    const x = randomInputs(64, 20, 2);
    const moved = permuteHiddenUnits(t, randomPerms(t, 3));
    assert.notDeepEqual(moved.layers[0]!.w, t.layers[0]!.w);
    assert.ok(maxAbsDiff(await predictLogits(moved, x), await predictLogits(t, x)) < 1e-5);
  });

  it('alignment preserves each teacher’s outputs (max abs diff < 1e-5)', async () => {
    const reference = randomTeacher(10);
    const x = randomInputs(128, 20, 4);
    for (const seed of [11, 12, 13]) {
      const teacher = randomTeacher(seed);
      const aligned = alignToReference(reference, teacher);
      assert.ok(maxAbsDiff(await predictLogits(aligned, x), await predictLogits(teacher, x)) < 1e-5);
    }
  });

  it('recovers a permuted copy exactly; its aligned average with the original is the original', () => {
    const t = randomTeacher(5);
    const perms = randomPerms(t, 6);
    const copy = permuteHiddenUnits(t, perms);
    // matchWeights finds, for each reference unit i, the copy's unit holding it: the inverse permutation.
    const found = matchWeights(t, copy);
    perms.forEach((p, l) => p.forEach((old, i) => assert.equal(p[found[l]![old]!], old, `layer ${l} unit ${i}`)));
    assert.deepEqual(serializeParams(alignToReference(t, copy)), serializeParams(t));
    assert.deepEqual(serializeParams(alignedAverage([t, copy])), serializeParams(t));
    assert.deepEqual(serializeParams(alignedAverage([copy, t], 1)), serializeParams(t));
    assert.notDeepEqual(serializeParams(naiveAverage([t, copy])), serializeParams(t));
  });

  it('averages element-wise and refuses mixed architectures or a bad reference', () => {
    const a = randomTeacher(1);
    const b = randomTeacher(2);
    const avg = naiveAverage([a, b]);
    for (let i = 0; i < avg.layers[0]!.w.length; i += 17) {
      assert.equal(avg.layers[0]!.w[i], Math.fround((a.layers[0]!.w[i]! + b.layers[0]!.w[i]!) / 2));
    }
    assert.throws(() => naiveAverage([a, randomTeacher(3, { ...ARCH, hidden: [16, 11] })]), InputError);
    assert.throws(() => alignedAverage([a, randomTeacher(3, { ...ARCH, activation: 'relu' })]), InputError);
    assert.throws(() => alignedAverage([a, b], 2), InputError);
    assert.throws(() => naiveAverage([]), InputError);
  });

  it('on trained MNIST teachers, the aligned average beats the naive one', async function () {
    await initBackend('wasm');
    const arch: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' };
    const s = splitDataset(loadEmbeddedMnist(), { source: 'mnist-embedded', shardSize: 800, consolidationSize: 0, validationSize: 0, testSize: 2000, splitSeed: 5 }, 3);
    const teachers: MlpParams[] = [];
    for (const [i, shard] of s.shards.entries()) {
      const init = initMlp(arch, deriveSeed(5, 'init', i));
      teachers.push((await trainMlp({ arch, init, train: shard, epochs: 3, batchSize: 32, learningRate: 2e-3, seed: deriveSeed(5, 'teacher', i) })).params);
    }
    const single = await Promise.all(teachers.map((t) => accuracy(t, s.test)));
    const naive = await accuracy(naiveAverage(teachers), s.test);
    const aligned = await accuracy(alignedAverage(teachers), s.test);
    // eslint-disable-next-line no-console
    console.log(`      (teachers ${single.map((a) => a.toFixed(3)).join(' ')}; naive ${naive.toFixed(3)}; aligned ${aligned.toFixed(3)})`);
    assert.ok(aligned > naive + 0.02, `aligned ${aligned} vs naive ${naive}`);
    await initBackend('cpu');
  });
});
