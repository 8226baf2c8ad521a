import assert from 'node:assert/strict';
import type { ArchitectureSpec } from '../src/spec/types';
import { alignToReference, alignedAverage, averageParams } from '../src/ml/align';
import { initBackend } from '../src/ml/backend';
import type { Dataset } from '../src/ml/data';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import type { MlpParams } from '../src/ml/mlp';
import { accuracy, initMlp } from '../src/ml/mlp';
import { Rng, deriveSeed } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import { trainMlp } from '../src/ml/train';
import type { MetaTrainOptions, MetaTrainResult } from '../src/ml/weightformer';
import {
  deserializeMetaTrainState,
  generateStudent,
  metaTrain,
  MetaTrainingAbortedError,
  serializeMetaTrainState,
  serializeWeightformer,
  weightformerConfig,
} from '../src/ml/weightformer';
import { InputError } from '../src/util/errors';

const TINY: ArchitectureSpec = { family: 'mlp', inputSize: 12, hidden: [6], outputSize: 3, activation: 'relu' };

function randomData(n: number, features: number, classes: number, seed: number): Dataset {
  const rng = new Rng(seed);
  const x = new Float32Array(n * features);
  for (let i = 0; i < x.length; i++) x[i] = rng.nextFloat();
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) y[i] = rng.nextInt(classes);
  return { x, y, n };
}

/** Every path at once: mixing, probe tokens, a partial validation schedule, subsets of varying size. */
function tinyOptions(): MetaTrainOptions {
  const zoo = Array.from({ length: 5 }, (_, i) => initMlp(TINY, 10 + i));
  const heldOut = Array.from({ length: 3 }, (_, i) => initMlp(TINY, 20 + i));
  return {
    arch: TINY,
    config: weightformerConfig({ d: 8, heads: 2, blocks: 1, probeSize: 4, mixing: true, probeTokens: true }),
    zoo,
    reference: zoo[0]!,
    consolidation: randomData(40, 12, 3, 1),
    validation: { ensembles: [heldOut, heldOut.slice(0, 2)], data: randomData(30, 12, 3, 2) },
    steps: 10,
    batchSize: 16,
    learningRate: 1e-2,
    tMin: 2,
    tMax: 4,
    temperature: 2,
    kdWeight: 0.5,
    seed: 3,
    checkpointEvery: 3,
    evalEvery: 4,
  };
}

function sameRun(a: MetaTrainResult, b: MetaTrainResult): void {
  assert.deepEqual(serializeWeightformer(b.model), serializeWeightformer(a.model), 'best model bit-identical');
  assert.deepEqual(b.curve, a.curve);
  assert.deepEqual(b.valCurve, a.valCurve);
  assert.equal(b.bestStep, a.bestStep);
  assert.equal(b.steps, a.steps);
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`weightformer meta-training on ${backend}`, function () {
    before(async () => {
      await initBackend(backend);
    });

    it('resumed from any serialised checkpoint, equals the uninterrupted run bit for bit', async () => {
      const o = tinyOptions();
      const checkpoints: Uint8Array[] = [];
      const full = await metaTrain(o, { onCheckpoint: (s) => void checkpoints.push(serializeMetaTrainState(s)) });
      assert.equal(full.curve.length, 10);
      assert.deepEqual(full.valCurve.map((v) => v.step), [0, 4, 8, 10]);
      assert.equal(checkpoints.length, 3); // steps 3, 6, 9
      assert.ok(full.curve.some((c) => c.loss !== full.curve[0]!.loss), 'the loss moves');
      for (const bytes of checkpoints) sameRun(full, await metaTrain(o, {}, deserializeMetaTrainState(bytes)));
    });

    it('stops when asked, and the state it hands back resumes exactly', async () => {
      const o = tinyOptions();
      const full = await metaTrain(o);
      let steps = 0;
      const err = await metaTrain(o, { onStep: () => void steps++, shouldAbort: () => steps >= 5 }).then(
        () => assert.fail('should abort'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof MetaTrainingAbortedError);
      assert.equal(err.state.step, 5);
      sameRun(full, await metaTrain(o, {}, deserializeMetaTrainState(serializeMetaTrainState(err.state))));
    });

    it('keeps the tensor count flat across steps and leaks nothing', async () => {
      const before = tf.memory().numTensors;
      const counts: number[] = [];
      await metaTrain(tinyOptions(), { onStep: () => void counts.push(tf.memory().numTensors) });
      assert.equal(new Set(counts).size, 1, `tensor counts per step: ${[...new Set(counts)].join(',')}`);
      assert.equal(tf.memory().numTensors, before);
    });
  });
}

