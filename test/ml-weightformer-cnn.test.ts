import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { ArchitectureSpec } from '../src/spec/types';
import { initBackend } from '../src/ml/backend';
import type { CnnArchitecture, CnnParams } from '../src/ml/cnn';
import { alignCnnToReference, averageCnnParams, cnnAccuracy, cnnSignature, initCnn, trainCnn, validateCnnParams } from '../src/ml/cnn';
import type { Dataset } from '../src/ml/data';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import { accuracyOfScores, initMlp } from '../src/ml/mlp';
import { Rng, deriveSeed } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import type { LossBatch } from '../src/ml/train';
import type { MetaTrainOptions, MetaTrainResult, WeightformerConfig, WeightformerModel } from '../src/ml/weightformer';
import {
  deserializeMetaTrainState,
  deserializeWeightformer,
  generateStudent,
  initWeightformer,
  metaTrain,
  paramSpecs,
  serializeMetaTrainState,
  serializeWeightformer,
  weightformerConfig,
  zooReference,
} from '../src/ml/weightformer';
import { CNN_FAMILY, recomputeStudentBn } from '../src/ml/weightformer/family';
import { asParams, disposeModelConstants, disposeSet, modelConstants, studentRows, uploadSet } from '../src/ml/weightformer/model';
import { assembleSet, teacherFeatures } from '../src/ml/weightformer/tokens';
import { InputError } from '../src/util/errors';
import { flatCnn as flat, randomCnn } from './helpers/cnn';

/** Two positions per axis after the last pool, a hidden dense layer, BN on every block. */
const TINY: CnnArchitecture = { family: 'cnn', inputShape: [8, 8, 1], channels: [3, 4], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [5], outputSize: 3 };
const NO_BN: CnnArchitecture = { ...TINY, batchNorm: false, pool: 'avg', hidden: [] };
const SMALL: Partial<WeightformerConfig> = { d: 8, heads: 2, blocks: 1 };

const CONFIGS: Array<[string, Partial<WeightformerConfig>]> = [
  ['baseline', {}],
  ['mixing + agreement statistics + content gate, within-layer attention', { mixing: true, agreementStats: true, contentGate: true, crossLayer: false }],
  ['teacher ablation with mixing', { teacherInput: false, mixing: true }],
];

function randomData(n: number, arch: CnnArchitecture, seed: number): Dataset {
  const r = new Rng(seed);
  const d = arch.inputShape[0] * arch.inputShape[1] * arch.inputShape[2];
  return { x: Float32Array.from({ length: n * d }, () => r.nextFloat()), y: Int32Array.from({ length: n }, () => r.nextInt(arch.outputSize)), n };
}

const teachersOf = (arch: CnnArchitecture, count: number, seed: number): CnnParams[] => Array.from({ length: count }, (_, i) => randomCnn(arch, seed + i));

/** Every parameter (the zero-initialised output adapters, gate and mixing head included) set to random values. */
function perturbed<M extends WeightformerModel<CnnArchitecture>>(m: M, seed: number, std = 0.3): M {
  const rng = new Rng(seed);
  const params: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(m.params)) params[k] = Float32Array.from(v, (x) => x + rng.normal(0, std));
  return { ...m, params };
}

function maxAbsDiff(a: CnnParams, b: CnnParams): number {
  const x = flat(a);
  const y = flat(b);
  assert.equal(x.length, y.length);
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs((x[i] ?? 0) - (y[i] ?? 0)));
  return m;
}

