import assert from 'node:assert/strict';
import type { ArchitectureSpec } from '../src/spec/types';
import { initBackend } from '../src/ml/backend';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import type { DatasetSplit } from '../src/ml/data';
import { accuracy, ensembleProbs, initMlp, serializeParams } from '../src/ml/mlp';
import type { TrainMlpOptions, TrainResult, TrainState } from '../src/ml/train';
import { deserializeTrainState, serializeTrainState, trainMlp, TrainingAbortedError } from '../src/ml/train';
import { tf } from '../src/ml/tf';
import { InputError } from '../src/util/errors';

const SMALL: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [16], outputSize: 10, activation: 'relu' };
const TEACHER: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' };

let splitCache: DatasetSplit | undefined;
const split = (): DatasetSplit =>
  (splitCache ??= splitDataset(
    loadEmbeddedMnist(),
    { source: 'mnist-embedded', shardSize: 1000, consolidationSize: 300, validationSize: 200, testSize: 2000, splitSeed: 11 },
    2,
  ));

/** Options exercising every path: KD, validation, a partial last batch (300 = 9·32 + 12). */
async function resumeOptions(): Promise<TrainMlpOptions> {
  const teachers = [initMlp(SMALL, 101), initMlp(SMALL, 102)];
  return {
    arch: SMALL,
    init: initMlp(SMALL, 7),
    train: split().consolidation,
    epochs: 2,
    batchSize: 32,
    learningRate: 3e-3,
    seed: 99,
    kd: { teacherProbs: await ensembleProbs(teachers, split().consolidation, 2), weight: 0.6, temperature: 2 },
    validation: split().validation,
    checkpointEvery: 3,
  };
}

function sameRun(a: TrainResult, b: TrainResult): void {
  assert.deepEqual(serializeParams(b.params), serializeParams(a.params), 'final parameters are bit-identical');
  assert.deepEqual(b.curve, a.curve);
  assert.deepEqual(b.epochCurve, a.epochCurve);
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`ml trainer on ${backend}`, function () {
    before(async () => {
      await initBackend(backend);
    });

    it('resumed from any serialised checkpoint, equals the uninterrupted run bit for bit', async () => {
      const options = await resumeOptions();
      const checkpoints: Uint8Array[] = [];
      const full = await trainMlp(options, { onCheckpoint: (s) => void checkpoints.push(serializeTrainState(s)) });
      assert.equal(full.curve.length, 20);
      assert.equal(checkpoints.length, 6); // steps 3, 6, …, 18
      assert.equal(full.epochCurve.length, 2);
      assert.ok(full.epochCurve.every((e) => e.valAccuracy !== undefined && e.meanLoss > 0));
      // Mid-epoch (3), the step before an epoch's end (9), just past it (12), and late (18).
      for (const k of [0, 2, 3, 5]) {
        const state = deserializeTrainState(checkpoints[k]!);
        assert.equal(state.step, 3 * (k + 1));
        sameRun(full, await trainMlp(options, {}, state));
      }
    });

    it('stops when asked, and the state it hands back resumes exactly', async () => {
      const options = await resumeOptions();
      const full = await trainMlp(options);
      let steps = 0;
      const err = await trainMlp(options, { onStep: () => void steps++, shouldAbort: () => steps >= 7 }).then(
        () => assert.fail('should abort'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof TrainingAbortedError);
      assert.equal(err.state.step, 7);
      sameRun(full, await trainMlp(options, {}, deserializeTrainState(serializeTrainState(err.state))));
    });

    it('keeps the tensor count flat across steps and leaks nothing', async () => {
      const options = await resumeOptions();
      const before = tf.memory().numTensors;
      const counts: number[] = [];
      await trainMlp(options, { onStep: () => void counts.push(tf.memory().numTensors) });
      assert.equal(new Set(counts).size, 1, `tensor counts per step: ${[...new Set(counts)].join(',')}`);
      assert.equal(tf.memory().numTensors, before);
    });
  });
}

describe('ml trainer', function () {
  before(async () => {
    await initBackend('wasm');
  });

  it('learns: 1,000 digits, 2 epochs, 784-64-10 → loss falls, test accuracy well above chance', async () => {
    const steps: number[] = [];
    const t0 = Date.now();
    const result = await trainMlp(
      { arch: TEACHER, init: initMlp(TEACHER, 1), train: split().shards[0]!, epochs: 2, batchSize: 32, learningRate: 2e-3, seed: 1 },
      { onStep: (s) => void steps.push(s.totalSteps) },
    );
    const ms = Date.now() - t0;
    const first = result.curve.slice(0, 5).reduce((s, c) => s + c.loss, 0) / 5;
    const last = result.curve.slice(-5).reduce((s, c) => s + c.loss, 0) / 5;
    const acc = await accuracy(result.params, split().test);
    assert.equal(result.curve.length, 64);
    assert.ok(steps.every((t) => t === 64));
    assert.ok(last < first * 0.5, `loss ${first} → ${last}`);
    assert.ok(acc > 0.7, `test accuracy ${acc}`);
    assert.ok((result.epochCurve[1]?.meanLoss ?? Infinity) < (result.epochCurve[0]?.meanLoss ?? 0));
    // eslint-disable-next-line no-console
    console.log(`      (trained in ${ms} ms; test accuracy ${(acc * 100).toFixed(1)}%)`);
  });

  it('with KD weight 1 and its own softened outputs as targets, the loss is ~0 (a true KL)', async () => {
    const init = initMlp(SMALL, 3);
    const train = split().validation;
    const teacherProbs = await ensembleProbs([init], train, 3);
    const result = await trainMlp({ arch: SMALL, init, train, epochs: 1, batchSize: 200, learningRate: 1e-9, seed: 1, kd: { teacherProbs, weight: 1, temperature: 3 } });
    assert.ok(Math.abs(result.curve[0]!.loss) < 1e-5, `loss ${result.curve[0]!.loss}`);
  });

  it('refuses a checkpoint from another run, and bad options, with InputError', async () => {
    const options = await resumeOptions();
    let state: TrainState | undefined;
    await trainMlp({ ...options, epochs: 1 }, { onCheckpoint: (s) => void (state ??= s) });
    assert.ok(state);
    await assert.rejects(trainMlp({ ...options, learningRate: 1e-3 }, {}, state), (e: unknown) => e instanceof InputError && /different training run/.test(e.message));
    await assert.rejects(trainMlp({ ...options, batchSize: 0 }), InputError);
    await assert.rejects(trainMlp({ ...options, init: initMlp(TEACHER, 1) }), InputError);
    await assert.rejects(trainMlp({ ...options, kd: { ...options.kd!, teacherProbs: new Float32Array(3) } }), InputError);
  });

  it('rejects corrupt checkpoints with InputError', async () => {
    const options = await resumeOptions();
    let bytes: Uint8Array | undefined;
    await trainMlp({ ...options, epochs: 1 }, { onCheckpoint: (s) => void (bytes ??= serializeTrainState(s)) });
    assert.ok(bytes);
    assert.throws(() => deserializeTrainState(new Uint8Array([1, 2, 3])), InputError);
    assert.throws(() => deserializeTrainState(bytes!.subarray(0, bytes!.length - 10)), InputError);
    const flipped = new Uint8Array(bytes);
    flipped[100] = (flipped[100] ?? 0) ^ 1;
    assert.throws(() => deserializeTrainState(flipped), InputError);
  });
});