describe('weightformer meta-training', function () {
  before(async () => {
    await initBackend('cpu');
  });

  it('refuses a checkpoint of another run, bad options and corrupt checkpoints with InputError', async () => {
    const o = tinyOptions();
    let bytes: Uint8Array | undefined;
    await metaTrain({ ...o, steps: 3 }, { onCheckpoint: (s) => void (bytes ??= serializeMetaTrainState(s)) });
    assert.ok(bytes);
    const state = deserializeMetaTrainState(bytes);
    await assert.rejects(metaTrain({ ...o, steps: 3, learningRate: 1e-3 }, {}, state), (e: unknown) => e instanceof InputError && /different meta-training run/.test(e.message));
    await assert.rejects(metaTrain({ ...o, tMax: 6 }), InputError);
    await assert.rejects(metaTrain({ ...o, tMin: 0 }), InputError);
    await assert.rejects(metaTrain({ ...o, kdWeight: 2 }), InputError);
    await assert.rejects(metaTrain({ ...o, zoo: o.zoo.slice(0, 1), tMin: 1, tMax: 1 }), InputError);
    await assert.rejects(metaTrain({ ...o, validation: { ...o.validation, ensembles: [[initMlp({ ...TINY, hidden: [5] }, 1)]] } }), InputError);
    for (const at of [6, Math.floor(bytes.length / 3), bytes.length - 2]) {
      const bad = new Uint8Array(bytes);
      bad[at] = (bad[at] ?? 0) ^ 1;
      assert.throws(() => deserializeMetaTrainState(bad), InputError);
    }
    assert.throws(() => deserializeMetaTrainState(bytes!.subarray(0, 100)), InputError);
  });

  it('a model meta-trained on subsets of 2 consolidates 1 and 7 teachers too', async () => {
    const o = tinyOptions();
    const { model } = await metaTrain({ ...o, tMin: 2, tMax: 2, steps: 4, validation: { ...o.validation, ensembles: [] } });
    const mean = (ts: MlpParams[]): MlpParams => averageParams(ts.map((t) => alignToReference(model.reference, t)));
    for (const T of [1, 7]) {
      const teachers = Array.from({ length: T }, (_, i) => initMlp(TINY, 50 + i));
      const student = await generateStudent(model, teachers);
      const w = student.layers[0]!.w;
      assert.ok(w.every(Number.isFinite));
      assert.notDeepEqual(w, mean(teachers).layers[0]!.w, 'the trained model changes the aligned average');
    }
  });
});

describe('weightformer learns (wasm, MNIST, 784-16-10)', function () {
  before(async () => {
    await initBackend('wasm');
  });

  /**
   * Small teachers on 300-digit shards, whose aligned average (to the zoo's barycenter) falls well below
   * the teachers: meta-training on a separate consolidation set must lift a held-out ensemble's student
   * clearly above its aligned average (the starting point), on test digits nobody trained on.
   */
  it('meta-loss falls; a held-out ensemble\'s student beats its aligned average on test data', async () => {
    const arch: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [16], outputSize: 10, activation: 'relu' };
    const split = splitDataset(
      loadEmbeddedMnist(),
      { source: 'mnist-embedded', shardSize: 300, consolidationSize: 500, validationSize: 300, testSize: 1000, splitSeed: 5 },
      9,
    );
    const teachers: MlpParams[] = [];
    for (let i = 0; i < 9; i++) {
      const r = await trainMlp({ arch, init: initMlp(arch, deriveSeed(1, 'init', i)), train: split.shards[i]!, epochs: 8, batchSize: 32, learningRate: 3e-3, seed: i });
      teachers.push(r.params);
    }
    const zoo = teachers.slice(0, 6);
    const heldOut = teachers.slice(6);
    const t0 = Date.now();
    const result = await metaTrain({
      arch,
      config: weightformerConfig({ d: 32, heads: 2, blocks: 1 }),
      zoo,
      reference: alignedAverage(zoo),
      consolidation: split.consolidation,
      validation: { ensembles: [heldOut], data: split.validation },
      steps: 100,
      batchSize: 128,
      learningRate: 1e-2,
      tMin: 2,
      tMax: 4,
      temperature: 2,
      kdWeight: 0.5,
      seed: 1,
      checkpointEvery: 0,
      evalEvery: 20,
    });
    const ms = Date.now() - t0;
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(result.curve.slice(0, 10).map((c) => c.loss));
    const last = mean(result.curve.slice(-10).map((c) => c.loss));
    assert.ok(last < 0.8 * first, `meta-loss ${first} → ${last}`);
    const start = await accuracy(averageParams(heldOut.map((t) => alignToReference(result.model.reference, t))), split.test);
    const student = await accuracy(await generateStudent(result.model, heldOut), split.test);
    assert.ok(result.bestStep > 0, `best step ${result.bestStep}`);
    assert.ok(student > start + 0.04, `student ${student} vs aligned average ${start}`);
    // eslint-disable-next-line no-console
    console.log(`      (meta-trained 100 steps in ${ms} ms; aligned average ${(100 * start).toFixed(1)}% → student ${(100 * student).toFixed(1)}%)`);
  });
});
