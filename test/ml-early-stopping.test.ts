import assert from 'node:assert/strict';
import type { ArchitectureSpec } from '../src/spec/types';
import { initBackend } from '../src/ml/backend';
import type { DatasetSplit } from '../src/ml/data';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import type { EarlyStoppingOptions, EarlyStoppingResult } from '../src/ml/early-stopping';
import {
  deserializeEarlyStoppingState,
  EarlyStoppingAbortedError,
  secondsToReach,
  serializeEarlyStoppingState,
  trainWithEarlyStopping,
} from '../src/ml/early-stopping';
import { accuracy, initMlp, serializeParams } from '../src/ml/mlp';
import { trainMlp, TrainingAbortedError } from '../src/ml/train';
import { InputError } from '../src/util/errors';

const SMALL: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [16], outputSize: 10, activation: 'relu' };

let splitCache: DatasetSplit | undefined;
const split = (): DatasetSplit =>
  (splitCache ??= splitDataset(
    loadEmbeddedMnist(),
    { source: 'mnist-embedded', shardSize: 1000, consolidationSize: 300, validationSize: 200, testSize: 2000, splitSeed: 11 },
    2,
  ));

/**
 * 300 examples, batches of 32 (10 steps an epoch, the last one partial), 6 epochs. On wasm this run's
 * validation accuracy peaks at epoch 4 and dips at epoch 5, so the best epoch is not the last.
 */
const options = (over: Partial<EarlyStoppingOptions> = {}): EarlyStoppingOptions => ({
  arch: SMALL,
  init: initMlp(SMALL, 3),
  train: split().consolidation,
  validation: split().validation,
  epochs: 6,
  batchSize: 32,
  learningRate: 1e-2,
  seed: 99,
  checkpointEvery: 5,
  ...over,
});

/** Everything but the wall times. */
function sameRun(a: EarlyStoppingResult, b: EarlyStoppingResult): void {
  assert.deepEqual(serializeParams(b.params), serializeParams(a.params), 'best parameters are bit-identical');
  assert.deepEqual(serializeParams(b.finalParams), serializeParams(a.finalParams), 'final parameters are bit-identical');
  assert.equal(b.bestEpoch, a.bestEpoch);
  assert.equal(b.bestValAccuracy, a.bestValAccuracy);
  assert.equal(b.stoppedEarly, a.stoppedEarly);
  assert.deepEqual(b.curve, a.curve);
  const strip = (r: EarlyStoppingResult): unknown => r.epochCurve.map(({ secondsElapsed: _, ...rest }) => rest);
  assert.deepEqual(strip(b), strip(a));
  assertTimes(b);
}

function assertTimes(r: EarlyStoppingResult): void {
  const s = r.epochCurve.map((e) => e.secondsElapsed);
  assert.ok(s.every((t, i) => t > 0 && Number.isFinite(t) && (i === 0 || t >= (s[i - 1] ?? Infinity))), `times ${s.join(', ')}`);
}

