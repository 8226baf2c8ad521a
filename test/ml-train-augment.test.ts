import assert from 'node:assert/strict';
import { initBackend } from '../src/ml/backend';
import type { CnnArchitecture, CnnParams, CnnTensors } from '../src/ml/cnn';
import { CNN_TRAINING, cnnParamArrays, deserializeCnnTrainState, initCnn, serializeCnnTrainState, trainCnn } from '../src/ml/cnn';
import type { Dataset } from '../src/ml/data';
import { Rng } from '../src/ml/rng';
import type { TrainFamily, TrainOptionsOf } from '../src/ml/train-engine';
import { trainWith } from '../src/ml/train-engine';
import type { TrainStateOf } from '../src/ml/train-state';
import { InputError, SpecError } from '../src/util/errors';
import { tinySpec } from './helpers/specs';

const ARCH: CnnArchitecture = { family: 'cnn', inputShape: [6, 6, 1], channels: [2], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [], outputSize: 3 };

function randomData(n: number, seed: number): Dataset {
  const r = new Rng(seed);
  return { x: Float32Array.from({ length: n * 36 }, () => r.nextFloat()), y: Int32Array.from({ length: n }, () => r.nextInt(3)), n };
}

const DATA = randomData(20, 1);

function options(seed: number, augment: TrainOptionsOf<CnnArchitecture, CnnParams>['augment']): TrainOptionsOf<CnnArchitecture, CnnParams> {
  return { arch: ARCH, init: initCnn(ARCH, 5), train: DATA, epochs: 2, batchSize: 8, learningRate: 1e-2, seed, ...(augment ? { augment } : {}) };
}

const AUGMENT = { options: { flip: true, cropPadding: 2 }, inputShape: [6, 6, 1] as [number, number, number] };

/** The batches the loop feeds the model, as host arrays (a spy around the CNN adapter). */
async function batchesOf(o: TrainOptionsOf<CnnArchitecture, CnnParams>): Promise<Float32Array[]> {
  const seen: Float32Array[] = [];
  const spy: TrainFamily<CnnArchitecture, CnnParams, CnnTensors> = {
    ...CNN_TRAINING,
    trainForward: (t, x) => {
      seen.push(new Float32Array(x.dataSync()));
      return CNN_TRAINING.trainForward(t, x);
    },
  };
  await trainWith(spy, o);
  return seen;
}

function flat(p: CnnParams): number[] {
  return cnnParamArrays(p).flatMap((a) => Array.from(a));
}

describe('augmentation in teacher training (cpu)', function () {
  before(async () => {
    await initBackend('cpu');
  });

  it('the same seed feeds the same augmented batches, another seed other ones; without augment the batches are the raw examples', async () => {
    const a = await batchesOf(options(7, AUGMENT));
    const b = await batchesOf(options(7, AUGMENT));
    const c = await batchesOf(options(8, AUGMENT));
    const plain = await batchesOf(options(7, undefined));
    assert.equal(a.length, 6); // 2 epochs × ⌈20 / 8⌉ steps
    assert.deepEqual(b, a);
    assert.notDeepEqual(c, a);
    // Same data order (seed 7) with and without augmentation: only the pixels differ, and some do.
    assert.equal(plain.length, a.length);
    assert.ok(a.some((batch, i) => batch.some((v, j) => v !== plain[i]![j])), 'augmentation changed some pixels');
    // Each augmented batch is a flip/shift of the raw one: every non-zero pixel value appears in the raw batch.
    a.forEach((batch, i) => {
      const raw = new Set(plain[i]);
      for (const v of batch) if (v !== 0) assert.ok(raw.has(v), `batch ${i}: ${v} is not a raw pixel`);
    });
  });

  it('is deterministic end to end and resumes bit for bit from a checkpoint', async () => {
    const states: Uint8Array[] = [];
    const full = await trainCnn({ ...options(7, AUGMENT), checkpointEvery: 2 }, { onCheckpoint: (s) => void states.push(serializeCnnTrainState(s)) });
    const again = await trainCnn(options(7, AUGMENT));
    assert.deepEqual(flat(again.params), flat(full.params));
    const plain = await trainCnn(options(7, undefined));
    assert.notDeepEqual(flat(plain.params), flat(full.params));
    const resumed = await trainCnn({ ...options(7, AUGMENT), checkpointEvery: 2 }, {}, deserializeCnnTrainState(states[1]!) as TrainStateOf<CnnParams>);
    assert.deepEqual(flat(resumed.params), flat(full.params));
    assert.deepEqual(resumed.curve, full.curve);
    // A checkpoint of the run without augmentation does not resume the augmented one.
    const plainStates: Uint8Array[] = [];
    await trainCnn({ ...options(7, undefined), checkpointEvery: 2 }, { onCheckpoint: (s) => void plainStates.push(serializeCnnTrainState(s)) });
    await assert.rejects(trainCnn(options(7, AUGMENT), {}, deserializeCnnTrainState(plainStates[0]!)), InputError);
    // Augmentation of images of another size than the model's: refused.
    await assert.rejects(trainCnn(options(7, { ...AUGMENT, inputShape: [6, 3, 1] })), /augmentation of 6×3×1 images/);
  });
});

describe('teachers.train.augment in pipeline files', () => {
  const cnn = 'architecture: {family: cnn, channels: [2], hidden: []}';

  it('validates, fills its defaults (flip off), and is absent unless given', () => {
    const spec = tinySpec(`${cnn}\nteachers: {count: 3, train: {epochs: 1, augment: {cropPadding: 2}}}\nzoo: {count: 2, train: {augment: {flip: true}}}`).spec;
    assert.deepEqual(spec.teachers.train.augment, { flip: false, cropPadding: 2 });
    assert.deepEqual(spec.zoo.train.augment, { flip: true, cropPadding: 0 });
    assert.equal(tinySpec(cnn).spec.teachers.train.augment, undefined);
  });

  it('refuses unknown keys, bad values and the mlp family, positioned', () => {
    const errorOf = (text: string): string => {
      try {
        tinySpec(text);
      } catch (e) {
        if (e instanceof SpecError) return e.diagnostics.map((d) => `${d.path}@${d.line}:${d.col}: ${d.message}`).join('\n');
        throw e;
      }
      assert.fail(`loaded: ${text}`);
    };
    assert.match(errorOf(`${cnn}\nteachers: {count: 3, train: {augment: {mirror: true}}}`), /\/teachers\/train\/augment\/mirror@\d+:\d+/);
    assert.match(errorOf(`${cnn}\nteachers: {count: 3, train: {augment: {cropPadding: -1}}}`), /\/teachers\/train\/augment\/cropPadding@\d+:\d+/);
    assert.match(errorOf(`${cnn}\nteachers: {count: 3, train: {augment: {flip: 1}}}`), /\/teachers\/train\/augment\/flip@\d+:\d+/);
    assert.match(errorOf('teachers: {count: 3, train: {augment: {flip: true}}}'), /\/teachers\/train\/augment@\d+:\d+: image augmentation needs an image family/);
    assert.match(errorOf(`${cnn}\nzoo: {count: 2, train: {augment: {cropPadding: 17}}}`), /\/zoo\/train\/augment\/cropPadding@\d+:\d+/);
  });
});
