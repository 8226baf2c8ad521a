/**
 * The pipeline's `alignment` block: the spec, activation matching inside the WeightFormer (reference,
 * meta-training, generation, the model file), the aligned-average job, the cache and registry keys, and
 * the refusal to reuse a WeightFormer trained with another alignment.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { alignmentImages } from '../src/ml/align-activations';
import { permuteHiddenUnits } from '../src/ml/align';
import type { CnnArchitecture, CnnParams } from '../src/ml/cnn';
import { averageCnnParams, initCnn, permuteCnnUnits, trainCnn } from '../src/ml/cnn';
import type { Dataset } from '../src/ml/data';
import { initMlp, type MlpParams } from '../src/ml/mlp';
import { Rng } from '../src/ml/rng';
import {
  deserializeWeightformer, generateStudent, initWeightformer, metaTrain, serializeWeightformer, weightformerConfig, zooReference,
  zooReferenceWith, alignTeachers, ACTIVATION_ALIGNMENT_FAMILIES, type AlignmentContext, type MetaTrainState,
} from '../src/ml/weightformer';
import { CNN_FAMILY, MLP_FAMILY } from '../src/ml/weightformer/family';
import { alignmentRecordOf, checkModelAlignment } from '../src/runner/alignment';
import { CNN_RUNTIME, MLP_RUNTIME, RESNET_RUNTIME, VIT_RUNTIME, architectureKey } from '../src/runner/families';
import { JOBS, type BaselinesJobResult, type GenerateJobResult, type JobContext } from '../src/runner/jobs';
import { pipelineSplit } from '../src/runner/data-source';
import { loadPipelineFile, loadPipelineText } from '../src/spec/load';
import { ACTIVATION_ALIGNMENT_FAMILIES as SPEC_ACTIVATION_FAMILIES } from '../src/spec/semantics';
import type { PipelineSpec } from '../src/spec/types';
import { ArtifactStore } from '../src/store/store';
import { InputError, SpecError } from '../src/util/errors';
import { checkWeightformerReuse, weightformerRegistryKey } from '../activities/registry';
import { weightformerKeyInputs } from '../activities/weightformer';
import { cacheKey } from '../activities/common';
import type { MlflowClient } from '../src/tracking/mlflow';
import { maxAbsDiff, onBackend, randomImageData } from './helpers/ml';
import { cnnLogitsOf as logitsOf, flatCnn as flat, randomCnn, randomPerms } from './helpers/cnn';

const ROOT = path.resolve(__dirname, '../..');

function specError(text: string): string {
  try {
    loadPipelineText(text, 'a.yaml');
  } catch (e) {
    if (e instanceof SpecError) return e.diagnostics.map((d) => `${d.file}:${d.line}:${d.col}: ${d.path}: ${d.message}`).join('\n');
    throw e;
  }
  assert.fail(`loaded: ${text}`);
}

describe('alignment block', () => {
  describe('spec', () => {
    const cnn = 'version: 1\nname: a\narchitecture: {family: cnn}\n';

    it('is absent unless written, so a file without it keeps its spec and hash', () => {
      const loaded = loadPipelineFile(path.join(ROOT, 'pipelines/cnn.yaml'));
      assert.equal('alignment' in loaded.spec, false);
      // The hash pipelines/cnn.yaml had before the option existed (computed with commit 837d661).
      assert.equal(loaded.hash, 'cfa64b7543023a43e6d05bad9bceda0a4aafa90c6e86ae337ec5e524f99a9091');
      assert.equal(loadPipelineFile(path.join(ROOT, 'pipelines/quickstart.yaml')).hash, '372482df6f7287813fec468094933d63337a23ab41f12534df9de7b0d523f113');
      assert.equal(loadPipelineText(cnn, 'a.yaml').spec.alignment, undefined);
    });

    it('fills its defaults when written, and changes the hash', () => {
      const plain = loadPipelineText(cnn, 'a.yaml');
      const explicit = loadPipelineText(`${cnn}alignment: {method: activations}\n`, 'a.yaml');
      assert.deepEqual(explicit.spec.alignment, { method: 'activations', samples: 512 });
      assert.deepEqual(loadPipelineText(`${cnn}alignment: {}\n`, 'a.yaml').spec.alignment, { method: 'weights', samples: 512 });
      assert.deepEqual(loadPipelineText(`${cnn}alignment: {method: activations, samples: 64}\n`, 'a.yaml').spec.alignment, { method: 'activations', samples: 64 });
      assert.notEqual(explicit.hash, plain.hash);
      // mlp and resnet support it too.
      assert.deepEqual(loadPipelineText('version: 1\nname: a\nalignment: {method: activations}\n', 'a.yaml').spec.alignment, { method: 'activations', samples: 512 });
      assert.deepEqual(loadPipelineText('version: 1\nname: a\narchitecture: {family: resnet}\nalignment: {method: activations, samples: 64}\n', 'a.yaml').spec.alignment, { method: 'activations', samples: 64 });
      const example = loadPipelineFile(path.join(ROOT, 'pipelines/cnn-activations.yaml'));
      assert.deepEqual(example.spec.alignment, { method: 'activations', samples: 512 });
      const resnetExample = loadPipelineFile(path.join(ROOT, 'pipelines/resnet-activations.yaml'));
      assert.deepEqual(resnetExample.spec.alignment, { method: 'activations', samples: 512 });
      assert.equal(resnetExample.spec.architecture.family, 'resnet');
    });

    it('refuses activations for a family without it (vit), and bad values, positioned', () => {
      assert.equal(
        specError('version: 1\nname: a\narchitecture: {family: vit}\nalignment:\n  method: activations\n'),
        "a.yaml:5:11: /alignment/method: activation matching is implemented for the mlp, cnn and resnet families (architecture.family is 'vit'); use 'weights'",
      );
      assert.match(specError('version: 1\nname: a\narchitecture: {family: vit}\nalignment: {method: activations}\n'), /^a\.yaml:4:21: \/alignment\/method: activation matching/);
      // weights is fine for every family.
      assert.deepEqual(loadPipelineText('version: 1\nname: a\narchitecture: {family: vit}\nalignment: {method: weights}\n', 'a.yaml').spec.alignment, { method: 'weights', samples: 512 });
      assert.match(specError(`${cnn}alignment: {method: gradients}\n`), /^a\.yaml:4:\d+: \/alignment\/method: /);
      assert.match(specError(`${cnn}alignment: {samples: 1}\n`), /^a\.yaml:4:\d+: \/alignment\/samples: /);
      assert.match(specError(`${cnn}alignment: {method: activations, images: 3}\n`), /^a\.yaml:4:\d+: \/alignment\/images: /);
    });

    it('the families the spec allows are those the code implements', () => {
      assert.deepEqual([...SPEC_ACTIVATION_FAMILIES].sort(), [...ACTIVATION_ALIGNMENT_FAMILIES].sort());
      const runtimes = [MLP_RUNTIME, CNN_RUNTIME, RESNET_RUNTIME, VIT_RUNTIME] as Array<{ family: string; alignedAverageByActivations?: unknown }>;
      assert.deepEqual(runtimes.filter((rt) => rt.alignedAverageByActivations).map((rt) => rt.family).sort(), [...SPEC_ACTIVATION_FAMILIES].sort());
    });
  });

  describe('WeightFormer with activation matching', () => {
    onBackend('cpu');
    /** Every unit of seed 88 is live on images of seed 80 (test/ml-cnn-align-activations.test.ts), so assignments are unique. */
    const ARCH: CnnArchitecture = { family: 'cnn', inputShape: [8, 8, 2], channels: [4, 5], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [6], outputSize: 4 };
    const images = randomImageData(64, ARCH, 80);
    const ctx: AlignmentContext = { method: 'activations', images };
    const SMALL = { d: 8, heads: 2, blocks: 1 };

    it('an untrained model returns exactly the activation-aligned mean, and aligns a permuted teacher back', async () => {
      const zoo = [88, 11, 12, 13].map((s) => randomCnn(ARCH, s));
      const reference = (await zooReferenceWith(zoo, ctx)) as CnnParams;
      assert.notDeepEqual(flat(reference), flat(zooReference(zoo)), 'the activation reference is another barycenter');
      const alignedZoo = await alignTeachers(CNN_FAMILY, reference, zoo, ctx);
      const model = initWeightformer(ARCH, weightformerConfig(SMALL), reference, zoo, 4, undefined, { alignment: { method: 'activations', samples: 64 }, zoo: alignedZoo as CnnParams[] });
      assert.deepEqual(model.alignment, { method: 'activations', samples: 64 });
      const weightModel = initWeightformer(ARCH, weightformerConfig(SMALL), reference, zoo, 4);

      // Independent teachers: the student is the activation-aligned mean, not the weight-matched one.
      const teachers = [21, 22, 23].map((s) => randomCnn(ARCH, s));
      const student = await generateStudent(model, teachers, undefined, images);
      const expected = averageCnnParams((await alignTeachers(CNN_FAMILY, reference, teachers, ctx)) as CnnParams[]);
      assert.deepEqual(flat(student), flat(expected));
      assert.notDeepEqual(flat(student), flat(await generateStudent(weightModel, teachers)), 'the two methods align differently');

      // A teacher and a shuffled copy of it: both are matched to the same units, so their mean is the
      // teacher itself (aligned), computing the same function.
      const teacher = zoo[0]!;
      const copy = permuteCnnUnits(teacher, randomPerms(teacher, 70));
      const both = await generateStudent(model, [teacher, copy], undefined, images);
      const [alignedTeacher] = (await alignTeachers(CNN_FAMILY, reference, [teacher], ctx)) as CnnParams[];
      assert.deepEqual(flat(both), flat(alignedTeacher!));
      assert.ok(maxAbsDiff(await logitsOf(both, images), await logitsOf(teacher, images)) < 1e-5);

      // The file keeps the record; generating without the consolidation set is refused.
      const loaded = deserializeWeightformer(serializeWeightformer(model));
      assert.deepEqual(loaded.alignment, { method: 'activations', samples: 64 });
      assert.deepEqual(flat(await generateStudent(loaded, teachers, undefined, images)), flat(student));
      await assert.rejects(generateStudent(loaded, teachers), (e: unknown) => e instanceof InputError && /activations on 64 consolidation examples/.test(e.message));
      // A weight-matching model's file has no record (its bytes are what they always were).
      assert.equal(deserializeWeightformer(serializeWeightformer(weightModel)).alignment, undefined);
    });

    it('mlp: hidden units matched by their activations (a shuffled copy aligned back)', async () => {
      const arch = { family: 'mlp' as const, inputSize: 12, hidden: [7, 5], outputSize: 3, activation: 'relu' as const };
      const data: Dataset = { ...randomImageData(64, { inputShape: [12, 1, 1], outputSize: 3 }, 5) };
      const mctx: AlignmentContext = { method: 'activations', images: data };
      const zoo = [1, 2, 3].map((s) => initMlp(arch, s));
      const reference = (await zooReferenceWith(zoo, mctx)) as MlpParams;
      const alignedZoo = (await alignTeachers(MLP_FAMILY, reference, zoo, mctx)) as MlpParams[];
      const model = initWeightformer(arch, weightformerConfig(SMALL), reference, zoo, 4, undefined, { alignment: { method: 'activations', samples: 64 }, zoo: alignedZoo });
      const teacher = initMlp(arch, 40);
      const r = new Rng(9);
      const copy = permuteHiddenUnits(teacher, [r.permutation(7), r.permutation(5)]);
      const student = (await generateStudent(model, [teacher, copy], undefined, data)) as MlpParams;
      const [alignedTeacher] = await alignTeachers(MLP_FAMILY, reference, [teacher], mctx);
      assert.deepEqual(student, alignedTeacher);
      // The runner's aligned average (avg_aligned) of the teacher and its copy is the teacher.
      assert.deepEqual(await MLP_RUNTIME.alignedAverageByActivations!([teacher, copy], data), teacher);
    });

    it('meta-training records the alignment in the model and its fingerprint', async () => {
      const zoo = [31, 32, 33].map((s) => randomCnn(ARCH, s));
      const consolidation = randomImageData(40, ARCH, 81);
      const base = {
        arch: ARCH, config: weightformerConfig(SMALL), zoo, reference: zooReference(zoo), consolidation,
        validation: { ensembles: [[randomCnn(ARCH, 34), randomCnn(ARCH, 35)]], data: consolidation },
        steps: 2, batchSize: 8, learningRate: 1e-3, tMin: 2, tMax: 3, temperature: 2, kdWeight: 0.5, seed: 1, checkpointEvery: 1, evalEvery: 0,
      };
      const states: MetaTrainState[] = [];
      const plain = await metaTrain(base, { onCheckpoint: (s) => void states.push(s) });
      assert.equal(plain.model.alignment, undefined);
      const byActivations = await metaTrain({ ...base, alignment: { method: 'activations', samples: 30 } });
      assert.deepEqual(byActivations.model.alignment, { method: 'activations', samples: 30 });
      assert.deepEqual(deserializeWeightformer(serializeWeightformer(byActivations.model)).alignment, { method: 'activations', samples: 30 });
      // A weight-matching checkpoint does not resume an activation-matching run.
      await assert.rejects(metaTrain({ ...base, alignment: { method: 'activations', samples: 30 } }, {}, states[0]), InputError);
      // The generated students differ: the zoo statistics and inputs were aligned differently.
      const ensemble = [randomCnn(ARCH, 36), randomCnn(ARCH, 37)];
      assert.notDeepEqual(flat(await generateStudent(byActivations.model, ensemble, undefined, consolidation)), flat(await generateStudent(plain.model, ensemble)));
    });
  });

  describe('aligned-average job (avg_aligned)', function () {
    this.timeout(120_000);
    onBackend('cpu');
    let dir: string;
    before(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'alignment-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    const specOf = (alignment: string): PipelineSpec =>
      loadPipelineText(
        'version: 1\nname: a\nseed: 2\ndata: {shardSize: 100, consolidationSize: 200, validationSize: 100, testSize: 100}\n' +
          `architecture: {family: cnn, channels: [6], hidden: []}\nteachers: {count: 2}\ncompute: {backend: cpu}\ntracking: {enabled: false}\n${alignment}`,
        'a.yaml',
      ).spec;

    it('uses the chosen method: permuted copies give the teacher back with either; trained teachers differ between methods; generate follows it', async () => {
      const store = new ArtifactStore(dir);
      const ctx: JobContext = { store, resume: undefined, progress: () => {}, checkpoint: () => {} };
      const job = JOBS['weightAverages'] as unknown as (input: { spec: PipelineSpec; teachers: string[] }, c: JobContext) => Promise<BaselinesJobResult>;
      const weights = specOf('');
      const activations = specOf('alignment: {method: activations, samples: 150}\n');
      const arch = weights.architecture as CnnArchitecture;
      const split = await pipelineSplit(weights);
      const put = (p: CnnParams): Promise<string> => store.putBytes(CNN_RUNTIME.pack(p));
      const get = async (ref: string): Promise<CnnParams> => CNN_RUNTIME.unpack(await store.getBytes(ref as `sha256:${string}`), arch);
      const train = async (i: number): Promise<CnnParams> =>
        (await trainCnn({ arch, init: initCnn(arch, 50 + i), train: split.shards[i]!, epochs: 1, batchSize: 20, learningRate: 0.01, seed: 60 + i })).params;
      const [a, b] = [await train(0), await train(1)];

      // Shuffled copies of one teacher: each method recovers it.
      const copies = [a, permuteCnnUnits(a, [new Rng(3).permutation(6)]), permuteCnnUnits(a, [new Rng(4).permutation(6)])];
      const copyRefs = await Promise.all(copies.map(put));
      for (const spec of [weights, activations]) {
        const out = await job({ spec, teachers: copyRefs }, ctx);
        assert.ok(maxAbsDiff(flat(await get(out.avgAligned)), flat(a)) < 1e-6, `${spec.alignment?.method ?? 'weights'}: the teacher back`);
      }

      // Two independently trained teachers: the methods choose different permutations.
      const refs = [await put(a), await put(b)];
      const byWeights = await job({ spec: weights, teachers: refs }, ctx);
      const byActivations = await job({ spec: activations, teachers: refs }, ctx);
      assert.equal(byActivations.avgNaive, byWeights.avgNaive, 'the naive average does not align');
      assert.notEqual(byActivations.avgAligned, byWeights.avgAligned);
      assert.deepEqual(flat(await get(byWeights.avgAligned)), flat(CNN_RUNTIME.alignedAverage([a, b])));
      // Activation matching on the first 150 consolidation examples, exactly.
      const images = alignmentImages(split.consolidation, 150);
      assert.equal(images.n, 150);
      assert.deepEqual(Array.from(images.x.subarray(0, 784 * 150)), Array.from(split.consolidation.x.subarray(0, 784 * 150)));
      assert.deepEqual(flat(await get(byActivations.avgAligned)), flat(await CNN_RUNTIME.alignedAverageByActivations!([a, b], images)));

      // generate.method aligned-average goes the same way.
      const generate = JOBS['generateStudent'] as unknown as (input: { spec: PipelineSpec; teachers: string[]; weightformer: string | null }, c: JobContext) => Promise<GenerateJobResult>;
      assert.equal((await generate({ spec: activations, teachers: refs, weightformer: null }, ctx)).student, byActivations.avgAligned);
      assert.equal((await generate({ spec: weights, teachers: refs, weightformer: null }, ctx)).student, byWeights.avgAligned);
      // generate.method weightformer: a model trained with the other alignment is refused (non-retryable InputError).
      const wfSpec = (s: PipelineSpec): PipelineSpec => ({ ...s, generate: { method: 'weightformer' } });
      const zoo = [a, b];
      const weightModel = await store.putBytes(serializeWeightformer(initWeightformer(arch, weightformerConfig({ d: 8, heads: 2, blocks: 1 }), zooReference(zoo), zoo, 1)));
      await assert.rejects(generate({ spec: wfSpec(activations), teachers: refs, weightformer: weightModel }, ctx),
        (e: unknown) => e instanceof InputError && /aligned by weights but this pipeline aligns by activations:150/.test(e.message));
      assert.equal((await generate({ spec: wfSpec(weights), teachers: refs, weightformer: weightModel }, ctx)).student, byWeights.avgAligned, 'untrained: the aligned mean');
      // A weight-matching model without probe tokens reads no data: generating never loads the dataset.
      const unreadable: PipelineSpec = { ...wfSpec(weights), data: { ...weights.data, source: 'mnist-idx', path: path.join(dir, 'no-such-folder') } };
      assert.equal((await generate({ spec: unreadable, teachers: refs, weightformer: weightModel }, ctx)).student, byWeights.avgAligned);
      const activationModel = await store.putBytes(serializeWeightformer(initWeightformer(arch, weightformerConfig({ d: 8, heads: 2, blocks: 1 }), a, zoo, 1, undefined,
        { alignment: { method: 'activations', samples: 150 }, zoo: [a, ...((await alignTeachers(CNN_FAMILY, a, [b], { method: 'activations', images })) as CnnParams[])] })));
      await assert.rejects(generate({ spec: wfSpec(weights), teachers: refs, weightformer: activationModel }, ctx), InputError);
      // Reference a, untrained: the activation-aligned mean of the teachers, which is avg_aligned with reference a.
      assert.equal((await generate({ spec: wfSpec(activations), teachers: refs, weightformer: activationModel }, ctx)).student, byActivations.avgAligned);
    });
  });

  describe('cache keys and WeightFormer reuse', () => {
    const head = 'version: 1\nname: a\narchitecture: {family: cnn}\nzoo: {count: 8}\n';
    const load = (extra = '', weightformer = 'weightformer: {mode: train}\n'): PipelineSpec => loadPipelineText(head + weightformer + extra, 'a.yaml').spec;

    it('keys hold the block only for activation matching', () => {
      const plain = load();
      assert.equal('alignment' in weightformerKeyInputs(plain, ['z'], ['v'], true), false);
      const keyOf = (spec: PipelineSpec): string => weightformerRegistryKey(spec, true);
      // pipelines/cnn.yaml's registry key before the option existed (computed with commit 837d661).
      assert.equal(weightformerRegistryKey(loadPipelineFile(path.join(ROOT, 'pipelines/cnn.yaml')).spec, true), '95b0c39ed4c50b9b466d6b79a6bae84b485ed655c5c8f4a398b4b2331b9d857c');
      const activations = load('alignment: {method: activations}\n');
      assert.notEqual(keyOf(activations), keyOf(plain));
      // Weight matching written out computes what no block does: the same keys, so its results are shared.
      assert.equal(keyOf(load('alignment: {method: weights, samples: 64}\n')), keyOf(plain));
      assert.notEqual(keyOf(load('alignment: {method: activations, samples: 100}\n')), keyOf(activations));
      assert.deepEqual(weightformerKeyInputs(activations, ['z'], ['v'], true).alignment, { method: 'activations', samples: 512, data: { ...activations.data, shardSize: undefined } });
      // The consolidation set does not depend on data.shardSize, which the WeightFormer's key leaves out: nor does the block.
      const metaKey = (spec: PipelineSpec): string => cacheKey('metaTrain', weightformerKeyInputs(spec, ['z'], ['v'], true));
      const shards = 'data: {shardSize: 700}\n';
      assert.equal(metaKey(load(`alignment: {method: activations}\n${shards}`)), metaKey(activations));
      assert.equal(metaKey(load(shards)), metaKey(plain));
      assert.notEqual(metaKey(load('alignment: {method: activations}\ndata: {consolidationSize: 900}\n')), metaKey(activations), 'the matching images come from the consolidation set');
    });

    it('a WeightFormer trained with another alignment is refused from the registry (tag) and by its own record', async () => {
      const version = (alignmentTag: string | undefined) => ({
        name: 'weightformer-cnn-x', version: '3', source: '', run_id: 'r', status: 'READY', current_stage: '', description: '', aliases: [],
        tags: [
          { key: 'weightformer.kind', value: 'weightformer' },
          { key: 'weightformer.architecture_key', value: 'cnn:28x28x1:c16-32:k3:bn:max:h-:10' },
          ...(alignmentTag ? [{ key: 'weightformer.alignment', value: alignmentTag }] : []),
        ],
      });
      const reuse = 'weightformer: {mode: train, reuse: "models:/weightformer-cnn-x/3"}\nbaselines: {include: [teachers, ensemble]}\n';
      const loadReuse = (extra = ''): PipelineSpec => load(extra, reuse);
      const client = (tag: string | undefined) => ({ getModelVersion: async () => version(tag) }) as unknown as MlflowClient;
      const plain = loadReuse();
      const architectureTag = version(undefined).tags[1]!.value;
      // (the fake version's architecture tag must be this pipeline's for the alignment check to be reached)
      assert.equal(architectureKey(plain.architecture), architectureTag);
      const activations = loadReuse('alignment: {method: activations}\n');
      assert.deepEqual(await checkWeightformerReuse(client(undefined), plain), ['models:/weightformer-cnn-x/3']);
      assert.deepEqual(await checkWeightformerReuse(client('activations:512'), activations), ['models:/weightformer-cnn-x/3']);
      await assert.rejects(checkWeightformerReuse(client(undefined), activations), (e: unknown) => e instanceof InputError && /aligned by weights, but this pipeline aligns by activations:512/.test(e.message));
      await assert.rejects(checkWeightformerReuse(client('activations:512'), plain), (e: unknown) => e instanceof InputError && /aligned by activations:512, but this pipeline aligns by weights/.test(e.message));
      await assert.rejects(checkWeightformerReuse(client('activations:64'), activations), InputError);
      // The model file's own record is checked again where it is used.
      assert.equal(alignmentRecordOf(plain), undefined);
      assert.doesNotThrow(() => checkModelAlignment({ method: 'activations', samples: 512 }, activations, 'm'));
      assert.throws(() => checkModelAlignment(undefined, activations, 'm'), InputError);
      assert.throws(() => checkModelAlignment({ method: 'activations', samples: 512 }, plain, 'm'), InputError);
    });
  });
});
