import assert from 'node:assert/strict';
import type { Dataset } from '../src/ml/data';
import { selectExamples } from '../src/ml/data';
import { accuracyOfScores } from '../src/ml/mlp';
import { Rng } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import { lossOfLogits } from '../src/ml/cnn/train';
import { InputError } from '../src/util/errors';
import type { ResumableTrainer } from './helpers/ml';
import {
  assertExactResume,
  assertGradientsMatchCpu,
  assertRowGradients,
  logitsOfParams,
  maxAbsDiff,
  mnistTrainTest,
  onBackend,
  randomImageData,
  range,
  softTargets,
  trainAndScore,
} from './helpers/ml';
import type { TrainVitOptions, VitArchitecture, VitParams, VitPermutations, VitTensors, VitTrainResult } from '../src/ml/vit';
import {
  alignedAverageVit,
  alignVitToReference,
  checkVitArchitecture,
  cloneVitParams,
  deserializeVitParams,
  deserializeVitTrainState,
  disposeVitTensors,
  identityVitPermutations,
  initVit,
  matchVitWeights,
  naiveAverageVit,
  permuteVitUnits,
  predictVitLogits,
  rowsToVitParams,
  rowsToVitTensors,
  serializeVitParams,
  serializeVitTrainState,
  trainVit,
  validateVitParams,
  vitAccuracy,
  vitArchitectureOf,
  vitLogits,
  vitParamArrays,
  vitParamCount,
  vitParamsFromArrays,
  vitParamShapes,
  vitParamsToTensors,
  vitRowsLayout,
  vitSignature,
  vitTensorList,
  vitTensorsFromList,
  vitTensorsToParams,
  vitToRows,
  VitTrainingAbortedError,
} from '../src/ml/vit';

/** The brief's tiny ViT: 4 tokens of 2×2 pixels, 2 heads of 2 dims. */
const TINY: VitArchitecture = { family: 'vit', inputShape: [4, 4, 1], patchSize: 2, dim: 4, heads: 2, depth: 1, mlpRatio: 2, outputSize: 3 };
/** Non-square, two channels, two blocks, three heads, a fractional MLP ratio. */
const SMALL: VitArchitecture = { family: 'vit', inputShape: [4, 6, 2], patchSize: 2, dim: 6, heads: 3, depth: 2, mlpRatio: 1.5, outputSize: 3 };
/** Larger heads (4 dims) and hidden layers for alignment. */
const WIDE: VitArchitecture = { family: 'vit', inputShape: [8, 8, 2], patchSize: 2, dim: 12, heads: 3, depth: 2, mlpRatio: 2, outputSize: 4 };
const MNIST_VIT: VitArchitecture = { family: 'vit', inputShape: [28, 28, 1], patchSize: 7, dim: 32, heads: 4, depth: 1, mlpRatio: 2, outputSize: 10 };

function features(arch: VitArchitecture): number {
  return arch.inputShape[0] * arch.inputShape[1] * arch.inputShape[2];
}

/** A ViT whose every entry is non-trivial (initVit's biases, γ and β are constants, which would hide permutation bugs). */
function randomVit(arch: VitArchitecture, seed: number): VitParams {
  const p = initVit(arch, seed);
  const r = new Rng(seed + 1000);
  const noise = (a: Float32Array, std: number): void => {
    for (let i = 0; i < a.length; i++) a[i] = r.normal(0, std);
  };
  noise(p.patchEmbed.b, 0.3);
  noise(p.posEmbed, 0.5);
  const norms = [...p.blocks.flatMap((b) => [b.norm1, b.norm2]), p.norm];
  for (const n of norms) {
    for (let i = 0; i < n.gamma.length; i++) n.gamma[i] = 0.5 + r.nextFloat();
    noise(n.beta, 0.3);
  }
  for (const b of p.blocks) for (const l of [b.q, b.k, b.v, b.proj, b.fc1, b.fc2]) noise(l.b, 0.3);
  noise(p.head.b, 0.3);
  return p;
}