describe('weightformer for CNN students', function () {
  before(async () => {
    await initBackend('cpu');
  });

  for (const arch of [TINY, NO_BN]) {
    for (const [name, cfg] of CONFIGS) {
      it(`${cnnSignature(arch)}, ${name}: valid students of the architecture for T = 1..5`, async () => {
        const zoo = teachersOf(arch, 5, 10);
        const model = perturbed(initWeightformer(arch, weightformerConfig({ ...SMALL, ...cfg }), zooReference(zoo), zoo, 1), 2, 0.5);
        for (let T = 1; T <= 5; T++) {
          const student = await generateStudent(model, teachersOf(arch, T, 100 + 10 * T));
          assert.equal(cnnSignature(student), cnnSignature(arch));
          validateCnnParams(student); // finite, running variances ≥ 0
          if (arch.batchNorm) for (const c of student.convs) assert.ok(c.bn!.runningVar.every((v) => v > 0), 'predicted variances stay positive');
        }
      });
    }
  }

  for (const [name, cfg] of CONFIGS) {
    it(`${name}: untrained (zero output adapters) ⇒ exactly the aligned mean of the ensemble`, async () => {
      for (const arch of [TINY, NO_BN]) {
        const zoo = teachersOf(arch, 4, 20);
        const reference = zooReference(zoo);
        const model = initWeightformer(arch, weightformerConfig({ ...SMALL, ...cfg }), reference, zoo, 4);
        for (const T of [1, 3, 4]) {
          const teachers = teachersOf(arch, T, 200 + 10 * T);
          const student = await generateStudent(model, teachers);
          const expected = averageCnnParams(teachers.map((t) => alignCnnToReference(reference, t)));
          assert.deepEqual(flat(student), flat(expected));
        }
      }
    });
  }

  it('is invariant to the order of the teachers, and reads them', async () => {
    const zoo = teachersOf(TINY, 5, 30);
    const model = perturbed(initWeightformer(TINY, weightformerConfig({ ...SMALL, mixing: true, agreementStats: true }), zooReference(zoo), zoo, 6), 7);
    for (const T of [2, 4, 6]) {
      const teachers = teachersOf(TINY, T, 300 + 10 * T);
      const a = await generateStudent(model, teachers);
      const order = new Rng(T).permutation(T);
      const b = await generateStudent(model, Array.from(order, (i) => teachers[i]!));
      const scale = flat(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assert.ok(maxAbsDiff(a, b) <= 1e-5 * Math.max(1, scale), `T=${T}: ${maxAbsDiff(a, b)}`);
      assert.ok(maxAbsDiff(a, await generateStudent(model, teachersOf(TINY, T, 400 + 10 * T))) > 1e-3);
    }
  });

  it('saves and loads exactly; corrupt bytes, probe tokens and teachers of another family are InputErrors', async () => {
    const zoo = teachersOf(TINY, 4, 40);
    const model = perturbed(initWeightformer(TINY, weightformerConfig({ ...SMALL, mixing: true, agreementStats: true }), zooReference(zoo), zoo, 9), 10);
    const bytes = serializeWeightformer(model);
    const loaded = deserializeWeightformer(bytes);
    assert.deepEqual(serializeWeightformer(loaded), bytes);
    assert.deepEqual(loaded.arch, TINY);
    const teachers = teachersOf(TINY, 3, 500);
    assert.deepEqual(flat(await generateStudent(loaded, teachers)), flat(await generateStudent(model, teachers)));
    for (const at of [5, 60, Math.floor(bytes.length / 2), bytes.length - 1]) {
      const bad = new Uint8Array(bytes);
      bad[at] = (bad[at] ?? 0) ^ 0x10;
      assert.throws(() => deserializeWeightformer(bad), InputError, `flipped byte ${at}`);
    }
    const probe = randomData(8, TINY, 1);
    assert.throws(() => initWeightformer(TINY, weightformerConfig({ ...SMALL, probeTokens: true, probeSize: 4 }), zoo[0]!, zoo, 1, probe), InputError);
    const mlp: ArchitectureSpec = { family: 'mlp', inputSize: 64, hidden: [4], outputSize: 3, activation: 'relu' };
    await assert.rejects(generateStudent(model, [initMlp(mlp, 1), initMlp(mlp, 2)]), InputError);
    await assert.rejects(generateStudent(model, teachersOf({ ...TINY, channels: [3, 5] }, 2, 1)), InputError);
    const mlpZoo = [initMlp(mlp, 3), initMlp(mlp, 4)];
    await assert.rejects(generateStudent(initWeightformer(mlp, weightformerConfig(SMALL), mlpZoo[0]!, mlpZoo, 1), teachers), InputError);
    assert.throws(() => zooReference([...zoo, ...mlpZoo] as never[]), InputError);
  });

  it('loads an MLP WeightFormer file written before CNN support and generates the same student', async () => {
    // Written by the MLP-only code (mixing + agreement statistics, every parameter perturbed).
    const old = Buffer.from(
  'V0ZXRgEAAABvAgAAeyJjb25maWciOnsiZCI6NCwiaGVhZHMiOjEsImJsb2NrcyI6MSwibWxwUmF0aW8iOjEsInRlYWNoZXJJbnB1dCI6dHJ1ZSwibWl4aW5n' +
  'Ijp0cnVlLCJwcm9iZVRva2VucyI6ZmFsc2UsInByb2JlU2l6ZSI6MzIsImNyb3NzTGF5ZXIiOnRydWUsImNvbnRlbnRHYXRlIjpmYWxzZSwiYWdyZWVtZW50' +
  'U3RhdHMiOnRydWV9LCJhcmNoIjp7ImZhbWlseSI6Im1scCIsImlucHV0U2l6ZSI6NCwiaGlkZGVuIjpbM10sIm91dHB1dFNpemUiOjIsImFjdGl2YXRpb24i' +
  'OiJyZWx1In0sInNpZ25hdHVyZSI6Im1scDo0LTMtMjpyZWx1IiwidG9rZW5Ob3JtIjpbMC4zNzY1OTA4MTQ5Mjk2ODA4MywwLjQyMzI1NTYxMDY4NjM4MTZd' +
  'LCJwcm9iZSI6bnVsbCwicGFyYW1OYW1lcyI6WyJpbi4wLnciLCJpbi4wLmIiLCJpbi4xLnciLCJpbi4xLmIiLCJlbWIubGF5ZXIiLCJlbWIucm93IiwiYmxv' +
  'Y2suMC5zZXQucWt2IiwiYmxvY2suMC5zZXQub3V0IiwiYmxvY2suMC5yb3cucWt2IiwiYmxvY2suMC5yb3cub3V0IiwiYmxvY2suMC5tbHAudzEiLCJibG9j' +
  'ay4wLm1scC5iMSIsImJsb2NrLjAubWxwLncyIiwiYmxvY2suMC5tbHAuYjIiLCJvdXQuMC53Iiwib3V0LjAuYiIsIm91dC4xLnciLCJvdXQuMS5iIiwibWl4' +
  'LnciXX2cAAAAV0ZNUAEAAAAAAAAAAgAAAAQAAAADAAAAAwAAAAIAAABDGCc+pQ8Kv5E9pD5yuNg+ZGb+vktAQL0LzcI9jhlSvnwpRL8h8SW/cUV+PZwTAL4A' +
  'AAAAAAAAAAAAAADoNVw+Vpp2vqR5kL4dBRw/YTziPh++v74AAAAAAAAAADwmIE+lZzAcJKaDcaTuNBCslQLmQRN+avh7nGDbdg5yQxgnPnK42D4LzcI9IfEl' +
  'vwAAAAClDwq/ZGb+vo4ZUr5xRX49AAAAAJE9pD5LQEC9fClEv5wTAL4AAAAAPDDdPhy0oD6DCw4/vBaqPvtgAD3fGNY+qC8SPq2A4z6+/wM/+2AAPTjmKz5r' +
  'LgI/jgRaPpiCKD/7YAA96DVcPqR5kL5hPOI+AAAAAFaadr4dBRw/H76/vgAAAADY1FA//+b8Pk1lrT737As9WFDtPru0kT6bRqw+9+wLPWGyET8QcIO9NSPn' +
  'PkZmGz5zQaq/FzmIvaUUeT48+g2/ngBPP7krIr+Q5Zy+PCiOvk8Iej9QvPi+mUfIPmqxND8P48e9/7MrPnUDjr601BU/sbN6Pf7vSL9Oi44+RNWovSGuiTxM' +
  'bRS/Co6Lvr/akb0Q+Ew/lrdjPksWLb2F7cq9j+cBP0urAb8IXde9QPoHvt1LEL3YqQ89hLbovDSu877fklK/hijdvTc3Ij2Ms74+9HXFvq0g5z7sYdQ+SLO1' +
  'PYkCjD0fpPW+D3jWPjiOCD9MrSk+ML0hv+cuqzxJNpW97qwbPyFCib53Li0/FbcTvWFYt77OdfC+hxGDvhIpzr5Vzte+27uYvUfaQr413RW/tzs9Pxk7Xj/S' +
  'qD++Nli4PSz3/T0/KqG+cBajPUDwR76BUn8/Z0WBPrbMVz/og2Y/oayMPlsB2bzlTI8+G1hFPqpfGr6hopw+sH7NPYCPv7tiyA8/brkuv0/Ofj4hIYO+HmDu' +
  'PRgccDw5XVU+X5iFPs+klL3uqGg+puCAPtDzE7/W0B8+H4Jov3/SxT7UTnS/a2CwvrzfNL52m4+/o+VvPctXUj96BGm+dvkvP7WMq75JbRu+9i+aPtfSFr6S' +
  'B8i74+a4PT8ZzT7qRT++7AJxP61Pgb7Uijk/l+q5PXMmCr4LLe++oOOkvzuYg72maIe/A1SOvp1EIT55bk2+KrG4PmtLxD5sT9k+0PihPnu4Fb/xOKa+oJ+8' +
  'Psd4k76LdQe+PJ6BPpJjlr7EeF68pUruPb1BAb+S1x4+H+3aPZU1ab4wAA+/bokZP3Y9FD0xpNa+qTUGP4wwUL8zj7Y+axZvP5KLGb4BYVw/NTzUvlibgj77' +
  'SH8/gaeJPpB3U783kLe+5pPEPvT1Hb4C/nA9oPZVPjx78b7Iq/y9G8qpPmEJTD9XHP2+5zKUP6COCz8tF/q+fXIvP9yf9T39NI++LHGAPnXRFT5uOFc/mri7' +
  'vgAfrj5z5Ii+8x8uP5PA3b75HHg+3DM1v/laFj9gMjC/to2PPwRBPL9jnRS8idq0PlufGD6hpV29HaO3PuxjAb4qvFq+bwtCvxcgErxSG5S+z01bv96bQb8L' +
  'f4e9jxpQvmSimr7H2uW9lhy1v5n8jb9CXRC/iX1eP/u4Yr8PnRu/D2rBPtRUxb7MOae9PNeUPy7clb/59ie/LnaFvmh83b0AsBY/pm0FPoM+jD5rDZC+ZCqI' +
  'vc/mDT3EUNe+6gTJvnwU6D45OUM/SE9Pvhtpyr7kIZG/GV21vuSZxzyrwvq+ql9+PzuhJr+m14w+i8BAvsUckb71sj0/ZB8Sv2N0HD+xKjC/DXEXPhbHKb/K' +
  'tTE6ixTTPkN7xT6l6Cy/1b+tvcDkCr977io9clIQP9d8a7421Yk+TMmTP5c1Pj/K2hW/zviRPnRvej88AJC+C7ZavRMNSL5rVMU7ZISEvuGpVr4BPic+yU7h' +
  'Ppx6Yr7MDJw88oSLvVs0Zr7OH8++IQ3GvtIG777kOOC8ybqSPSjXuz4dq5S+GGSIvpXUpT6FDss+zNF4PhsKhT6tmnO+S+I2vnBJIr/dGrS9646sPdFS9r2B' +
  'rAm/9lq3PdYTC7+O9/89myOfvQQ8D73U91y8aP0SPqbWkr6WHeM+UjflvqoqL74SZNw+9SYDuxJGuLx8emC+KloYvp6Gyr0OIAA9ywf3u1QyND61eSI/N5sX' +
  'vrodyT624Tc+qQ7lPjhkwSHQOQblXRwII6SKstROb1YPsM7OhvT/JeieDbzL' +
        '',
      'base64',
    );
    const model = deserializeWeightformer(old);
    assert.equal(model.arch.family, 'mlp');
    assert.deepEqual(serializeWeightformer(model), new Uint8Array(old));
    const arch: ArchitectureSpec = { family: 'mlp', inputSize: 4, hidden: [3], outputSize: 2, activation: 'relu' };
    const student = await generateStudent(model, [initMlp(arch, 950), initMlp(arch, 951)]);
    const bytes = Buffer.concat(student.layers.flatMap((l) => [Buffer.from(l.w.buffer), Buffer.from(l.b.buffer)]));
    assert.equal(createHash('sha256').update(bytes).digest('hex'), '0283348eb6cc69861c03268aacf47c4a361b92e4ec275915860568587d3eb894');
  });

  it('an untrained model leaks no tensors', async () => {
    const zoo = teachersOf(TINY, 3, 60);
    const model = perturbed(initWeightformer(TINY, weightformerConfig({ ...SMALL, mixing: true, agreementStats: true }), zoo[0]!, zoo, 1), 3);
    await generateStudent(model, zoo); // warm-up (kernels may cache tensors)
    const before = tf.memory().numTensors;
    await generateStudent(model, zoo);
    assert.equal(tf.memory().numTensors, before);
  });
});

/**
 * The meta-loss of a CNN student (eval-mode BN with the predicted running statistics) as a function of
 * the WeightFormer's parameters: analytic gradients vs central finite differences on the cpu backend,
 * and every parameter tensor gets a non-zero gradient. Average pooling keeps the loss smoother.
 */
describe('weightformer CNN gradients vs finite differences (cpu)', function () {
  before(async () => {
    await initBackend('cpu');
  });

  for (const [name, cfg] of [
    ['mixing + agreement statistics + content gate, within-layer attention', { mixing: true, agreementStats: true, contentGate: true, crossLayer: false }],
    ['baseline, cross-layer attention', {}],
  ] as const) {
    it(name, async () => {
      const arch: CnnArchitecture = { ...TINY, pool: 'avg', hidden: [3] };
      const zoo = teachersOf(arch, 4, 70);
      const config = weightformerConfig({ ...SMALL, ...cfg });
      const model = perturbed(initWeightformer(arch, config, zooReference(zoo), zoo, 12), 13, 0.1);
      const c = modelConstants(model);
      const set = uploadSet(c, assembleSet(c.layout, config, zoo.slice(0, 3).map((t) => teacherFeatures(c.layout, config, model.stats, alignCnnToReference(model.reference, t)))));
      const data = randomData(6, arch, 14);
      const batch: LossBatch = {
        x: tf.tensor2d(data.x, [6, 64]),
        yOneHot: tf.cast(tf.oneHot(tf.tensor1d(data.y, 'int32'), arch.outputSize), 'float32') as tf.Tensor2D,
      };
      const probs = tf.softmax(tf.randomUniform([6, arch.outputSize], -1, 1, 'float32', 3)) as tf.Tensor2D;
      batch.kd = { probs, negEntropy: tf.sum(tf.mul(probs, tf.log(probs)), 1) as tf.Tensor1D, weight: 0.5, temperature: 2 };
      const specs = paramSpecs(arch, config);
      const names = specs.map((s) => s.name);
      const loss = (...ps: tf.Tensor[]): tf.Scalar => CNN_FAMILY.loss(studentRows(asParams(names, ps), c, set), c.layout, arch, batch, 'eval');
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
      const numeric = async (k: number, i: number, eps: number): Promise<number> => {
        const plus = values.map((v) => new Float32Array(v));
        const minus = values.map((v) => new Float32Array(v));
        plus[k]![i]! += eps;
        minus[k]![i]! -= eps;
        return ((await at(plus)) - (await at(minus))) / (2 * eps);
      };
      const rng = new Rng(15);
      for (let k = 0; k < specs.length; k++) {
        const a = await analytic[k]!.data();
        assert.ok(a.some((v) => Math.abs(v) > 1e-6), `${specs[k]!.name} gets a gradient`);
        const n = values[k]!.length;
        const picks = n <= 4 ? Array.from({ length: n }, (_, i) => i) : Array.from({ length: 4 }, () => rng.nextInt(n));
        for (const i of picks) {
          // Curvature or a ReLU kink within ±eps can spoil the coarse step; the fine one then decides.
          let ok = false;
          const seen: number[] = [];
          for (const eps of [1e-2, 1e-3]) {
            const num = await numeric(k, i, eps);
            seen.push(num);
            if (Math.abs(a[i]! - num) <= 5e-5 + 1e-2 * Math.abs(num)) ok = true;
            if (ok) break;
          }
          assert.ok(ok, `${specs[k]!.name}[${i}]: analytic ${a[i]} vs numeric ${seen.join(', ')}`);
        }
      }
      tf.dispose([...tensors, ...analytic, batch.x, batch.yOneHot, probs, batch.kd.negEntropy]);
      disposeSet(set);
      disposeModelConstants(c);
    });
  }
});

function tinyOptions(): MetaTrainOptions<CnnArchitecture> {
  const zoo = teachersOf(TINY, 5, 80);
  const heldOut = teachersOf(TINY, 3, 90);
  return {
    arch: TINY,
    config: weightformerConfig({ ...SMALL, mixing: true, agreementStats: true, contentGate: true }),
    zoo,
    reference: zooReference(zoo),
    consolidation: randomData(40, TINY, 1),
    validation: { ensembles: [heldOut, heldOut.slice(0, 2)], data: randomData(30, TINY, 2) },
    steps: 7,
    batchSize: 16,
    learningRate: 1e-2,
    tMin: 1,
    tMax: 4,
    temperature: 2,
    kdWeight: 0.5,
    seed: 3,
    checkpointEvery: 3,
    evalEvery: 4,
  };
}

function sameRun(a: MetaTrainResult<CnnArchitecture>, b: MetaTrainResult<CnnArchitecture>): void {
  assert.deepEqual(serializeWeightformer(b.model), serializeWeightformer(a.model), 'best model bit-identical');
  assert.deepEqual(b.curve, a.curve);
  assert.deepEqual(b.valCurve, a.valCurve);
  assert.equal(b.bestStep, a.bestStep);
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`weightformer CNN meta-training on ${backend}`, function () {
    before(async () => {
      await initBackend(backend);
    });

    it('resumed from any serialised checkpoint equals the uninterrupted run bit for bit; no tensor leaks', async () => {
      const o = tinyOptions();
      const checkpoints: Uint8Array[] = [];
      const before = tf.memory().numTensors;
      const counts: number[] = [];
      const full = await metaTrain(o, { onCheckpoint: (s) => void checkpoints.push(serializeMetaTrainState(s)), onStep: () => void counts.push(tf.memory().numTensors) });
      assert.equal(tf.memory().numTensors, before);
      assert.equal(new Set(counts).size, 1, `tensor counts per step: ${[...new Set(counts)].join(',')}`);
      assert.equal(checkpoints.length, 2); // steps 3, 6
      assert.ok(full.curve.some((p) => p.loss !== full.curve[0]!.loss), 'the loss moves');
      for (const bytes of checkpoints) sameRun(full, await metaTrain(o, {}, deserializeMetaTrainState(bytes)));
      // Train-mode BN in the meta-loss is another run (fingerprint), and runs too.
      await assert.rejects(metaTrain({ ...o, studentBn: 'train' }, {}, deserializeMetaTrainState(checkpoints[0]!)), InputError);
      const trainMode = await metaTrain({ ...o, studentBn: 'train', steps: 2 });
      assert.ok(trainMode.curve.every((p) => Number.isFinite(p.loss)));
    });
  });
}

