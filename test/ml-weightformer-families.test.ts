import assert from 'node:assert/strict';
import { initBackend } from '../src/ml/backend';
import type { Dataset } from '../src/ml/data';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import { deriveSeed, Rng } from '../src/ml/rng';
import type { ResnetArchitecture, ResnetParams } from '../src/ml/resnet';
import { alignResnetToReference, averageResnetParams, initResnet, resnetAccuracy, resnetConvs, resnetParamArrays, resnetSignature, trainResnet, validateResnetParams } from '../src/ml/resnet';
import type { VitArchitecture, VitParams } from '../src/ml/vit';
import { alignVitToReference, averageVitParams, initVit, trainVit, validateVitParams, vitAccuracy, vitParamArrays, vitParamShapes, vitSignature } from '../src/ml/vit';
import type { WeightformerConfig, WeightformerModel } from '../src/ml/weightformer';
import { deserializeWeightformer, generateStudent, initWeightformer, metaTrain, serializeWeightformer, weightformerConfig, zooReference } from '../src/ml/weightformer';
import { familyOf, recomputeStudentBn } from '../src/ml/weightformer/family';
import { layoutOf } from '../src/ml/weightformer/tokens';
import { InputError } from '../src/util/errors';
import { concatArrays } from './helpers/ml';
import { randomResnet } from './helpers/resnet';

/** Two stages (so one pool), two blocks per stage: two stream-sharing conv2s per stage. */
const RESNET: ResnetArchitecture = { family: 'resnet', inputShape: [6, 6, 2], width: 3, stages: 2, blocksPerStage: 2, kernelSize: 3, outputSize: 3 };
/** Two blocks, two heads, an MLP ratio that is not 1, a non-square input. */
const VIT: VitArchitecture = { family: 'vit', inputShape: [4, 6, 2], patchSize: 2, dim: 6, heads: 2, depth: 2, mlpRatio: 1.5, outputSize: 3 };
const SMALL: Partial<WeightformerConfig> = { d: 8, heads: 2, blocks: 1 };

const CONFIGS: Array<[string, Partial<WeightformerConfig>]> = [
  ['baseline', {}],
  ['mixing + agreement statistics + content gate, within-layer attention', { mixing: true, agreementStats: true, contentGate: true, crossLayer: false }],
  ['teacher ablation with mixing', { teacherInput: false, mixing: true }],
];

/** A ViT whose every entry is non-trivial (initVit's biases and LayerNorms are constants). */
function randomVit(arch: VitArchitecture, seed: number): VitParams {
  const p = initVit(arch, seed);
  const r = new Rng(seed + 1000);
  const shapes = vitParamShapes(arch);
  vitParamArrays(p).forEach((a, i) => {
    // 1-D arrays are biases and LayerNorm γ/β: give them spread around their initial values.
    if ((shapes[i]?.length ?? 0) === 1) for (let j = 0; j < a.length; j++) a[j] = (a[j] ?? 0) + r.normal(0, 0.3);
  });
  return p;
}

interface Case<A extends ResnetArchitecture | VitArchitecture, P> {
  name: string;
  arch: A;
  random(seed: number): P;
  arrays(p: P): Float32Array[];
  signature(p: P | A): string;
  validate(p: P): void;
  align(reference: P, teacher: P): P;
  average(list: P[]): P;
}

const CASES: [Case<ResnetArchitecture, ResnetParams>, Case<VitArchitecture, VitParams>] = [
  {
    name: 'resnet',
    arch: RESNET,
    random: (seed) => randomResnet(RESNET, seed),
    arrays: resnetParamArrays,
    signature: resnetSignature,
    validate: validateResnetParams,
    align: alignResnetToReference,
    average: averageResnetParams,
  },
  {
    name: 'vit',
    arch: VIT,
    random: (seed) => randomVit(VIT, seed),
    arrays: vitParamArrays,
    signature: vitSignature,
    validate: validateVitParams,
    align: alignVitToReference,
    average: averageVitParams,
  },
];

const flat = concatArrays;

/** Every parameter (the zero-initialised output adapters, gate and mixing head included) set to random values. */
function perturbed<M extends WeightformerModel<ResnetArchitecture | VitArchitecture>>(m: M, seed: number, std = 0.3): M {
  const rng = new Rng(seed);
  const params: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(m.params)) params[k] = Float32Array.from(v, (x) => x + rng.normal(0, std));
  return { ...m, params };
}