function logitsOf(p: VitParams, ds: Dataset): Promise<Float32Array> {
  return logitsOfParams(p, ds, vitParamsToTensors, vitLogits, disposeVitTensors);
}

function randomPerms(p: VitParams, seed: number, withinHeads = true): VitPermutations {
  const r = new Rng(seed);
  const dh = p.patchEmbed.outSize / p.heads;
  const inner = (): Int32Array => (withinHeads ? r.permutation(dh) : Int32Array.from({ length: dh }, (_, i) => i));
  return p.blocks.map((b) => ({
    heads: r.permutation(p.heads),
    qk: Array.from({ length: p.heads }, inner),
    v: Array.from({ length: p.heads }, inner),
    mlp: r.permutation(b.fc1.outSize),
  }));
}

// ---------------------------------------------------------------------------------------------------------
// An independent float64 reference of the whole network and its loss, written without tfjs. It reads the
// arrays in `vitParamShapes` order (perturbed in place by the finite differences).

/** erf to ~1e-14: its Taylor series below 3, the continued fraction of erfc above. */
function erf(x: number): number {
  const a = Math.abs(x);
  let value: number;
  if (a < 3) {
    let term = a;
    let sum = a;
    for (let n = 1; n < 80; n++) {
      term *= (-a * a) / n;
      sum += term / (2 * n + 1);
    }
    value = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    let f = a;
    for (let k = 80; k >= 1; k--) f = a + k / 2 / f;
    value = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / f;
  }
  return x < 0 ? -value : value;
}

function refLogits(arch: VitArchitecture, w: Float64Array[], x: Float32Array, n: number): number[][] {
  const [h, wd, c] = arch.inputShape;
  const P = arch.patchSize;
  const D = arch.dim;
  const H = arch.heads;
  const dh = D / H;
  const hidden = Math.round(arch.mlpRatio * D);
  const T = (h / P) * (wd / P);
  const at = (i: number): Float64Array => w[i]!;
  const linear = (v: number[], W: Float64Array, b: Float64Array, inSize: number, outSize: number): number[] =>
    Array.from({ length: outSize }, (_, o) => {
      let s = b[o]!;
      for (let i = 0; i < inSize; i++) s += v[i]! * W[i * outSize + o]!;
      return s;
    });
  const ln = (v: number[], g: Float64Array, b: Float64Array): number[] => {
    const mean = v.reduce((s, e) => s + e, 0) / v.length;
    const variance = v.reduce((s, e) => s + (e - mean) ** 2, 0) / v.length;
    return v.map((e, i) => ((e - mean) / Math.sqrt(variance + 1e-6)) * g[i]! + b[i]!);
  };
  const out: number[][] = [];
  for (let e = 0; e < n; e++) {
    let z: number[][] = [];
    for (let pi = 0; pi < h / P; pi++) {
      for (let pj = 0; pj < wd / P; pj++) {
        const patch: number[] = [];
        for (let a = 0; a < P; a++) for (let b = 0; b < P; b++) for (let ch = 0; ch < c; ch++) patch.push(x[e * h * wd * c + ((pi * P + a) * wd + pj * P + b) * c + ch]!);
        const t = pi * (wd / P) + pj;
        z.push(linear(patch, at(0), at(1), P * P * c, D).map((v, j) => v + at(2)[t * D + j]!));
      }
    }
    for (let blk = 0; blk < arch.depth; blk++) {
      const o = 3 + 16 * blk;
      const y = z.map((v) => ln(v, at(o), at(o + 1)));
      const q = y.map((v) => linear(v, at(o + 2), at(o + 3), D, D));
      const k = y.map((v) => linear(v, at(o + 4), at(o + 5), D, D));
      const vv = y.map((v) => linear(v, at(o + 6), at(o + 7), D, D));
      const mixed = z.map(() => new Array<number>(D).fill(0));
      for (let hd = 0; hd < H; hd++) {
        for (let t = 0; t < T; t++) {
          const s = Array.from({ length: T }, (_, u) => {
            let dot = 0;
            for (let d = 0; d < dh; d++) dot += q[t]![hd * dh + d]! * k[u]![hd * dh + d]!;
            return dot / Math.sqrt(dh);
          });
          const m = Math.max(...s);
          const ex = s.map((v) => Math.exp(v - m));
          const sum = ex.reduce((acc, v) => acc + v, 0);
          for (let u = 0; u < T; u++) for (let d = 0; d < dh; d++) mixed[t]![hd * dh + d]! += (ex[u]! / sum) * vv[u]![hd * dh + d]!;
        }
      }
      z = z.map((v, t) => {
        const attn = linear(mixed[t]!, at(o + 8), at(o + 9), D, D);
        return v.map((e, j) => e + attn[j]!);
      });
      z = z.map((v) => {
        const u = linear(ln(v, at(o + 10), at(o + 11)), at(o + 12), at(o + 13), D, hidden).map((a) => 0.5 * a * (1 + erf(a / Math.SQRT2)));
        const m = linear(u, at(o + 14), at(o + 15), hidden, D);
        return v.map((e, j) => e + m[j]!);
      });
    }
    const f = 3 + 16 * arch.depth;
    const normed = z.map((v) => ln(v, at(f), at(f + 1)));
    const pooled = Array.from({ length: D }, (_, j) => normed.reduce((s, v) => s + v[j]!, 0) / T);
    out.push(linear(pooled, at(f + 2), at(f + 3), D, arch.outputSize));
  }
  return out;
}

