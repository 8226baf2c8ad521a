import assert from 'node:assert/strict';
import type { ArchitectureSpec } from '../src/spec/types';
import { alignToReference, averageParams } from '../src/ml/align';
import { initBackend } from '../src/ml/backend';
import type { Dataset } from '../src/ml/data';
import type { MlpParams } from '../src/ml/mlp';
import { architectureSignature, initMlp } from '../src/ml/mlp';
import { Rng } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import { mlpLoss } from '../src/ml/train';
import type { WeightformerConfig, WeightformerModel } from '../src/ml/weightformer';
import {
  deserializeWeightformer,
  generateStudent,
  initWeightformer,
  paramSpecs,
  serializeWeightformer,
  weightformerConfig,
} from '../src/ml/weightformer';
import { asParams, disposeModelConstants, disposeSet, modelConstants, rowsToMlpTensors, studentRows, uploadSet } from '../src/ml/weightformer/model';
import { assembleSet, teacherFeatures } from '../src/ml/weightformer/tokens';
import { InputError } from '../src/util/errors';
import { concatArrays } from './helpers/ml';

const ONE: ArchitectureSpec = { family: 'mlp', inputSize: 12, hidden: [6], outputSize: 3, activation: 'relu' };
const TWO: ArchitectureSpec = { family: 'mlp', inputSize: 12, hidden: [6, 5], outputSize: 3, activation: 'tanh' };
const SMALL: Partial<WeightformerConfig> = { d: 8, heads: 2, blocks: 1, probeSize: 4 };

function randomData(n: number, features: number, classes: number, seed: number): Dataset {
  const rng = new Rng(seed);
  const x = new Float32Array(n * features);
  for (let i = 0; i < x.length; i++) x[i] = rng.nextFloat();
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) y[i] = rng.nextInt(classes);
  return { x, y, n };
}

const teachersOf = (arch: ArchitectureSpec, count: number, seed: number): MlpParams[] => Array.from({ length: count }, (_, i) => initMlp(arch, seed + i));

/** Every parameter (including the zero-initialised output adapters and mixing head) set to random values. */
function perturbed(m: WeightformerModel, seed: number, std = 0.3): WeightformerModel {
  const rng = new Rng(seed);
  const params: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(m.params)) params[k] = Float32Array.from(v, (x) => x + rng.normal(0, std));
  return { ...m, params };
}

function flat(p: MlpParams): Float32Array {
  return concatArrays(p.layers.flatMap((l) => [l.w, l.b]));
}

function maxAbsDiff(a: MlpParams, b: MlpParams): number {
  const x = flat(a);
  const y = flat(b);
  assert.equal(x.length, y.length);
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs((x[i] ?? 0) - (y[i] ?? 0)));
  return m;
}

const CONFIGS: Array<[string, Partial<WeightformerConfig>]> = [
  ['baseline', {}],
  ['mixing + probe tokens, within-layer attention', { mixing: true, probeTokens: true, crossLayer: false }],
  ['teacher ablation', { teacherInput: false, mixing: true }],
  ['agreement statistics + content gate + mixing + probe tokens', { agreementStats: true, contentGate: true, mixing: true, probeTokens: true }],
];

