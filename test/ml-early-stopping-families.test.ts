import assert from 'node:assert/strict';
import { initBackend } from '../src/ml/backend';
import type { DatasetSplit } from '../src/ml/data';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import type { EarlyStoppingOptionsOf, EarlyStoppingResultOf, EarlyStoppingTrainer } from '../src/ml/early-stopping';
import {
  deserializeEarlyStoppingState,
  EarlyStoppingAbortedError,
  serializeEarlyStoppingState,
  trainWithEarlyStopping,
} from '../src/ml/early-stopping';
import type { CnnArchitecture, CnnParams } from '../src/ml/cnn/architecture';
import { cloneCnnParams, initCnn } from '../src/ml/cnn/architecture';
import { cnnAccuracy } from '../src/ml/cnn/forward';
import { deserializeCnnParams, serializeCnnParams } from '../src/ml/cnn/io';
import { deserializeCnnTrainState, serializeCnnTrainState, trainCnn } from '../src/ml/cnn/train';
import { TrainingAbortedError } from '../src/ml/train';
import { InputError } from '../src/util/errors';

/** The CNN as early stopping sees it: its trainer, checkpoint and parameter file (the library's own functions). */
const CNN: EarlyStoppingTrainer<CnnArchitecture, CnnParams> = {
  train: trainCnn,
  clone: cloneCnnParams,
  serializeTrainState: serializeCnnTrainState,
  deserializeTrainState: deserializeCnnTrainState,
  serializeParams: serializeCnnParams,
  deserializeParams: deserializeCnnParams,
};

const ARCH: CnnArchitecture = { family: 'cnn', inputShape: [28, 28, 1], channels: [2, 4], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [], outputSize: 10 };

let splitCache: DatasetSplit | undefined;
const split = (): DatasetSplit =>
  (splitCache ??= splitDataset(
    loadEmbeddedMnist(),
    { source: 'mnist-embedded', shardSize: 100, consolidationSize: 200, validationSize: 150, testSize: 100, splitSeed: 5 },
    1,
  ));

/** 200 digits, batches of 40 (5 steps an epoch), 4 epochs, a checkpoint every 3 steps. */
const options = (over: Partial<EarlyStoppingOptionsOf<CnnArchitecture, CnnParams>> = {}): EarlyStoppingOptionsOf<CnnArchitecture, CnnParams> => ({
  arch: ARCH,
  init: initCnn(ARCH, 7),
  train: split().consolidation,
  validation: split().validation,
  epochs: 4,
  batchSize: 40,
  learningRate: 2e-2,
  seed: 17,
  checkpointEvery: 3,
  ...over,
});

function sameRun(a: EarlyStoppingResultOf<CnnParams>, b: EarlyStoppingResultOf<CnnParams>): void {
  assert.deepEqual(serializeCnnParams(b.params), serializeCnnParams(a.params), 'best parameters (running statistics included) are bit-identical');
  assert.deepEqual(serializeCnnParams(b.finalParams), serializeCnnParams(a.finalParams), 'final parameters are bit-identical');
  assert.equal(b.bestEpoch, a.bestEpoch);
  assert.equal(b.bestValAccuracy, a.bestValAccuracy);
  assert.deepEqual(b.curve, a.curve);
  assert.deepEqual(b.epochCurve.map((e) => e.valAccuracy), a.epochCurve.map((e) => e.valAccuracy));
}

describe('ml early stopping over another family: a CNN with batch norm, on wasm', function () {
  this.timeout(120_000);
  before(async () => {
    await initBackend('wasm');
  });

  it('is an ordinary trainCnn run that keeps the best validation epoch', async () => {
    const r = await trainWithEarlyStopping(options(), {}, undefined, CNN);
    assert.equal(r.epochCurve.length, 4);
    const accs = r.epochCurve.map((e) => e.valAccuracy);
    assert.equal(r.bestEpoch, accs.indexOf(Math.max(...accs)));
    assert.equal(await cnnAccuracy(r.params, split().validation), r.bestValAccuracy, 'the kept parameters (with their running statistics) score the best accuracy');
    assert.ok(r.bestValAccuracy > 0.2, `learns: ${accs.join(', ')}`);
    const plain = await trainCnn(options());
    assert.deepEqual(serializeCnnParams(plain.params), serializeCnnParams(r.finalParams));
    assert.deepEqual(plain.curve, r.curve);
  });

  it('resumed from any serialised checkpoint equals the uninterrupted run; the checkpoint is the CNN’s', async () => {
    const saved: Uint8Array[] = [];
    const full = await trainWithEarlyStopping(options(), { onCheckpoint: (s) => void saved.push(serializeEarlyStoppingState(s, CNN)) }, undefined, CNN);
    assert.equal(saved.length, 6); // steps 3, 6, …, 18
    for (const bytes of saved) sameRun(full, await trainWithEarlyStopping(options(), {}, deserializeEarlyStoppingState(bytes, CNN), CNN));
    // Read as an MLP's (the default), a CNN checkpoint is refused: its training checkpoint has the CNN magic.
    assert.throws(() => deserializeEarlyStoppingState(saved[0]!), InputError);
  });

  it('stops when asked, with the CNN state, and patience ends the run early', async () => {
    const full = await trainWithEarlyStopping(options(), {}, undefined, CNN);
    let steps = 0;
    const err = await trainWithEarlyStopping(options(), { onStep: () => void steps++, shouldAbort: () => steps >= 7 }, undefined, CNN).then(
      () => assert.fail('should abort'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof EarlyStoppingAbortedError && err instanceof TrainingAbortedError);
    const state = (err as EarlyStoppingAbortedError<CnnParams>).earlyStoppingState;
    assert.equal(state.train.step, 7);
    assert.equal(state.best?.params.family, 'cnn');
    sameRun(full, await trainWithEarlyStopping(options(), {}, deserializeEarlyStoppingState(serializeEarlyStoppingState(state, CNN), CNN), CNN));
    // On wasm this run improves through epoch 4 and falls at epoch 5: patience 1 ends it there.
    const patient = await trainWithEarlyStopping(options({ epochs: 12, patience: 1 }), {}, undefined, CNN);
    assert.equal(patient.stoppedEarly, true);
    assert.equal(patient.bestEpoch, 4);
    assert.equal(patient.epochCurve.length, 6);
    assert.equal(patient.curve.length, 30, 'no step of epoch 6 was taken');
  });
});