function refLoss(arch: VitArchitecture, w: Float64Array[], ds: Dataset): number {
  const logits = refLogits(arch, w, ds.x, ds.n);
  return (
    logits.reduce((s, z, e) => {
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((t, v) => t + Math.exp(v - m), 0));
      return s + lse - z[ds.y[e]!]!;
    }, 0) / ds.n
  );
}

/** Cross-entropy loss and the gradient of every parameter array (in `vitParamArrays` order), on the active backend. */
async function tfLossAndGrads(arch: VitArchitecture, p: VitParams, ds: Dataset): Promise<{ loss: number; grads: Float32Array[] }> {
  const shapes = vitParamShapes(arch);
  const flat = vitParamArrays(p).map((a, i) => tf.tensor(a, shapes[i]));
  const x = tf.tensor2d(ds.x, [ds.n, features(arch)]);
  const yOneHot = tf.tidy(() => tf.cast(tf.oneHot(tf.tensor1d(ds.y, 'int32'), arch.outputSize), 'float32')) as tf.Tensor2D;
  const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) => lossOfLogits(vitLogits(vitTensorsFromList(arch, ps), x), { yOneHot }))(flat);
  const loss = (await value.data())[0]!;
  const out: Float32Array[] = [];
  for (const g of grads) out.push(new Float32Array(await g.data()));
  tf.dispose([value, ...grads, ...flat, x, yOneHot]);
  return { loss, grads: out };
}

const GRAD_CASES: Array<{ label: string; arch: VitArchitecture }> = [
  { label: 'tiny (4×4×1, patch 2, dim 4, 2 heads, depth 1)', arch: TINY },
  { label: 'small (4×6×2, dim 6, 3 heads, depth 2, MLP ratio 1.5)', arch: SMALL },
];

/** Gradients computed on cpu, compared on wasm. */
const cpuGradients = new Map<string, Float32Array[]>();

