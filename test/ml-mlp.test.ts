import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { ArchitectureSpec } from '../src/spec/types';
import { initBackend } from '../src/ml/backend';
import type { Dataset } from '../src/ml/data';
import type { MlpParams } from '../src/ml/mlp';
import {
  accuracy,
  accuracyOfScores,
  architectureOf,
  architectureSignature,
  checkParamsMatch,
  cloneParams,
  deserializeParams,
  ensembleAccuracy,
  ensembleProbs,
  initMlp,
  mlpLogits,
  paramCount,
  paramsDigest,
  paramsToTensors,
  disposeMlpTensors,
  predictLogits,
  predictProbs,
  serializeParams,
} from '../src/ml/mlp';
import { Rng } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import { InputError } from '../src/util/errors';

const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [64, 32], outputSize: 10, activation: 'relu' };

function randomData(n: number, d: number, seed: number): Dataset {
  const r = new Rng(seed);
  return { x: Float32Array.from({ length: n * d }, () => r.nextFloat()), y: Int32Array.from({ length: n }, () => r.nextInt(10)), n };
}

/** Recomputes the sha256 trailer, to build files that are well-formed but wrong inside. */
function resealed(bytes: Uint8Array): Uint8Array {
  const body = bytes.subarray(0, bytes.length - 32);
  return new Uint8Array(Buffer.concat([body, createHash('sha256').update(body).digest()]));
}

describe('ml mlp', () => {
  before(async () => {
    await initBackend('cpu');
  });

  it('initialises the requested shapes, deterministically per seed, with He scale for ReLU', () => {
    const p = initMlp(ARCH, 1);
    assert.deepEqual(p.layers.map((l) => [l.inSize, l.outSize, l.w.length, l.b.length]), [
      [784, 64, 784 * 64, 64],
      [64, 32, 64 * 32, 32],
      [32, 10, 320, 10],
    ]);
    assert.equal(paramCount(p), 784 * 64 + 64 + 64 * 32 + 32 + 320 + 10);
    assert.deepEqual(initMlp(ARCH, 1), p);
    assert.notDeepEqual(initMlp(ARCH, 2).layers[0]!.w, p.layers[0]!.w);
    const w = p.layers[0]!.w;
    const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
    assert.ok(Math.abs(std - Math.sqrt(2 / 784)) < 0.05 * Math.sqrt(2 / 784), `std ${std}`);
    assert.ok(p.layers.every((l) => l.b.every((v) => v === 0)));
  });

  it('describes its architecture and refuses a mismatched one', () => {
    const p = initMlp(ARCH, 1);
    assert.deepEqual(architectureOf(p), ARCH);
    assert.equal(architectureSignature(p), 'mlp:784-64-32-10:relu');
    assert.throws(() => checkParamsMatch(p, { ...ARCH, hidden: [64] }), InputError);
    assert.throws(() => initMlp({ ...ARCH, hidden: [0] }, 1), InputError);
  });

  it('computes logits of shape batch × classes and probabilities that sum to 1', async () => {
    const p = initMlp(ARCH, 3);
    const data = randomData(1234, 784, 1); // more than one evaluation chunk
    const logits = tf.tidy(() => {
      const t = paramsToTensors(p);
      const out = mlpLogits(t, tf.tensor2d(data.x.subarray(0, 5 * 784), [5, 784]));
      disposeMlpTensors(t);
      return out;
    });
    assert.deepEqual(logits.shape, [5, 10]);
    const all = await predictLogits(p, data);
    assert.equal(all.length, 1234 * 10);
    assert.deepEqual(Array.from(all.subarray(0, 50)), Array.from(await logits.data()));
    logits.dispose();
    const probs = await predictProbs(p, data, 2);
    for (let i = 0; i < data.n; i++) {
      const s = probs.subarray(i * 10, (i + 1) * 10).reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(s - 1) < 1e-5);
    }
    await assert.rejects(predictProbs(p, data, 0), InputError);
    await assert.rejects(predictLogits(p, randomData(3, 10, 1)), InputError);
  });

  it('scores accuracy on the host and ensembles by averaged softmax', async () => {
    assert.equal(accuracyOfScores(Float32Array.from([0.1, 0.9, 0.8, 0.2, 0.5, 0.5]), Int32Array.from([1, 0, 1])), 2 / 3);
    const data = randomData(300, 784, 2);
    const a = initMlp(ARCH, 4);
    const b = initMlp(ARCH, 5);
    assert.equal(await ensembleAccuracy([a], data), await accuracy(a, data));
    const pa = await predictProbs(a, data);
    const pb = await predictProbs(b, data);
    const mean = await ensembleProbs([a, b], data);
    for (let i = 0; i < mean.length; i += 97) assert.ok(Math.abs(mean[i]! - (pa[i]! + pb[i]!) / 2) < 1e-7);
    await assert.rejects(ensembleProbs([], data), InputError);
  });

  it('leaks no tensors when evaluating', async () => {
    const before = tf.memory().numTensors;
    await accuracy(initMlp(ARCH, 1), randomData(50, 784, 3));
    assert.equal(tf.memory().numTensors, before);
  });
});