function runCase<A extends ResnetArchitecture | VitArchitecture, P extends ResnetParams | VitParams>(c: Case<A, P>): void {
  const teachers = (count: number, seed: number): P[] => Array.from({ length: count }, (_, i) => c.random(seed + i));
  const generate = async (m: WeightformerModel<A>, ts: P[]): Promise<P> => (await generateStudent(m as WeightformerModel<ResnetArchitecture | VitArchitecture>, ts)) as P;

  describe(`weightformer for ${c.name} students (cpu)`, function () {
    before(async () => {
      await initBackend('cpu');
    });

    it('the rows layout covers every parameter of the architecture exactly once', () => {
      const layout = layoutOf(c.arch);
      const rowValues = layout.layers.reduce((n, L) => n + L.rows * L.rowSize, 0);
      assert.equal(rowValues, flat(c.arrays(c.random(1))).length);
      layout.layers.forEach((L, l) => {
        if (l === 0) return;
        assert.equal(L.inputUnit?.length, L.rowSize, `layer ${l} links its columns`);
        const prev = layout.layers[l - 1]!;
        assert.ok(L.inputUnit!.every((u) => u >= -1 && u < prev.rows), `layer ${l} links to units of layer ${l - 1}`);
      });
    });

    for (const [name, cfg] of CONFIGS) {
      it(`${name}: students have exactly the architecture's parameter shapes, T = 1..4, and every parameter is predicted`, async () => {
        const zoo = teachers(5, 10);
        const reference = zooReference(zoo) as P;
        const model = perturbed(initWeightformer(c.arch, weightformerConfig({ ...SMALL, ...cfg }), reference as never, zoo as never, 1), 2, 0.5) as WeightformerModel<A>;
        const fresh = c.arrays(c.random(99)).map((a) => a.length);
        for (let T = 1; T <= 4; T++) {
          const ensemble = teachers(T, 100 + 10 * T);
          const student = await generate(model, ensemble);
          assert.equal(c.signature(student), c.signature(c.arch));
          assert.deepEqual(c.arrays(student).map((a) => a.length), fresh);
          c.validate(student); // finite; ResNet running variances ≥ 0
          if (c.name === 'resnet') for (const conv of resnetConvs(student as ResnetParams)) assert.ok(conv.bn.runningVar.every((v) => v > 0), 'predicted variances stay positive');
          // Every scalar moves off the aligned mean: none is copied through unpredicted.
          const mean = flat(c.arrays(c.average(ensemble.map((t) => c.align(model.reference as unknown as P, t)))));
          const got = flat(c.arrays(student));
          const unchanged = got.reduce((n, v, i) => n + (v === mean[i] ? 1 : 0), 0);
          assert.equal(unchanged, 0, `${unchanged} of ${got.length} parameters equal the aligned mean`);
        }
      });

      it(`${name}: untrained (zero output adapters) ⇒ exactly the aligned mean of the ensemble`, async () => {
        const zoo = teachers(4, 20);
        const reference = zooReference(zoo) as P;
        const model = initWeightformer(c.arch, weightformerConfig({ ...SMALL, ...cfg }), reference as never, zoo as never, 4) as WeightformerModel<A>;
        for (const T of [1, 3]) {
          const ensemble = teachers(T, 200 + 10 * T);
          const student = await generate(model, ensemble);
          assert.deepEqual(flat(c.arrays(student)), flat(c.arrays(c.average(ensemble.map((t) => c.align(reference, t))))));
        }
      });
    }

    it('saves and loads exactly; teachers of another family are InputErrors', async () => {
      const zoo = teachers(4, 30);
      const model = perturbed(initWeightformer(c.arch, weightformerConfig({ ...SMALL, mixing: true, agreementStats: true }), zooReference(zoo) as never, zoo as never, 5), 6) as WeightformerModel<A>;
      const loaded = deserializeWeightformer(serializeWeightformer(model)) as WeightformerModel<A>;
      assert.deepEqual(serializeWeightformer(loaded), serializeWeightformer(model));
      const ensemble = teachers(3, 40);
      assert.deepEqual(flat(c.arrays(await generate(loaded, ensemble))), flat(c.arrays(await generate(model, ensemble))));
      const other = c.name === 'resnet' ? randomVit(VIT, 1) : randomResnet(RESNET, 1);
      await assert.rejects(generateStudent(model as never, [other as never]), InputError);
      assert.throws(() => familyOf({ family: 'gru' } as never), InputError);
    });
  });
}

for (const c of CASES) runCase(c as Case<ResnetArchitecture | VitArchitecture, ResnetParams | VitParams>);

/** 28 × 28 → 14 × 14 by 2 × 2 mean pooling (4× fewer pixels: the learning tests stay short on 2 cores). */
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

/**
 * A short learning test per family: small teachers on 200-digit shards (14 × 14 MNIST), a WeightFormer
 * meta-trained on a separate consolidation set. The meta-loss must fall, and the zero-shot student of a
 * held-out ensemble must be a working classifier of the family, scored on test digits nobody trained on.
 */