describe('ml vit: architecture, parameters and file', () => {
  onBackend('cpu');

  it('initialises the requested shapes deterministically, with Glorot scale, LN γ 1 β 0', () => {
    const p = initVit(MNIST_VIT, 1);
    assert.deepEqual([p.patchEmbed.inSize, p.patchEmbed.outSize], [49, 32]);
    assert.equal(p.posEmbed.length, 16 * 32);
    assert.equal(p.blocks.length, 1);
    assert.deepEqual([p.blocks[0]!.fc1.inSize, p.blocks[0]!.fc1.outSize, p.blocks[0]!.fc2.outSize], [32, 64, 32]);
    const perBlock = 2 * 32 + 4 * (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32);
    assert.equal(vitParamCount(p), 49 * 32 + 32 + 16 * 32 + perBlock + 2 * 32 + 32 * 10 + 10);
    assert.deepEqual(initVit(MNIST_VIT, 1), p);
    assert.notDeepEqual(initVit(MNIST_VIT, 2).blocks[0]!.q.w, p.blocks[0]!.q.w);
    const fc1 = p.blocks[0]!.fc1.w;
    const std = Math.sqrt(fc1.reduce((s, v) => s + v * v, 0) / fc1.length);
    assert.ok(Math.abs(std - Math.sqrt(2 / 96)) < 0.06 * Math.sqrt(2 / 96), `std ${std}`);
    assert.ok(p.norm.gamma.every((v) => v === 1) && p.blocks[0]!.norm2.beta.every((v) => v === 0) && p.blocks[0]!.q.b.every((v) => v === 0));
  });

  it('describes its architecture and refuses impossible ones', () => {
    const p = initVit(SMALL, 1);
    assert.deepEqual(vitArchitectureOf(p), SMALL);
    assert.equal(vitSignature(p), 'vit:4x6x2:p2:d6:h3:x2:m9:3');
    assert.equal(vitSignature(MNIST_VIT), 'vit:28x28x1:p7:d32:h4:x1:m64:10');
    for (const bad of [
      { ...SMALL, patchSize: 4 }, // does not divide 6
      { ...SMALL, heads: 4 }, // does not divide 6
      { ...SMALL, depth: 0 },
      { ...SMALL, mlpRatio: 1.1 }, // 6.6 hidden units
      { ...SMALL, mlpRatio: 0 },
      { ...SMALL, inputShape: [4, 6] as unknown as [number, number, number] },
      { ...SMALL, family: 'cnn' as 'vit' },
      { ...SMALL, outputSize: 0 },
    ]) {
      assert.throws(() => checkVitArchitecture(bad), InputError, JSON.stringify(bad));
    }
  });

  it('validates shapes and values', () => {
    const ok = randomVit(SMALL, 3);
    validateVitParams(ok);
    const broken: Array<(p: VitParams) => void> = [
      (p) => (p.blocks[1]!.q.w = new Float32Array(3)),
      (p) => (p.posEmbed = new Float32Array(5)),
      (p) => (p.blocks[0]!.norm1.gamma[1] = NaN),
      (p) => (p.head.b[0] = Infinity),
      (p) => (p.blocks[0]!.fc2.inSize = 8),
      (p) => (p.heads = 4),
      (p) => (p.blocks = []),
    ];
    for (const breakIt of broken) {
      const p = cloneVitParams(ok);
      breakIt(p);
      assert.throws(() => validateVitParams(p), InputError, breakIt.toString());
    }
  });

  it('round-trips its parameter file and rejects damaged ones', () => {
    for (const arch of [SMALL, TINY]) {
      const p = randomVit(arch, 4);
      const bytes = serializeVitParams(p);
      assert.deepEqual(deserializeVitParams(bytes), p);
      const flipped = new Uint8Array(bytes);
      flipped[60] = (flipped[60] ?? 0) ^ 1;
      assert.throws(() => deserializeVitParams(flipped), InputError);
      assert.throws(() => deserializeVitParams(bytes.subarray(0, bytes.length - 5)), InputError);
    }
    const nan = randomVit(SMALL, 5);
    nan.blocks[1]!.fc1.b[0] = NaN;
    assert.throws(() => serializeVitParams(nan), InputError);
  });

  it('forward: logits batch × classes; uploads and downloads exactly; chunked evaluation equals one pass', async () => {
    const p = randomVit(SMALL, 6);
    const data = randomImageData(1100, SMALL, 7); // more than two evaluation chunks
    const t = vitParamsToTensors(p);
    assert.deepEqual(await vitTensorsToParams(t), p);
    const logits4d = tf.tidy(() => vitLogits(t, tf.tensor4d(data.x.subarray(0, 5 * 48), [5, 4, 6, 2])));
    assert.deepEqual(logits4d.shape, [5, 3]);
    const whole = tf.tidy(() => vitLogits(t, tf.tensor2d(data.x, [1100, 48])));
    const chunked = await predictVitLogits(p, data);
    assert.ok(maxAbsDiff(chunked, await whole.data()) < 1e-5);
    assert.ok(maxAbsDiff(chunked.subarray(0, 15), await logits4d.data()) < 1e-5);
    assert.equal(await vitAccuracy(p, data), accuracyOfScores(chunked, data.y));
    const wrong = tf.zeros([2, 4, 6, 1]) as tf.Tensor4D;
    assert.throws(() => vitLogits(t, wrong), InputError);
    wrong.dispose();
    tf.dispose([logits4d, whole]);
    disposeVitTensors(t);
    await assert.rejects(predictVitLogits(p, randomImageData(3, { ...SMALL, inputShape: [4, 6, 1] }, 1)), InputError);
  });
});

