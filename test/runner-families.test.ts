import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import type { ArchitectureSpec, CnnArchitecture, ModelArchitecture, ResnetArchitecture, VitArchitecture } from '../src/spec/types';
import { initBackend } from '../src/ml/backend';
import { packTfjsArtifact, writeTfjsModelDir } from '../src/ml/tfjs-format';
import { writeSafetensorsTeacher } from '../src/ml/formats/torch-mlp';
import { writeSafetensorsCnn } from '../src/ml/formats/torch-cnn';
import { writeTfjsCnnModelDir } from '../src/ml/formats/tfjs-cnn';
import { safetensorsResnetFromBytes, writeSafetensorsResnet } from '../src/ml/formats/torch-resnet';
import { safetensorsVitFromBytes, writeSafetensorsVit } from '../src/ml/formats/torch-vit';
import { predictCnnLogits } from '../src/ml/cnn/forward';
import type { CnnParams } from '../src/ml/cnn/architecture';
import type { VitParams } from '../src/ml/vit/architecture';
import { ArtifactStore } from '../src/store/store';
import { InputError } from '../src/util/errors';
import {
  CNN_RUNTIME,
  MLP_RUNTIME,
  readTeacherFile,
  RESNET_RUNTIME,
  runtimeOf,
  storedFamilyOf,
  studentRegistryFiles,
  VIT_RUNTIME,
  withFamily,
  withStudentFamily,
  type FamilyRuntime,
  type ModelParams,
} from '../src/runner/families';
import { resolveTeacherSource } from '../src/teachers/sources';
import { runJobInThread } from '../src/runner/thread';
import type { EarlyStoppedJobResult, TeacherJobResult } from '../src/runner/jobs';
import type { JobProgress } from '../src/runner/protocol';
import { randomImageData } from './helpers/ml';
import { tinySpec } from './helpers/specs';

const MLP: ArchitectureSpec = { family: 'mlp', inputSize: 64, hidden: [6], outputSize: 3, activation: 'relu' };
const CNN: CnnArchitecture = { family: 'cnn', inputShape: [8, 8, 1], channels: [3, 4], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [5], outputSize: 3 };
const CNN_NO_BN: CnnArchitecture = { ...CNN, batchNorm: false, pool: 'avg', hidden: [] };
const RESNET: ResnetArchitecture = { family: 'resnet', inputShape: [8, 8, 1], width: 3, stages: 2, blocksPerStage: 1, kernelSize: 3, outputSize: 3 };
const VIT: VitArchitecture = { family: 'vit', inputShape: [8, 8, 1], patchSize: 4, dim: 4, heads: 2, depth: 1, mlpRatio: 2, outputSize: 3 };
const ALL: Array<[string, ModelArchitecture]> = [['mlp', MLP], ['cnn', CNN], ['cnn without BN', CNN_NO_BN], ['resnet', RESNET], ['vit', VIT]];

/** Parameters with nothing left at its init constant (biases, β, running statistics): a few training steps. */
async function trained<A extends ModelArchitecture, P>(rt: FamilyRuntime<A, P>, arch: A, seed: number): Promise<P> {
  const shape = arch.family === 'mlp' ? ([8, 8, 1] as [number, number, number]) : (arch as Exclude<ModelArchitecture, ArchitectureSpec>).inputShape;
  const data = randomImageData(24, { inputShape: shape, outputSize: arch.outputSize }, seed);
  const r = await rt.train({ arch, init: rt.init(arch, seed), train: data, epochs: 1, batchSize: 8, learningRate: 0.05, seed }, {});
  return r.params;
}

function sameParams<A extends ModelArchitecture, P>(rt: FamilyRuntime<A, P>, a: P, b: P, what: string): void {
  assert.deepEqual(rt.serializeParams(a), rt.serializeParams(b), what);
}