describe('weightformer learns to consolidate ResNets and ViTs (wasm, MNIST 14×14)', function () {
  before(async () => {
    await initBackend('wasm');
  });

  const raw = (): ReturnType<typeof splitDataset> =>
    splitDataset(loadEmbeddedMnist(), { source: 'mnist-embedded', shardSize: 200, consolidationSize: 400, validationSize: 200, testSize: 500, splitSeed: 5 }, 7);

  async function learn<A extends ResnetArchitecture | VitArchitecture, P extends ResnetParams | VitParams>(
    arch: A,
    train: (init: P, data: Dataset, seed: number) => Promise<P>,
    init: (seed: number) => P,
    accuracy: (p: P, ds: Dataset) => Promise<number>,
  ): Promise<void> {
    const r = raw();
    const split = { shards: r.shards.map(downsample), consolidation: downsample(r.consolidation), validation: downsample(r.validation), test: downsample(r.test) };
    const trained: P[] = [];
    for (let i = 0; i < 7; i++) trained.push(await train(init(deriveSeed(1, 'init', i)), split.shards[i]!, i));
    const zoo = trained.slice(0, 4);
    const heldOut = trained.slice(4);
    const steps = 60;
    const t0 = Date.now();
    const result = await metaTrain({
      arch: arch as ResnetArchitecture | VitArchitecture,
      config: weightformerConfig({ d: 16, heads: 2, blocks: 1, mixing: true, agreementStats: true }),
      zoo: zoo as never,
      reference: zooReference(zoo) as never,
      consolidation: split.consolidation,
      validation: { ensembles: [heldOut as never], data: split.validation },
      steps,
      batchSize: 64,
      learningRate: 3e-3,
      tMin: 2,
      tMax: 3,
      temperature: 2,
      kdWeight: 0.5,
      seed: 1,
      checkpointEvery: 0,
      evalEvery: 20,
    });
    const ms = Date.now() - t0;
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(result.curve.slice(0, 8).map((p) => p.loss));
    const last = mean(result.curve.slice(-8).map((p) => p.loss));
    assert.ok(last < 0.9 * first, `meta-loss ${first} → ${last}`);
    // The zero-shot student of a held-out ensemble is a valid model of the family that scores on test data.
    // Its accuracy is reported, not asserted: with 4 zoo teachers and 60 steps the WeightFormer fits the
    // zoo (the meta-loss falls) but does not yet lift held-out ResNet/ViT ensembles, whose aligned average
    // is near chance (see the pipelines' figures in bench/results/families-*.json).
    const student = (await generateStudent(result.model, heldOut as never)) as unknown as P;
    (arch.family === 'resnet' ? validateResnetParams : validateVitParams)(student as never);
    const acc = await accuracy(student, split.test);
    assert.ok(acc >= 0 && acc <= 1, `zero-shot accuracy ${acc}`);
    const accRecomputed = await accuracy((await recomputeStudentBn(student, split.consolidation, 128)) as P, split.test);
    const singles = await Promise.all(heldOut.map((t) => accuracy(t, split.test)));
    const averaged = await accuracy((await generateStudent({ ...result.model, params: Object.fromEntries(Object.entries(result.model.params).map(([k, v]) => [k, k.startsWith('out.') || k === 'mix.w' ? new Float32Array(v.length) : v])) }, heldOut as never)) as unknown as P, split.test);
    const pct = (v: number): string => `${(100 * v).toFixed(1)}%`;
    // eslint-disable-next-line no-console
    console.log(
      `      (${arch.family}: meta-trained ${steps} steps in ${ms} ms; meta-loss ${first.toFixed(3)} → ${last.toFixed(3)}; best step ${result.bestStep}; ` +
        `test: mean single teacher ${pct(mean(singles))}, aligned average ${pct(averaged)}, zero-shot student ${pct(acc)}, BN recomputed ${pct(accRecomputed)})`,
    );
  }

  it('resnet (width 6, 3 stages): meta-loss falls; the zero-shot student of a held-out ensemble is a valid model that scores', async () => {
    const arch: ResnetArchitecture = { family: 'resnet', inputShape: [14, 14, 1], width: 6, stages: 3, blocksPerStage: 1, kernelSize: 3, outputSize: 10 };
    await learn<ResnetArchitecture, ResnetParams>(
      arch,
      async (init, data, seed) => (await trainResnet({ arch, init, train: data, epochs: 12, batchSize: 32, learningRate: 1e-2, seed })).params,
      (seed) => initResnet(arch, seed),
      resnetAccuracy,
    );
  });

  it('vit (dim 16, 4 tokens): meta-loss falls; the zero-shot student of a held-out ensemble is a valid model that scores', async () => {
    const arch: VitArchitecture = { family: 'vit', inputShape: [14, 14, 1], patchSize: 7, dim: 16, heads: 2, depth: 1, mlpRatio: 2, outputSize: 10 };
    await learn<VitArchitecture, VitParams>(
      arch,
      async (init, data, seed) => (await trainVit({ arch, init, train: data, epochs: 15, batchSize: 32, learningRate: 3e-3, seed })).params,
      (seed) => initVit(arch, seed),
      vitAccuracy,
    );
  });
});