describe('ml vit: forward and gradients on cpu vs an independent float64 reference', () => {
  onBackend('cpu');

  for (const c of GRAD_CASES) {
    it(`logits and loss gradients vs finite differences: ${c.label}`, async () => {
      const p = randomVit(c.arch, 31);
      const data = randomImageData(5, c.arch, 32);
      const ref = vitParamArrays(p).map((a) => Float64Array.from(a));
      assert.ok(maxAbsDiff(await logitsOf(p, data), refLogits(c.arch, ref, data.x, data.n).flat()) < 1e-5, 'logits');
      const { loss, grads } = await tfLossAndGrads(c.arch, p, data);
      const refValue = refLoss(c.arch, ref, data);
      assert.ok(Math.abs(loss - refValue) < 1e-5 * Math.max(1, Math.abs(refValue)), `loss ${loss} vs reference ${refValue}`);
      const eps = 1e-6;
      ref.forEach((arr, k) => {
        const g = grads[k]!;
        assert.equal(g.length, arr.length);
        for (let i = 0; i < arr.length; i++) {
          const saved = arr[i]!;
          arr[i] = saved + eps;
          const plus = refLoss(c.arch, ref, data);
          arr[i] = saved - eps;
          const minus = refLoss(c.arch, ref, data);
          arr[i] = saved;
          const numeric = (plus - minus) / (2 * eps);
          assert.ok(Math.abs(g[i]! - numeric) <= 1e-4 + 1e-3 * Math.abs(numeric), `array ${k}[${i}]: autodiff ${g[i]} vs numeric ${numeric}`);
        }
        assert.ok(g.some((v) => v !== 0), `array ${k} receives gradient`);
      });
      cpuGradients.set(c.label, grads);
    });
  }
});

describe('ml vit: gradients on wasm', () => {
  onBackend('wasm');

  for (const c of GRAD_CASES) {
    it(`loss gradients run and match cpu: ${c.label}`, async () => {
      const { grads } = await tfLossAndGrads(c.arch, randomVit(c.arch, 31), randomImageData(5, c.arch, 32));
      const cpu = cpuGradients.get(c.label) ?? assert.fail('the cpu case runs first');
      assertGradientsMatchCpu(grads, cpu);
    });
  }
});