describe('runner families: one runtime per architecture family', function () {
  this.timeout(120_000);
  let dir: string;

  before(async () => {
    await initBackend('wasm');
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'runner-families-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  for (const [name, arch] of ALL) {
    it(`${name}: the store blob round-trips exactly and names its family`, async () => {
      await withFamily(arch, async (rt, a) => {
        const p = await trained(rt, a, 5);
        const bytes = rt.pack(p);
        assert.equal(storedFamilyOf(bytes), a.family);
        sameParams(rt, rt.unpack(bytes, a), p, 'unpacked parameters');
        assert.deepEqual(rt.pack(rt.unpack(bytes, a)), bytes, 'deterministic bytes');
      });
    });
  }

  it('keeps the MLP store bytes (the packed TF.js artifact) and stores CNNs as TF.js, ResNets and ViTs as parameter files', async () => {
    const mlp = await trained(MLP_RUNTIME, MLP, 1);
    assert.deepEqual(MLP_RUNTIME.pack(mlp), packTfjsArtifact(mlp));
    const ascii = (b: Uint8Array): string => String.fromCharCode(...b.subarray(0, 4));
    assert.equal(ascii(CNN_RUNTIME.pack(await trained(CNN_RUNTIME, CNN, 1))), 'WFTJ');
    assert.equal(ascii(RESNET_RUNTIME.pack(await trained(RESNET_RUNTIME, RESNET, 1))), 'WFRN');
    assert.equal(ascii(VIT_RUNTIME.pack(await trained(VIT_RUNTIME, VIT, 1))), 'WFVT');
    assert.equal(storedFamilyOf(new Uint8Array([1, 2, 3, 4, 5])), undefined);
  });

  it('refuses a stored model of another family, or of other shapes, with an InputError', async () => {
    const blobs: Record<string, Uint8Array> = {
      mlp: MLP_RUNTIME.pack(await trained(MLP_RUNTIME, MLP, 2)),
      cnn: CNN_RUNTIME.pack(await trained(CNN_RUNTIME, CNN, 2)),
      resnet: RESNET_RUNTIME.pack(await trained(RESNET_RUNTIME, RESNET, 2)),
      vit: VIT_RUNTIME.pack(await trained(VIT_RUNTIME, VIT, 2)),
    };
    const archOf: Record<string, ModelArchitecture> = { mlp: MLP, cnn: CNN, resnet: RESNET, vit: VIT };
    for (const [stored, bytes] of Object.entries(blobs)) {
      for (const [family, arch] of Object.entries(archOf)) {
        if (family === stored) continue;
        assert.throws(
          () => runtimeOf(arch.family).unpack(bytes, arch),
          (e: Error) => e instanceof InputError && e.message.includes(`of the ${stored} family`) && e.message.includes(`architecture.family is ${family}`),
          `${stored} read as ${family}`,
        );
      }
    }
    // The right family with other shapes: the reader's own check.
    assert.throws(() => CNN_RUNTIME.unpack(blobs.cnn!, { ...CNN, channels: [3, 5] }), InputError);
    assert.throws(() => RESNET_RUNTIME.unpack(blobs.resnet!, { ...RESNET, width: 4 }), InputError);
    assert.throws(() => VIT_RUNTIME.unpack(blobs.vit!, { ...VIT, depth: 2 }), InputError);
    assert.throws(() => MLP_RUNTIME.unpack(blobs.mlp!, { ...MLP, hidden: [7] }), InputError);
  });

  it('dispatches the WeightFormer to every family, and refuses an unknown one', () => {
    for (const arch of [MLP, CNN, RESNET, VIT]) assert.equal(withStudentFamily(arch, (rt) => rt.family), arch.family);
    assert.throws(() => withStudentFamily({ family: 'gru' } as never, () => 0), (e: Error) => e instanceof InputError && /supports the mlp, cnn, resnet, vit families, not gru/.test(e.message));
  });

  it('ensembles, averages and recomputes BN statistics per family', async () => {
    const data = randomImageData(40, { inputShape: [8, 8, 1], outputSize: 3 }, 9);
    for (const [name, arch] of ALL) {
      await withFamily(arch, async (rt, a) => {
        const models = [await trained(rt, a, 11), await trained(rt, a, 12)];
        const probs = await rt.ensembleProbs(models, data, 2);
        assert.equal(probs.length, data.n * 3, name);
        for (let i = 0; i < data.n; i++) {
          const row = probs.subarray(i * 3, i * 3 + 3).reduce((s, v) => s + v, 0);
          assert.ok(Math.abs(row - 1) < 1e-5, `${name}: row ${i} sums to ${row}`);
        }
        const acc = await rt.ensembleAccuracy(models, data);
        assert.ok(acc >= 0 && acc <= 1, name);
        // One member: the ensemble is that model.
        assert.equal(await rt.ensembleAccuracy([models[0]!], data), await rt.accuracy(models[0]!, data), name);
        for (const avg of [rt.naiveAverage(models), rt.alignedAverage(models)]) sameParams(rt, rt.unpack(rt.pack(avg), a), avg, `${name}: average`);
        const recomputed = await rt.recomputeBn(models[0]!, data, 8);
        if (!rt.hasBatchNorm(a)) sameParams(rt, recomputed, models[0]!, `${name}: nothing to recompute`);
        else assert.notDeepEqual(rt.serializeParams(recomputed), rt.serializeParams(models[0]!), `${name}: new running statistics`);
      });
    }
  });

  it('the CNN ensemble equals the mean softmax of each member (float64 sum, as the MLP)', async () => {
    const data = randomImageData(10, { inputShape: [8, 8, 1], outputSize: 3 }, 4);
    const models = [await trained(CNN_RUNTIME, CNN, 21), await trained(CNN_RUNTIME, CNN, 22)];
    const probs = await CNN_RUNTIME.ensembleProbs(models, data, 1);
    const logits = await Promise.all(models.map((m) => predictCnnLogits(m, data)));
    for (let i = 0; i < data.n; i++) {
      const softmaxes = logits.map((l) => {
        const row = Array.from(l.subarray(i * 3, i * 3 + 3));
        const max = Math.max(...row);
        const e = row.map((v) => Math.exp(v - max));
        const s = e.reduce((x, y) => x + y, 0);
        return e.map((v) => v / s);
      });
      for (let c = 0; c < 3; c++) assert.ok(Math.abs((probs[i * 3 + c] ?? 0) - ((softmaxes[0]![c] ?? 0) + (softmaxes[1]![c] ?? 0)) / 2) < 1e-6);
    }
  });

  it("reads teacher files with the family's readers (safetensors; TF.js for mlp and cnn), through the teacher sources too", async () => {
    const mlp = await trained(MLP_RUNTIME, MLP, 31);
    const cnn = await trained(CNN_RUNTIME, CNN, 31);
    const resnet = await trained(RESNET_RUNTIME, RESNET, 31);
    const vit = await trained(VIT_RUNTIME, VIT, 31);
    await writeSafetensorsTeacher(path.join(dir, 'mlp.safetensors'), mlp);
    await writeTfjsModelDir(path.join(dir, 'mlp-tfjs'), mlp);
    await writeSafetensorsCnn(path.join(dir, 'cnn.safetensors'), cnn);
    await writeTfjsCnnModelDir(path.join(dir, 'cnn-tfjs'), cnn);
    await writeSafetensorsResnet(path.join(dir, 'resnet.safetensors'), resnet);
    await writeSafetensorsVit(path.join(dir, 'vit.safetensors'), vit);
    const cases: Array<[string, 'safetensors' | 'tfjs', ModelArchitecture, ModelParams]> = [
      ['mlp.safetensors', 'safetensors', MLP, mlp],
      ['mlp-tfjs/model.json', 'tfjs', MLP, mlp],
      ['cnn.safetensors', 'safetensors', CNN, cnn],
      ['cnn-tfjs/model.json', 'tfjs', CNN, cnn],
      ['resnet.safetensors', 'safetensors', RESNET, resnet],
      ['vit.safetensors', 'safetensors', VIT, vit],
    ];
    for (const [file, format, arch, params] of cases) {
      const rt = runtimeOf(arch.family);
      assert.deepEqual(rt.serializeParams(await readTeacherFile(path.join(dir, file), format, arch)), rt.serializeParams(params), file);
      const resolved = await resolveTeacherSource(file, { baseDir: dir, allowedRoots: [dir], cacheDir: path.join(dir, 'cache'), expected: arch });
      assert.equal(resolved.format, format, file);
      assert.deepEqual(rt.serializeParams(resolved.params), rt.serializeParams(params), `${file} via the teacher sources`);
    }
    // A CNN file is not a ResNet, a ResNet file is not a ViT, and only MLPs and CNNs come as TF.js.
    await assert.rejects(readTeacherFile(path.join(dir, 'cnn.safetensors'), 'safetensors', RESNET), InputError);
    await assert.rejects(readTeacherFile(path.join(dir, 'resnet.safetensors'), 'safetensors', VIT), InputError);
    await assert.rejects(readTeacherFile(path.join(dir, 'cnn.safetensors'), 'safetensors', { ...CNN, channels: [3, 5] }), InputError);
    await assert.rejects(readTeacherFile(path.join(dir, 'cnn-tfjs/model.json'), 'tfjs', RESNET), /TF\.js teachers exist for the mlp and cnn families only/);
    await assert.rejects(
      resolveTeacherSource('mlp.safetensors', { baseDir: dir, allowedRoots: [dir], cacheDir: path.join(dir, 'cache'), expected: CNN }),
      InputError,
    );
  });

  it('registers MLP and CNN students as TF.js files, ResNet and ViT students as safetensors state_dicts', async () => {
    const cnn = await trained(CNN_RUNTIME, CNN, 41);
    assert.deepEqual(studentRegistryFiles(CNN_RUNTIME.pack(cnn), CNN).map((f) => f.path), ['weights.bin', 'model.json']);
    assert.deepEqual(studentRegistryFiles(MLP_RUNTIME.pack(await trained(MLP_RUNTIME, MLP, 41)), MLP).map((f) => f.path), ['weights.bin', 'model.json']);
    const resnet = await trained(RESNET_RUNTIME, RESNET, 41);
    const [rf] = studentRegistryFiles(RESNET_RUNTIME.pack(resnet), RESNET);
    assert.equal(rf?.path, 'model.safetensors');
    assert.deepEqual(RESNET_RUNTIME.serializeParams(safetensorsResnetFromBytes(rf!.content as Uint8Array, RESNET)), RESNET_RUNTIME.serializeParams(resnet));
    const vit = await trained(VIT_RUNTIME, VIT, 41);
    const [vf] = studentRegistryFiles(VIT_RUNTIME.pack(vit), VIT);
    assert.equal(vf?.path, 'model.safetensors');
    assert.deepEqual(VIT_RUNTIME.serializeParams(safetensorsVitFromBytes(vf!.content as Uint8Array, VIT)), VIT_RUNTIME.serializeParams(vit));
  });
});

/** Runs a job in a worker thread as an activity does; `abortAtCheckpoint` kills the thread at that checkpoint (1-based). */
async function runJob<T>(storeRoot: string, job: string, input: unknown, opts: { resume?: unknown; abortAtCheckpoint?: number } = {}) {
  const controller = new AbortController();
  const checkpoints: Array<{ step: number; resume: unknown }> = [];
  const progress: JobProgress[] = [];
  const result = runJobInThread<T>(
    { job, input, storeRoot, ...(opts.resume === undefined ? {} : { resume: opts.resume }) },
    {
      signal: controller.signal,
      onProgress: (p) => progress.push(p),
      onCheckpoint: (step, resume) => {
        checkpoints.push({ step, resume });
        if (checkpoints.length === opts.abortAtCheckpoint) controller.abort(new Error('interrupted'));
      },
    },
  );
  return { result, checkpoints, progress };
}

describe('runner jobs of the image families: an interrupted job resumed from its checkpoint ends as an uninterrupted one', function () {
  this.timeout(240_000);
  let storeRoot: string;

  before(async () => {
    storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'runner-resume-'));
  });
  after(async () => {
    await fs.rm(storeRoot, { recursive: true, force: true });
  });

  it('trainTeacher of a CNN with batch norm (running statistics in the checkpoint)', async () => {
    const { spec } = tinySpec('architecture: {family: cnn, channels: [2, 4], hidden: []}\nteachers: {count: 1, train: {epochs: 2, batchSize: 50, checkpointEvery: 3}}');
    const input = { spec, role: 'teacher', index: 0 };
    const whole = await runJob<TeacherJobResult>(storeRoot, 'trainTeacher', input);
    const uninterrupted = await whole.result;
    const cut = await runJob<TeacherJobResult>(storeRoot, 'trainTeacher', input, { abortAtCheckpoint: 1 });
    await assert.rejects(cut.result, /interrupted/);
    const saved = cut.checkpoints[0]!;
    assert.equal(saved.step, 3);
    const resumed = await runJob<TeacherJobResult>(storeRoot, 'trainTeacher', input, { resume: saved.resume });
    const r = await resumed.result;
    assert.equal(resumed.progress[0]?.step, 4, 'the resumed attempt starts after the checkpoint');
    assert.equal(r.params, uninterrupted.params, 'the same stored model, bit for bit');
    assert.deepEqual(r.curve, uninterrupted.curve);
    assert.equal(r.valAccuracy, uninterrupted.valAccuracy);
    // The store blob is the CNN's TF.js artifact.
    const bytes = await new ArtifactStore(storeRoot).getBytes(r.params as `sha256:${string}`);
    assert.equal(storedFamilyOf(bytes), 'cnn');
    const p: CnnParams = CNN_RUNTIME.unpack(bytes, spec.architecture as CnnArchitecture);
    assert.ok(p.convs.every((c) => c.bn));
  });

  it('kdFromScratch of a ViT (early stopping, its checkpoint holding the ViT trainer state and best parameters)', async () => {
    const { spec } = tinySpec(
      'architecture: {family: vit, dim: 8, heads: 2, depth: 1}\nteachers: {count: 2, train: {epochs: 1, batchSize: 50}}\n' +
        'baselines: {kd: {epochs: 3, batchSize: 50, checkpointEvery: 4}}\ngenerate: {method: aligned-average}',
    );
    const teachers: string[] = [];
    for (let index = 0; index < 2; index++) teachers.push((await (await runJob<TeacherJobResult>(storeRoot, 'trainTeacher', { spec, role: 'teacher', index })).result).params);
    const input = { spec, teachers };
    const uninterrupted = await (await runJob<EarlyStoppedJobResult>(storeRoot, 'kdFromScratch', input)).result;
    // Checkpoint 2 is at step 8, in the second epoch: the best epoch so far is in it.
    const cut = await runJob<EarlyStoppedJobResult>(storeRoot, 'kdFromScratch', input, { abortAtCheckpoint: 2 });
    await assert.rejects(cut.result, /interrupted/);
    const resumed = await runJob<EarlyStoppedJobResult>(storeRoot, 'kdFromScratch', input, { resume: cut.checkpoints[1]!.resume });
    const r = await resumed.result;
    assert.equal(resumed.progress[0]?.step, 9);
    assert.equal(r.params, uninterrupted.params);
    assert.equal(r.bestEpoch, uninterrupted.bestEpoch);
    assert.deepEqual(r.curve, uninterrupted.curve);
    const bytes = await new ArtifactStore(storeRoot).getBytes(r.params as `sha256:${string}`);
    const p: VitParams = VIT_RUNTIME.unpack(bytes, spec.architecture as VitArchitecture);
    assert.equal(p.blocks.length, 1);
  });
});
