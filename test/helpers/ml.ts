/**
 * What the model-family tests (CNN, ResNet, ViT) share: small data, comparisons, soft KD targets, the
 * MNIST split their training tests learn on, and the exact-resume contract every trainer must keep.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { initBackend } from '../../src/ml/backend';
import type { Dataset } from '../../src/ml/data';
import { loadEmbeddedMnist, selectExamples } from '../../src/ml/data';
import { Rng } from '../../src/ml/rng';
import { tf } from '../../src/ml/tf';
import type { TrainHooksOf, TrainOptionsOf, TrainResultOf } from '../../src/ml/train-engine';
import { TrainingAbortedError } from '../../src/ml/train-engine';
import type { TrainStateOf } from '../../src/ml/train-state';
import { InputError } from '../../src/util/errors';

export function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] ?? 0) - (b[i] ?? 0)));
  return m;
}

/** The arrays end to end, as one vector (parameters compared or hashed as a whole). */
export function concatArrays(arrays: Float32Array[]): Float32Array {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

export function digest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** n images of `arch`'s input shape with standard normal pixels and uniform labels (pixels drawn first). */
export function randomImageData(n: number, arch: { inputShape: [number, number, number]; outputSize: number }, seed: number): Dataset {
  const r = new Rng(seed);
  const d = arch.inputShape[0] * arch.inputShape[1] * arch.inputShape[2];
  return { x: Float32Array.from({ length: n * d }, () => r.normal()), y: Int32Array.from({ length: n }, () => r.nextInt(arch.outputSize)), n };
}

/** The mean of the models' softmax(logits / τ), n × classes: the KD target of a family without `ensembleProbs`. */
export async function softTargets<P>(list: P[], predictLogits: (p: P, ds: Dataset) => Promise<Float32Array>, ds: Dataset, temperature: number): Promise<Float32Array> {
  let out = new Float32Array(0);
  for (const p of list) {
    const logits = await predictLogits(p, ds);
    const classes = logits.length / ds.n;
    if (out.length === 0) out = new Float32Array(ds.n * classes);
    const probs = tf.tidy(() => tf.softmax(tf.div(tf.tensor2d(logits, [ds.n, classes]), temperature)));
    const v = await probs.data();
    probs.dispose();
    for (let i = 0; i < out.length; i++) out[i] = (out[i] ?? 0) + (v[i] ?? 0) / list.length;
  }
  return out;
}

/** Logits of host parameters on a whole (small) dataset in one forward pass: uploaded, run and freed. */
export async function logitsOfParams<P, T>(p: P, ds: Dataset, upload: (p: P) => T, logits: (t: T, x: tf.Tensor2D) => tf.Tensor2D, dispose: (t: T) => void): Promise<Float32Array> {
  const t = upload(p);
  const y = tf.tidy(() => logits(t, tf.tensor2d(ds.x, [ds.n, ds.x.length / ds.n])));
  const out = new Float32Array(await y.data());
  y.dispose();
  dispose(t);
  return out;
}

/** The first 1,000 embedded MNIST digits to learn and the next 500 to score on. */
export function mnistTrainTest(): { train: Dataset; test: Dataset } {
  const all = loadEmbeddedMnist();
  return { train: selectExamples(all, range(0, 1000)), test: selectExamples(all, range(1000, 1500)) };
}

/** wasm gradients agree with cpu's to 1e-4 absolute plus 1e-3 relative, array by array. */
export function assertGradientsMatchCpu(grads: Float32Array[], cpu: Float32Array[]): void {
  grads.forEach((g, k) => {
    for (let i = 0; i < g.length; i++) assert.ok(Math.abs(g[i]! - cpu[k]![i]!) <= 1e-4 + 1e-3 * Math.abs(cpu[k]![i]!), `array ${k}[${i}]: wasm ${g[i]} vs cpu ${cpu[k]![i]}`);
  });
}

/** A family's trainer with its checkpoint and parameter files. */
export interface ResumableTrainer<A, P> {
  train(options: TrainOptionsOf<A, P>, hooks?: TrainHooksOf<P>, resumeFrom?: TrainStateOf<P>): Promise<TrainResultOf<P>>;
  serializeState(s: TrainStateOf<P>): Uint8Array;
  deserializeState(bytes: Uint8Array): TrainStateOf<P>;
  serializeParams(p: P): Uint8Array;
}

/**
 * The exact-resume contract: `options` (with validation and `checkpointEvery`) run uninterrupted for
 * `steps` steps and `checkpoints` checkpoints; resumed from the serialised checkpoints at `resumeAt`, and
 * from the serialised state of a run aborted after `abortAfter` steps, the result (parameters with any
 * running statistics, loss curve, epoch curve) is bit-identical; another run's state is refused. Returns
 * the abort error for the family's own checks.
 */
export async function assertExactResume<A, P>(
  trainer: ResumableTrainer<A, P>,
  options: TrainOptionsOf<A, P>,
  expected: { steps: number; checkpoints: number; resumeAt: number[]; abortAfter: number },
): Promise<TrainingAbortedError<P>> {
  const every = options.checkpointEvery ?? 0;
  const checkpoints: Uint8Array[] = [];
  const full = await trainer.train(options, { onCheckpoint: (s) => void checkpoints.push(trainer.serializeState(s)) });
  assert.equal(full.curve.length, expected.steps);
  assert.equal(checkpoints.length, expected.checkpoints);
  assert.ok(full.epochCurve.every((e) => e.valAccuracy !== undefined));
  const same = (other: TrainResultOf<P>): void => {
    assert.equal(digest(trainer.serializeParams(other.params)), digest(trainer.serializeParams(full.params)), 'parameters (running statistics included) are bit-identical');
    assert.deepEqual(other.curve, full.curve);
    assert.deepEqual(other.epochCurve, full.epochCurve);
  };
  for (const k of expected.resumeAt) {
    const state = trainer.deserializeState(checkpoints[k]!);
    assert.equal(state.step, every * (k + 1));
    same(await trainer.train(options, {}, state));
  }
  let steps = 0;
  const err = await trainer.train(options, { onStep: () => void steps++, shouldAbort: () => steps >= expected.abortAfter }).then(
    () => assert.fail('should abort'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof TrainingAbortedError);
  assert.equal(err.state.step, expected.abortAfter);
  const aborted = err as TrainingAbortedError<P>;
  same(await trainer.train(options, {}, trainer.deserializeState(trainer.serializeState(aborted.state))));
  await assert.rejects(trainer.train({ ...options, seed: options.seed + 1 }, {}, aborted.state), InputError);
  return aborted;
}

/**
 * Runs the enclosing `describe` on `backend`, and puts cpu (the suites' default) back afterwards so the
 * next suite starts where it expects.
 */
export function onBackend(backend: 'cpu' | 'wasm'): void {
  before(async () => {
    await initBackend(backend);
  });
  if (backend !== 'cpu') {
    after(async () => {
      await initBackend('cpu');
    });
  }
}

/** Each row tensor's gradient equals the parameters' gradients laid out as rows, and none is all zeros. */
export async function assertRowGradients(rowGrads: tf.Tensor[], expected: Float32Array[], name: (layer: number) => string = (l) => `layer ${l}`): Promise<void> {
  assert.equal(rowGrads.length, expected.length);
  for (let l = 0; l < expected.length; l++) {
    const got = await rowGrads[l]!.data();
    assert.ok(maxAbsDiff(got, expected[l]!) < 1e-5, name(l));
    assert.ok(got.some((v) => v !== 0), `${name(l)} receives gradient`);
  }
}

/**
 * A training test's measurement: trains, checks that training freed every tensor it made, and returns the
 * result with the wall time, the first and last epochs' mean loss and the accuracy on `test`.
 */
export async function trainAndScore<A, P>(
  train: (options: TrainOptionsOf<A, P>, hooks?: TrainHooksOf<P>) => Promise<TrainResultOf<P>>,
  options: TrainOptionsOf<A, P>,
  accuracy: (p: P, ds: Dataset) => Promise<number>,
  test: Dataset,
  hooks: TrainHooksOf<P> = {},
): Promise<{ trained: TrainResultOf<P>; seconds: number; first: number; last: number; acc: number }> {
  const tensorsBefore = tf.memory().numTensors;
  const started = Date.now();
  const trained = await train(options, hooks);
  const seconds = (Date.now() - started) / 1000;
  assert.equal(tf.memory().numTensors, tensorsBefore, 'training frees every tensor it made');
  const first = trained.epochCurve[0]!.meanLoss;
  const last = trained.epochCurve[trained.epochCurve.length - 1]!.meanLoss;
  return { trained, seconds, first, last, acc: await accuracy(trained.params, test) };
}