describe('ml vit: alignment', () => {
  onBackend('cpu');

  it('permuting heads, within-head dims and MLP units preserves the function', async () => {
    const t = randomVit(WIDE, 51);
    const x = randomImageData(16, WIDE, 52);
    const moved = permuteVitUnits(t, randomPerms(t, 53));
    assert.notDeepEqual(moved.blocks[1]!.q.w, t.blocks[1]!.q.w);
    assert.notDeepEqual(moved.blocks[0]!.proj.w, t.blocks[0]!.proj.w);
    assert.notDeepEqual(moved.blocks[0]!.fc2.w, t.blocks[0]!.fc2.w);
    assert.ok(maxAbsDiff(await logitsOf(moved, x), await logitsOf(t, x)) < 1e-5);
    assert.deepEqual(permuteVitUnits(t, identityVitPermutations(t)), t);
    assert.throws(() => permuteVitUnits(t, randomPerms(t, 53).slice(1)));
    const bad = randomPerms(t, 54);
    bad[0]!.qk[1] = Int32Array.from([0, 0, 1, 2]);
    assert.throws(() => permuteVitUnits(t, bad));
  });

  it('aligning a randomly permuted copy recovers it exactly, with the same logits (1e-5)', async () => {
    const x = randomImageData(16, WIDE, 56);
    for (const arch of [WIDE, TINY, SMALL]) {
      const t = randomVit(arch, 57);
      const copy = permuteVitUnits(t, randomPerms(t, 58));
      const aligned = alignVitToReference(t, copy);
      assert.deepEqual(aligned, t, vitSignature(arch));
      assert.deepEqual(alignedAverageVit([t, copy]), t);
      assert.notDeepEqual(naiveAverageVit([t, copy]), t);
      if (arch === WIDE) assert.ok(maxAbsDiff(await logitsOf(copy, x), await logitsOf(aligned, x)) < 1e-5);
    }
    // Whole heads only: recovers a copy whose heads (not dims) were shuffled.
    const t = randomVit(WIDE, 59);
    const copy = permuteVitUnits(t, randomPerms(t, 60, false));
    assert.deepEqual(alignVitToReference(t, copy, { withinHeads: false }), t);
    assert.ok(matchVitWeights(t, copy, { withinHeads: false }).every((b) => b.qk.every((q) => q.every((v, i) => v === i))));
  });

  it('aligning a different network preserves its outputs (< 1e-5) and refuses other shapes', async () => {
    const reference = randomVit(WIDE, 61);
    const x = randomImageData(32, WIDE, 62);
    for (const seed of [63, 64]) {
      const teacher = randomVit(WIDE, seed);
      const aligned = alignVitToReference(reference, teacher);
      assert.notDeepEqual(aligned, teacher);
      assert.ok(maxAbsDiff(await logitsOf(aligned, x), await logitsOf(teacher, x)) < 1e-5);
    }
    assert.throws(() => alignVitToReference(reference, randomVit({ ...WIDE, heads: 4 }, 1)), InputError);
    assert.throws(() => alignedAverageVit([reference], 1), InputError);
  });
});