describe('ml early stopping on wasm', function () {
  before(async () => {
    await initBackend('wasm');
  });

  it('keeps the parameters of the best validation epoch of an ordinary trainMlp run', async () => {
    const r = await trainWithEarlyStopping(options());
    assert.equal(r.epochCurve.length, 6);
    assert.deepEqual(r.epochCurve.map((e) => e.epoch), [0, 1, 2, 3, 4, 5]);
    const accs = r.epochCurve.map((e) => e.valAccuracy);
    const max = Math.max(...accs);
    assert.equal(r.bestEpoch, accs.indexOf(max), 'the first epoch reaching the maximum');
    assert.equal(r.bestValAccuracy, max);
    assert.notEqual(r.bestEpoch, 5, `this run's best epoch is not its last (${accs.join(', ')})`);
    assert.equal(await accuracy(r.params, split().validation), max, 'the kept parameters score the best accuracy');
    assert.notDeepEqual(serializeParams(r.params), serializeParams(r.finalParams));
    assert.equal(r.stoppedEarly, false);
    assertTimes(r);
    // The same run as plain trainMlp: same final parameters, losses and accuracies.
    const plain = await trainMlp(options());
    assert.deepEqual(serializeParams(plain.params), serializeParams(r.finalParams));
    assert.deepEqual(plain.curve, r.curve);
    assert.deepEqual(plain.epochCurve.map((e) => e.valAccuracy), accs);
    // secondsBefore shifts the clock.
    const shifted = await trainWithEarlyStopping(options({ epochs: 1, secondsBefore: 1000 }));
    assert.ok((shifted.epochCurve[0]?.secondsElapsed ?? 0) > 1000);
  });

  it('resumed from any serialised checkpoint, equals the uninterrupted run', async () => {
    const saved: Uint8Array[] = [];
    const full = await trainWithEarlyStopping(options(), { onCheckpoint: (s) => void saved.push(serializeEarlyStoppingState(s)) });
    assert.equal(saved.length, 12); // steps 5, 10, …, 60
    for (const bytes of saved) {
      const state = deserializeEarlyStoppingState(bytes);
      assert.equal(state.epochSeconds.length, state.train.epochCurve.length);
      const resumed = await trainWithEarlyStopping(options(), {}, state);
      sameRun(full, resumed);
      if (state.train.epoch < 6) assert.ok((resumed.epochCurve.at(-1)?.secondsElapsed ?? 0) >= state.seconds, 'the clock continues from the checkpoint');
    }
  });

  it('stops when asked, and the state it hands back resumes exactly', async () => {
    const full = await trainWithEarlyStopping(options());
    let steps = 0;
    const err = await trainWithEarlyStopping(options(), { onStep: () => void steps++, shouldAbort: () => steps >= 27 }).then(
      () => assert.fail('should abort'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof EarlyStoppingAbortedError);
    assert.ok(err instanceof TrainingAbortedError);
    assert.equal(err.earlyStoppingState.train.step, 27);
    assert.equal(err.earlyStoppingState.best?.epoch, full.epochCurve.slice(0, 2).reduce((b, e) => (e.valAccuracy > (full.epochCurve[b]?.valAccuracy ?? 0) ? e.epoch : b), 0));
    sameRun(full, await trainWithEarlyStopping(options(), {}, deserializeEarlyStoppingState(serializeEarlyStoppingState(err.earlyStoppingState))));
  });

  it('with patience, stops after that many epochs without improvement, also across a resume', async () => {
    // seed 1 at lr 1e-2: epoch 2 is worse than epoch 1, so patience 1 ends the run after epoch 2.
    const o = options({ init: initMlp(SMALL, 1), patience: 1 });
    const saved: Uint8Array[] = [];
    const r = await trainWithEarlyStopping(o, { onCheckpoint: (s) => void saved.push(serializeEarlyStoppingState(s)) });
    assert.equal(r.stoppedEarly, true);
    assert.equal(r.bestEpoch, 1);
    assert.equal(r.epochCurve.length, 3);
    assert.equal(r.curve.length, 30, 'no step of epoch 3 was taken');
    assert.ok((r.epochCurve[2]?.valAccuracy ?? 1) <= (r.epochCurve[1]?.valAccuracy ?? 0));
    assert.equal(saved.length, 6);
    for (const bytes of saved) sameRun(r, await trainWithEarlyStopping(o, {}, deserializeEarlyStoppingState(bytes)));
    // Without patience the same run goes on, and later beats epoch 1.
    const all = await trainWithEarlyStopping({ ...o, patience: undefined });
    assert.equal(all.epochCurve.length, 6);
    assert.ok(all.bestEpoch > 2);
  });

  it('refuses bad options, foreign and corrupt checkpoints with InputError', async () => {
    await assert.rejects(trainWithEarlyStopping({ ...options(), validation: undefined as never }), /non-empty validation set/);
    await assert.rejects(trainWithEarlyStopping(options({ validation: { x: new Float32Array(), y: new Int32Array(), n: 0 } })), InputError);
    await assert.rejects(trainWithEarlyStopping(options({ patience: 0 })), /patience must be an integer ≥ 1/);
    await assert.rejects(trainWithEarlyStopping(options({ epochs: 0 })), /epochs must be an integer ≥ 1/);
    await assert.rejects(trainWithEarlyStopping(options({ secondsBefore: -1 })), /secondsBefore/);
    let bytes: Uint8Array | undefined;
    await trainWithEarlyStopping(options({ epochs: 2, patience: 3 }), { onCheckpoint: (s) => void (bytes ??= serializeEarlyStoppingState(s)) });
    assert.ok(bytes);
    const state = deserializeEarlyStoppingState(bytes);
    await assert.rejects(trainWithEarlyStopping(options({ epochs: 2, patience: 2 }), {}, state), /patience 3, not 2/);
    await assert.rejects(trainWithEarlyStopping(options({ epochs: 2, patience: 3, learningRate: 1e-3 }), {}, state), /different training run/);
    assert.throws(() => deserializeEarlyStoppingState(new Uint8Array([1, 2, 3])), InputError);
    assert.throws(() => deserializeEarlyStoppingState(bytes!.subarray(0, bytes!.length - 1)), /corrupt or truncated/);
    const flipped = new Uint8Array(bytes);
    flipped[60] = (flipped[60] ?? 0) ^ 1;
    assert.throws(() => deserializeEarlyStoppingState(flipped), InputError);
  });
});

describe('secondsToReach', () => {
  const curve = [
    { epoch: 0, valAccuracy: 0.5, secondsElapsed: 10 },
    { epoch: 1, valAccuracy: 0.8, secondsElapsed: 20 },
    { epoch: 2, valAccuracy: 0.7, secondsElapsed: 30 },
    { epoch: 3, valAccuracy: 0.9, secondsElapsed: 40 },
  ];

  it('is the end time of the first epoch at or above the target, never interpolated', () => {
    assert.deepEqual(secondsToReach(curve, 0.6, 100), { seconds: 20, reached: true, epoch: 1 });
    assert.deepEqual(secondsToReach(curve, 0.8, 100), { seconds: 20, reached: true, epoch: 1 }, 'equal counts');
    assert.deepEqual(secondsToReach(curve, 0.85, 100), { seconds: 40, reached: true, epoch: 3 }, 'a later dip does not matter');
    assert.deepEqual(secondsToReach(curve, 0.5, 100), { seconds: 10, reached: true, epoch: 0 });
    assert.deepEqual(secondsToReach(curve, 0, 100), { seconds: 10, reached: true, epoch: 0 });
  });

  it('is capped: not reached, or reached only after the cap, gives the cap and reached false', () => {
    assert.deepEqual(secondsToReach(curve, 0.95, 100), { seconds: 100, reached: false, epoch: null });
    assert.deepEqual(secondsToReach(curve, 0.85, 39.9), { seconds: 39.9, reached: false, epoch: null });
    assert.deepEqual(secondsToReach(curve, 0.85, 40), { seconds: 40, reached: true, epoch: 3 }, 'reaching exactly at the cap counts');
    assert.deepEqual(secondsToReach([], 0.1, 5), { seconds: 5, reached: false, epoch: null });
    assert.deepEqual(secondsToReach(curve, 0.95, Infinity), { seconds: Infinity, reached: false, epoch: null });
  });

  it('uses the curve position when entries carry no epoch, and refuses bad input', () => {
    assert.deepEqual(secondsToReach([{ valAccuracy: 0.1, secondsElapsed: 1 }, { valAccuracy: 0.9, secondsElapsed: 2 }], 0.5, 10), { seconds: 2, reached: true, epoch: 1 });
    assert.throws(() => secondsToReach(curve, NaN, 10), InputError);
    assert.throws(() => secondsToReach(curve, 0.5, -1), InputError);
    assert.throws(() => secondsToReach(curve, 0.5, NaN), InputError);
    assert.throws(() => secondsToReach([{ valAccuracy: 0.9, secondsElapsed: NaN }], 0.5, 10), InputError);
  });
});