describe('weightformer model', function () {
  before(async () => {
    await initBackend('cpu');
  });

  for (const [arch, label] of [[ONE, '1 hidden layer'], [TWO, '2 hidden layers']] as const) {
    for (const [name, cfg] of CONFIGS) {
      it(`${label}, ${name}: student shapes for T = 2..6`, async () => {
        const zoo = teachersOf(arch, 6, 10);
        const probe = randomData(8, arch.inputSize, arch.outputSize, 1);
        const model = perturbed(initWeightformer(arch, weightformerConfig({ ...SMALL, ...cfg }), zoo[0]!, zoo, 1, probe), 2);
        for (let T = 2; T <= 6; T++) {
          const student = await generateStudent(model, teachersOf(arch, T, 100 + T));
          assert.equal(architectureSignature(student), architectureSignature(arch));
          assert.ok(flat(student).every(Number.isFinite));
        }
      });
    }
  }

  for (const [name, cfg] of CONFIGS) {
    it(`${name}: untrained (zero output adapters) ⇒ exactly the aligned average`, async () => {
      for (const arch of [ONE, TWO]) {
        const zoo = teachersOf(arch, 5, 20);
        const reference = averageParams(zoo.map((t) => alignToReference(zoo[0]!, t)));
        const probe = randomData(8, arch.inputSize, arch.outputSize, 3);
        const model = initWeightformer(arch, weightformerConfig({ ...SMALL, ...cfg }), reference, zoo, 4, probe);
        for (const T of [1, 3, 4]) {
          const teachers = teachersOf(arch, T, 200 + T);
          const student = await generateStudent(model, teachers);
          const expected = averageParams(teachers.map((t) => alignToReference(reference, t)));
          assert.deepEqual(flat(student), flat(expected));
        }
      }
    });
  }

  it('is invariant to the order of the teachers, for any T (also ones never trained on)', async () => {
    for (const arch of [ONE, TWO]) {
      const zoo = teachersOf(arch, 6, 30);
      const probe = randomData(8, arch.inputSize, arch.outputSize, 5);
      const model = perturbed(initWeightformer(arch, weightformerConfig({ ...SMALL, mixing: true, probeTokens: true, agreementStats: true }), zoo[0]!, zoo, 6, probe), 7);
      for (const T of [2, 5, 9]) {
        const teachers = teachersOf(arch, T, 300 + T);
        const a = await generateStudent(model, teachers);
        const order = new Rng(T).permutation(T);
        const b = await generateStudent(model, Array.from(order, (i) => teachers[i]!));
        const scale = flat(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        assert.ok(maxAbsDiff(a, b) <= 1e-5 * Math.max(1, scale), `T=${T}: ${maxAbsDiff(a, b)}`);
        // …and it really reads the teachers: another set gives another student.
        assert.ok(maxAbsDiff(a, await generateStudent(model, teachersOf(arch, T, 400 + T))) > 1e-3);
      }
    }
  });

  it('saves and loads exactly; corrupt, truncated or foreign bytes are InputErrors', async () => {
    const zoo = teachersOf(TWO, 4, 40);
    const probe = randomData(8, TWO.inputSize, TWO.outputSize, 8);
    const model = perturbed(initWeightformer(TWO, weightformerConfig({ ...SMALL, mixing: true, probeTokens: true }), zoo[0]!, zoo, 9, probe), 10);
    const bytes = serializeWeightformer(model);
    const loaded = deserializeWeightformer(bytes);
    assert.deepEqual(serializeWeightformer(loaded), bytes);
    assert.deepEqual(loaded.config, model.config);
    const teachers = teachersOf(TWO, 3, 500);
    assert.deepEqual(flat(await generateStudent(loaded, teachers)), flat(await generateStudent(model, teachers)));

    for (const at of [5, 40, Math.floor(bytes.length / 2), bytes.length - 1]) {
      const bad = new Uint8Array(bytes);
      bad[at] = (bad[at] ?? 0) ^ 0x10;
      assert.throws(() => deserializeWeightformer(bad), InputError, `flipped byte ${at}`);
    }
    assert.throws(() => deserializeWeightformer(bytes.subarray(0, bytes.length - 7)), InputError);
    assert.throws(() => deserializeWeightformer(new Uint8Array([1, 2, 3])), InputError);
    assert.throws(() => deserializeWeightformer(Buffer.from('WFMP but not a weightformer file at all, just text......')), InputError);
  });

  it('refuses teachers of another architecture, an empty ensemble and bad configs', async () => {
    const zoo = teachersOf(ONE, 3, 50);
    const model = initWeightformer(ONE, weightformerConfig(SMALL), zoo[0]!, zoo, 1);
    await assert.rejects(generateStudent(model, teachersOf(TWO, 2, 1)), InputError);
    await assert.rejects(generateStudent(model, []), InputError);
    assert.throws(() => weightformerConfig({ d: 10, heads: 4 }), InputError);
    assert.throws(() => initWeightformer(ONE, weightformerConfig(SMALL), zoo[0]!, zoo.slice(0, 1), 1), InputError);
    assert.throws(() => initWeightformer(ONE, weightformerConfig({ ...SMALL, probeTokens: true }), zoo[0]!, zoo, 1), InputError);
  });

  it('keeps the aligned ensemble in front: an untrained model leaks no tensors', async () => {
    const zoo = teachersOf(ONE, 3, 60);
    const model = perturbed(initWeightformer(ONE, weightformerConfig({ ...SMALL, mixing: true }), zoo[0]!, zoo, 1), 3);
    const before = tf.memory().numTensors;
    await generateStudent(model, zoo);
    assert.equal(tf.memory().numTensors, before);
  });
});

/**
 * The meta-loss as a function of the WeightFormer's parameters, analytic gradients vs central finite
 * differences on the cpu backend. Covers every path: probe tokens, mixing (with a layer before it), the
 * within-layer mask, two hidden layers; tanh students keep the loss smooth.
 */
describe('weightformer gradients vs finite differences (cpu)', function () {
  before(async () => {
    await initBackend('cpu');
  });

  for (const [name, cfg] of [
    ['mixing + probe tokens + agreement statistics + content gate, within-layer attention', { mixing: true, probeTokens: true, agreementStats: true, contentGate: true, crossLayer: false }],
    ['baseline, cross-layer attention', {}],
  ] as const) {
    it(name, async () => {
      const arch: ArchitectureSpec = { family: 'mlp', inputSize: 5, hidden: [4, 3], outputSize: 3, activation: 'tanh' };
      const zoo = teachersOf(arch, 4, 70);
      const probe = randomData(8, arch.inputSize, arch.outputSize, 11);
      const config = weightformerConfig({ ...SMALL, ...cfg });
      const model = perturbed(initWeightformer(arch, config, zoo[0]!, zoo, 12, probe), 13, 0.2);
      const c = modelConstants(model);
      const set = uploadSet(c, assembleSet(c.layout, config, zoo.slice(0, 3).map((t) => teacherFeatures(c.layout, config, model.stats, alignToReference(model.reference, t)))));
      const data = randomData(6, arch.inputSize, arch.outputSize, 14);
      const x = tf.tensor2d(data.x, [6, arch.inputSize]);
      const yOneHot = tf.cast(tf.oneHot(tf.tensor1d(data.y, 'int32'), arch.outputSize), 'float32') as tf.Tensor2D;
      const probs = tf.softmax(tf.randomUniform([6, arch.outputSize], -1, 1, 'float32', 3)) as tf.Tensor2D;
      const negEntropy = tf.sum(tf.mul(probs, tf.log(probs)), 1) as tf.Tensor1D;
      const specs = paramSpecs(arch, config);
      const names = specs.map((s) => s.name);
      const loss = (...ps: tf.Tensor[]): tf.Scalar =>
        mlpLoss(rowsToMlpTensors(studentRows(asParams(names, ps), c, set), c.layout, arch.activation), {
          x,
          yOneHot,
          kd: { probs, negEntropy, weight: 0.5, temperature: 2 },
        });
      const values = specs.map((s) => model.params[s.name]!);
      const tensors = specs.map((s, i) => tf.tensor(values[i]!, s.shape));
      const analytic = tf.grads(loss)(tensors);
      const at = async (vals: Float32Array[]): Promise<number> => {
        const ts = vals.map((v, i) => tf.tensor(v, specs[i]!.shape));
        const l = loss(...ts);
        const out = (await l.data())[0]!;
        tf.dispose([...ts, l]);
        return out;
      };
      const rng = new Rng(15);
      const eps = Number(process.env.WF_EPS ?? 1e-2);
      for (let k = 0; k < specs.length; k++) {
        const a = await analytic[k]!.data();
        const n = values[k]!.length;
        // Up to 6 entries per tensor (all of the small ones).
        const picks = n <= 6 ? Array.from({ length: n }, (_, i) => i) : Array.from({ length: 6 }, () => rng.nextInt(n));
        for (const i of picks) {
          const plus = values.map((v) => new Float32Array(v));
          const minus = values.map((v) => new Float32Array(v));
          plus[k]![i]! += eps;
          minus[k]![i]! -= eps;
          const numeric = ((await at(plus)) - (await at(minus))) / (2 * eps);
          const tol = 5e-5 + 1e-2 * Math.abs(numeric);
          assert.ok(Math.abs(a[i]! - numeric) <= tol, `${specs[k]!.name}[${i}]: analytic ${a[i]} vs numeric ${numeric}`);
        }
      }
      // The check must not pass vacuously: the output adapters and the input adapter get real gradients.
      for (const nm of ['out.0.w', 'in.0.w', 'emb.row']) {
        const g = await analytic[names.indexOf(nm)]!.data();
        assert.ok(g.some((v) => Math.abs(v) > 1e-4), `${nm} has a non-zero gradient`);
      }
      tf.dispose([...tensors, ...analytic, x, yOneHot, probs, negEntropy]);
      disposeSet(set);
      disposeModelConstants(c);
    });
  }
});