describe('ml vit: rows view for a WeightFormer', () => {
  onBackend('cpu');

  it('lays out one row per output unit / feature / token and round-trips exactly', () => {
    const linear = (name: string, rows: number, rowSize: number) => ({ kind: 'linear', name, rows, rowSize });
    const norm = (name: string) => ({ kind: 'norm', name, rows: 4, rowSize: 2 });
    assert.deepEqual(vitRowsLayout(TINY), [
      linear('patch_embed', 4, 5),
      { kind: 'pos', name: 'pos_embed', rows: 4, rowSize: 4 },
      norm('blocks.0.norm1'),
      linear('blocks.0.attn.q', 4, 5),
      linear('blocks.0.attn.k', 4, 5),
      linear('blocks.0.attn.v', 4, 5),
      linear('blocks.0.attn.proj', 4, 5),
      norm('blocks.0.norm2'),
      linear('blocks.0.mlp.fc1', 8, 5),
      linear('blocks.0.mlp.fc2', 4, 9),
      norm('norm'),
      linear('head', 3, 5),
    ]);
    for (const arch of [TINY, SMALL]) {
      const p = randomVit(arch, 71);
      const rows = vitToRows(p);
      assert.deepEqual(rows.map((r) => r.length), vitRowsLayout(arch).map((l) => l.rows * l.rowSize));
      assert.deepEqual(rowsToVitParams(rows, arch), p);
    }
    const p = randomVit(SMALL, 72);
    const rows = vitToRows(p);
    const layout = vitRowsLayout(SMALL);
    const find = (name: string): Float32Array => rows[layout.findIndex((l) => l.name === name)]!;
    // Row 4 of block 1's v: column 4 of v.w (6 inputs), then its bias.
    const v = p.blocks[1]!.v;
    assert.deepEqual(Array.from(find('blocks.1.attn.v').subarray(4 * 7, 5 * 7)), [...range(0, 6).map((i) => v.w[i * 6 + 4]!), v.b[4]!]);
    assert.deepEqual(Array.from(find('blocks.0.norm2').subarray(2 * 2, 3 * 2)), [p.blocks[0]!.norm2.gamma[2], p.blocks[0]!.norm2.beta[2]]);
    assert.deepEqual(find('pos_embed').subarray(5 * 6, 6 * 6), p.posEmbed.subarray(5 * 6, 6 * 6));
    assert.throws(() => rowsToVitParams(rows.slice(1), SMALL), InputError);
    assert.throws(() => rowsToVitParams([...rows.slice(0, -1), new Float32Array(3)], SMALL), InputError);
  });

  it('rowsToVitTensors computes the same logits, and gradients reach the rows (the parameters’ gradients, rearranged)', async () => {
    const p = randomVit(SMALL, 73);
    const data = randomImageData(6, SMALL, 74);
    const layout = vitRowsLayout(SMALL);
    const x = tf.tensor2d(data.x, [6, features(SMALL)]);
    const weights = tf.tensor2d(Float32Array.from({ length: 18 }, (_, i) => Math.sin(i)), [6, 3]);
    const objective = (t: VitTensors): tf.Scalar => tf.sum(tf.mul(vitLogits(t, x), weights));
    const rowTensors = vitToRows(p).map((r, l) => tf.tensor2d(r, [layout[l]!.rows, layout[l]!.rowSize]));
    const rowGrads = tf.grads((...rs: tf.Tensor[]) => objective(rowsToVitTensors(rs as tf.Tensor2D[], SMALL)))(rowTensors);
    const base = vitParamsToTensors(p);
    const paramGrads = tf.grads((...ps: tf.Tensor[]) => objective(vitTensorsFromList(SMALL, ps)))(vitTensorList(base));
    const host: Float32Array[] = [];
    for (const g of paramGrads) host.push(new Float32Array(await g.data()));
    const expected = vitToRows(vitParamsFromArrays(SMALL, host));
    await assertRowGradients(rowGrads, expected, (l) => `layer ${layout[l]!.name}`);
    const viaRows = tf.tidy(() => {
      const t = rowsToVitTensors(rowTensors, SMALL);
      const y = vitLogits(t, x);
      disposeVitTensors(t); // the result's own handles: the rows stay alive
      return y;
    });
    assert.ok(maxAbsDiff(await viaRows.data(), await logitsOf(p, data)) < 1e-6);
    assert.ok(rowTensors.every((r) => !r.isDisposed));
    tf.dispose([x, weights, ...rowTensors, ...rowGrads, ...paramGrads, viaRows]);
    disposeVitTensors(base);
  });
});

const VIT_TRAINER: ResumableTrainer<VitArchitecture, VitParams> = {
  train: trainVit,
  serializeState: serializeVitTrainState,
  deserializeState: deserializeVitTrainState,
  serializeParams: serializeVitParams,
};