describe('ml parameter files', () => {
  const params = (): MlpParams => {
    const p = initMlp({ family: 'mlp', inputSize: 6, hidden: [5], outputSize: 3, activation: 'tanh' }, 8);
    p.layers[0]!.b[2] = -0.25;
    return p;
  };

  it('round-trips exactly, activation included', () => {
    const p = params();
    const bytes = serializeParams(p);
    assert.deepEqual(deserializeParams(bytes), p);
    assert.equal(paramsDigest(p), paramsDigest(cloneParams(p)));
    assert.deepEqual(deserializeParams(serializeParams(initMlp(ARCH, 2))), initMlp(ARCH, 2));
  });

  it('rejects truncated, corrupted and foreign bytes with InputError', () => {
    const bytes = serializeParams(params());
    const bad = (b: Uint8Array, pattern: RegExp): void => {
      assert.throws(() => deserializeParams(b), (e: unknown) => e instanceof InputError && pattern.test(e.message));
    };
    bad(bytes.subarray(0, bytes.length - 1), /corrupt or truncated/);
    bad(bytes.subarray(0, 20), /truncated/);
    bad(bytes.subarray(0, 2), /not a parameter file/);
    const flipped = new Uint8Array(bytes);
    flipped[40] = (flipped[40] ?? 0) ^ 0x10;
    bad(flipped, /checksum/);
    bad(new TextEncoder().encode('{"layers": []}'), /not a parameter file/);
  });

  it('rejects well-sealed files with NaN, bad versions or shapes that do not chain', () => {
    const bytes = serializeParams(params());
    const bad = (mutate: (b: Buffer) => void, pattern: RegExp): void => {
      const copy = Buffer.from(bytes);
      mutate(copy);
      assert.throws(() => deserializeParams(resealed(copy)), (e: unknown) => e instanceof InputError && pattern.test(e.message));
    };
    const header = 4 + 4 + 4 + 4 + 2 * 8; // magic, version, activation, count, 2 layers × (in, out)
    bad((b) => b.writeFloatLE(NaN, header + 4 * 7), /non-finite/);
    bad((b) => b.writeFloatLE(Infinity, header), /non-finite/);
    bad((b) => b.writeUInt32LE(2, 4), /version 2/);
    bad((b) => b.writeUInt32LE(7, 8), /activation/);
    bad((b) => b.writeUInt32LE(4, 24), /.+/); // layer 1 input 4 ≠ layer 0 output 5 (and the sizes no longer add up)
    bad((b) => b.writeUInt32LE(0, 12), /layer count/);
  });

  it('refuses to write non-finite parameters', () => {
    const p = params();
    p.layers[1]!.w[0] = NaN;
    assert.throws(() => serializeParams(p), InputError);
  });
});