/** Pixels averaged over 2×2 blocks: 14×14 digits keep the test fast. */
function downsample(ds: Dataset): Dataset {
  const x = new Float32Array(ds.n * 196);
  for (let e = 0; e < ds.n; e++) {
    for (let i = 0; i < 14; i++) {
      for (let j = 0; j < 14; j++) {
        let s = 0;
        for (let a = 0; a < 2; a++) for (let b = 0; b < 2; b++) s += ds.x[e * 784 + (2 * i + a) * 28 + 2 * j + b] ?? 0;
        x[e * 196 + i * 14 + j] = s / 4;
      }
    }
  }
  return { x, y: ds.y, n: ds.n };
}

describe('weightformer learns to consolidate CNNs (wasm, MNIST 14×14, conv 4-8 with BN)', function () {
  before(async () => {
    await initBackend('wasm');
  });

  /**
   * Small CNN teachers on 200-digit shards, whose aligned average is far below them: meta-training on a
   * separate consolidation set must lift a held-out ensemble's student above its aligned average (the
   * starting point) on test digits nobody trained on.
   */
  it("meta-loss falls; a held-out ensemble's student beats chance and its aligned average", async () => {
    const arch: CnnArchitecture = { family: 'cnn', inputShape: [14, 14, 1], channels: [4, 8], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [], outputSize: 10 };
    const raw = splitDataset(loadEmbeddedMnist(), { source: 'mnist-embedded', shardSize: 200, consolidationSize: 500, validationSize: 300, testSize: 1000, splitSeed: 5 }, 9);
    const split = { shards: raw.shards.map(downsample), consolidation: downsample(raw.consolidation), validation: downsample(raw.validation), test: downsample(raw.test) };
    const teachers: CnnParams[] = [];
    for (let i = 0; i < 9; i++) {
      const r = await trainCnn({ arch, init: initCnn(arch, deriveSeed(1, 'init', i)), train: split.shards[i]!, epochs: 10, batchSize: 32, learningRate: 1e-2, seed: i });
      teachers.push(r.params);
    }
    const zoo = teachers.slice(0, 6);
    const heldOut = teachers.slice(6);
    const steps = 80;
    const t0 = Date.now();
    const result = await metaTrain({
      arch,
      config: weightformerConfig({ d: 32, heads: 2, blocks: 1, mixing: true, agreementStats: true, contentGate: true }),
      zoo,
      reference: zooReference(zoo),
      consolidation: split.consolidation,
      validation: { ensembles: [heldOut], data: split.validation },
      steps,
      batchSize: 128,
      learningRate: 2e-3,
      tMin: 2,
      tMax: 4,
      temperature: 2,
      kdWeight: 0.5,
      seed: 1,
      checkpointEvery: 0,
      evalEvery: 10,
    });
    const ms = Date.now() - t0;
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(result.curve.slice(0, 10).map((p) => p.loss));
    const last = mean(result.curve.slice(-10).map((p) => p.loss));
    assert.ok(last < 0.8 * first, `meta-loss ${first} → ${last}`);
    const averaged = averageCnnParams(heldOut.map((t) => alignCnnToReference(result.model.reference, t)));
    const start = await cnnAccuracy(averaged, split.test);
    const student = await generateStudent(result.model, heldOut);
    const acc = await cnnAccuracy(student, split.test);
    const accRecomputed = await cnnAccuracy(await recomputeStudentBn(student, split.consolidation, 128), split.test);
    const startRecomputed = await cnnAccuracy(await recomputeStudentBn(averaged, split.consolidation, 128), split.test);
    const singles = await Promise.all(heldOut.map((t) => cnnAccuracy(t, split.test)));
    const probs: Float32Array[] = [];
    for (const t of heldOut) probs.push(await CNN_FAMILY.predictProbs(t, split.test, 1));
    const ens = new Float32Array(probs[0]!.length);
    for (const p of probs) for (let i = 0; i < ens.length; i++) ens[i] = (ens[i] ?? 0) + (p[i] ?? 0) / probs.length;
    const ensemble = accuracyOfScores(ens, split.test.y);
    assert.ok(acc > 0.3, `student ${acc} is clearly above chance (0.1)`);
    assert.ok(acc >= start + 0.05, `student ${acc} vs aligned average ${start}`);
    const pct = (v: number): string => `${(100 * v).toFixed(1)}%`;
    // eslint-disable-next-line no-console
    console.log(
      `      (meta-trained ${steps} steps in ${ms} ms, ${(ms / steps).toFixed(0)} ms/step incl. validation; meta-loss ${first.toFixed(3)} → ${last.toFixed(3)}; best step ${result.bestStep}\n` +
        `       test: mean single teacher ${pct(mean(singles))}, ensemble ${pct(ensemble)}, aligned average ${pct(start)} (BN recomputed ${pct(startRecomputed)}), ` +
        `student ${pct(acc)} (BN recomputed ${pct(accRecomputed)}))`,
    );
  });
});