describe('ml vit: training on wasm', function () {
  let mnistTrain: Dataset;
  let mnistTest: Dataset;
  let trained: VitTrainResult | undefined;
  const EPOCHS = 5;

  onBackend('wasm');
  before(() => {
    ({ train: mnistTrain, test: mnistTest } = mnistTrainTest());
  });

  it('learns 1,000 MNIST digits: loss falls and held-out accuracy is well above chance', async () => {
    const options: TrainVitOptions = { arch: MNIST_VIT, init: initVit(MNIST_VIT, 71), train: mnistTrain, epochs: EPOCHS, batchSize: 32, learningRate: 3e-3, seed: 72 };
    let steps = 0;
    const run = await trainAndScore(trainVit, options, vitAccuracy, mnistTest, { onStep: () => void steps++ });
    const { seconds, first, last, acc } = run;
    trained = run.trained;
    // Reported so the figures in the hand-off can be checked.
    console.log(
      `      vit p7 d32 h4 x1 on 1000 digits, ${EPOCHS} epochs on wasm: ${seconds.toFixed(1)} s (${((1000 * seconds) / steps).toFixed(1)} ms/step, batch 32), loss ${first.toFixed(3)} → ${last.toFixed(3)}, test accuracy ${(acc * 100).toFixed(1)}%`,
    );
    assert.ok(last < 0.5 * first, `mean loss ${first} → ${last}`);
    assert.ok(acc > 0.5, `test accuracy ${acc}`);
    validateVitParams(trained.params);
  });

  it('resumed from a serialised checkpoint (after epoch 1, and mid-epoch) equals the uninterrupted run bit for bit; aborts resume exactly', async () => {
    const train = selectExamples(mnistTrain, range(0, 300)); // 300 = 9·32 + 12: a partial last batch
    const teacherProbs = await softTargets([initVit(MNIST_VIT, 81), initVit(MNIST_VIT, 82)], predictVitLogits, train, 2);
    const options: TrainVitOptions = {
      arch: MNIST_VIT,
      init: initVit(MNIST_VIT, 83),
      train,
      epochs: 2,
      batchSize: 32,
      learningRate: 3e-3,
      seed: 84,
      kd: { teacherProbs, weight: 0.5, temperature: 2 },
      validation: selectExamples(mnistTest, range(0, 100)),
      checkpointEvery: 5,
    };
    const aborted = await assertExactResume(VIT_TRAINER, options, { steps: 20, checkpoints: 4, resumeAt: [1, 2], abortAfter: 7 });
    assert.ok(aborted instanceof VitTrainingAbortedError, 'the old name still catches it');
    const damaged = serializeVitTrainState(aborted.state);
    damaged[damaged.length - 40] = (damaged[damaged.length - 40] ?? 0) ^ 1;
    assert.throws(() => deserializeVitTrainState(damaged), InputError);
  });

  it('trained nets: aligning a differently trained net keeps its function; aligned averaging of a permuted, further-trained copy keeps the accuracy, naive loses it', async function () {
    if (!trained) this.skip();
    const other = await trainVit({ arch: MNIST_VIT, init: initVit(MNIST_VIT, 91), train: mnistTrain, epochs: 1, batchSize: 32, learningRate: 3e-3, seed: 92 });
    const aligned = alignVitToReference(trained.params, other.params);
    assert.notDeepEqual(aligned, other.params);
    const drift = maxAbsDiff(await predictVitLogits(aligned, mnistTest), await predictVitLogits(other.params, mnistTest));
    console.log(`      a differently trained net, aligned: logits move by at most ${drift.toExponential(1)}`);
    assert.ok(drift < 1e-5, `logits moved by ${drift}`);
    // The regime alignment is for: two nets in one basin up to a permutation of their heads and units.
    const shuffled = permuteVitUnits(trained.params, randomPerms(trained.params, 95));
    const copy = await trainVit({ arch: MNIST_VIT, init: shuffled, train: mnistTrain, epochs: 1, batchSize: 32, learningRate: 1e-3, seed: 96 });
    const pair = [trained.params, copy.params];
    const own = await vitAccuracy(trained.params, mnistTest);
    const alignedAcc = await vitAccuracy(alignedAverageVit(pair), mnistTest);
    const naiveAcc = await vitAccuracy(naiveAverageVit(pair), mnistTest);
    console.log(`      averages with a permuted fine-tuned copy: aligned ${(alignedAcc * 100).toFixed(1)}%, naive ${(naiveAcc * 100).toFixed(1)}%, teacher ${(own * 100).toFixed(1)}%`);
    assert.ok(alignedAcc > own - 0.05, `aligned ${alignedAcc} vs teacher ${own}`);
    assert.ok(naiveAcc < alignedAcc - 0.1, `naive ${naiveAcc} vs aligned ${alignedAcc}`);
  });
});

