import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from './helpers/temporal';
import { sharedMlflow } from './helpers/mlflow';
import { tinySpec } from './helpers/specs';
import { createPipelineWorker } from '../src/worker/worker';
import { ArtifactStore } from '../src/store/store';
import { MlflowClient } from '../src/tracking/mlflow';
import { resolveTeacherSource } from '../src/teachers/sources';
import { runtimeOf, storedFamilyOf } from '../src/runner/families';
import { writeSafetensorsResnet } from '../src/ml/formats/torch-resnet';
import { writeSafetensorsVit } from '../src/ml/formats/torch-vit';
import type { ResnetParams } from '../src/ml/resnet/architecture';
import type { VitParams } from '../src/ml/vit/architecture';
import type { PipelineInput, PipelineResult } from '../workflows/types';
import { taskQueueName } from '../workflows/queues';
import type { LoadedSpec } from '../src/spec/types';

const PREFIX = 'families-test';
const QUEUE = taskQueueName('cpu', PREFIX);

/** Data of every family's run: 28 × 28 digits (the embedded MNIST), small parts. */
const DATA = (shardSize: number) => `data: {shardSize: ${shardSize}, consolidationSize: 300, validationSize: 200, testSize: 500}`;

/** The metrics every pipeline reports with these baselines (the KD budget included). */
const COMMON = [
  'acc.teacher_0', 'acc.teacher_1', 'acc.teacher_2', 'acc.teacher_mean', 'acc.ensemble',
  'acc.avg_naive', 'acc.avg_aligned', 'acc.avg_aligned_finetuned', 'acc.kd', 'acc.student_zero_shot', 'acc.student_finetuned',
  'gain_captured.zero_shot', 'gain_captured.finetuned', 'seconds.kd_to_match', 'kd_to_match.reached', 'acc_val.student_finetuned',
  'data.test_size', 'seconds.weightformer_generate', 'seconds.finetune', 'seconds.kd_total', 'kd.best_epoch',
  'acc_val.teacher_0', 'acc_val.teacher_1', 'acc_val.teacher_2',
];
const BN_RECOMPUTED = ['acc.avg_naive_bn_recomputed', 'acc.avg_aligned_bn_recomputed', 'acc.student_zero_shot_bn_recomputed', 'gain_captured.zero_shot_bn_recomputed'];
const WEIGHTFORMER = ['acc.data_only', 'acc.teacher_ablation', 'zoo.count', 'zoo.acc_val_mean', 'weightformer.steps', 'weightformer.best_step', 'weightformer.val_acc_best', 'seconds.weightformer_train'];

/** Every expected metric exists and is finite; accuracies are in [0, 1]; teachers learnt; the ensemble is no worse than them. */
function assertSane(metrics: Record<string, number>, expected: string[], absent: string[] = []): void {
  for (const key of expected) assert.ok(Number.isFinite(metrics[key]), `${key} = ${metrics[key]} (${JSON.stringify(metrics)})`);
  for (const key of absent) assert.equal(metrics[key], undefined, key);
  for (const [key, value] of Object.entries(metrics)) {
    if (key.startsWith('acc.') || key.startsWith('acc_val.')) assert.ok(value >= 0 && value <= 1, `${key} = ${value}`);
  }
  for (const i of [0, 1, 2]) assert.ok(metrics[`acc.teacher_${i}`]! > 0.5, `teacher ${i}: ${metrics[`acc.teacher_${i}`]}`);
  assert.ok(metrics['acc.ensemble']! >= metrics['acc.teacher_mean']! - 0.05, `ensemble ${metrics['acc.ensemble']} vs teacher mean ${metrics['acc.teacher_mean']}`);
  assert.equal(metrics['data.test_size'], 500);
}

describe('every stage for every family: cnn, resnet and vit pipelines on a real Temporal dev server', function () {
  this.timeout(300_000);
  let env: TestWorkflowEnvironment;
  let storeRoot: string;
  let mlflowUrl: string;
  let client: MlflowClient;

  before(async () => {
    env = await sharedTemporal();
    storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'families-store-'));
    mlflowUrl = (await sharedMlflow()).url;
    client = new MlflowClient(mlflowUrl);
  });
  after(async () => {
    await fs.rm(storeRoot, { recursive: true, force: true });
  });

  async function run(loaded: LoadedSpec, id: string): Promise<PipelineResult> {
    const worker = await createPipelineWorker({
      temporalAddress: env.address,
      connection: env.nativeConnection,
      taskQueue: 'cpu',
      queuePrefix: PREFIX,
      storeRoot,
      mlflowUrl: loaded.spec.tracking.enabled ? mlflowUrl : null,
    });
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };
    return worker.runUntil(async () => {
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: `${id}-${process.pid}-${Date.now()}`, args: [input] });
      return (await handle.result()) as PipelineResult;
    });
  }

  /** The registered student, read back through a `models:/` teacher source as its family, equals the stored one. */
  async function assertRegisteredStudent(loaded: LoadedSpec, result: PipelineResult, name: string, files: string[]): Promise<void> {
    const version = result.metrics['registry.model_version'];
    assert.ok(version !== undefined, 'a model version was registered');
    const listed = await client.listArtifacts(result.mlflowRunId!, 'student');
    assert.deepEqual(listed.map((f) => f.path.split('/').pop()).sort(), files);
    const cacheDir = await fs.mkdtemp(path.join(os.tmpdir(), 'families-registry-'));
    try {
      const arch = loaded.spec.architecture;
      const read = await resolveTeacherSource(`models:/${name}/${version}`, { baseDir: cacheDir, allowedRoots: [cacheDir], cacheDir, expected: arch, mlflow: client });
      const rt = runtimeOf(arch.family);
      const bytes = await new ArtifactStore(storeRoot).getBytes(result.artifacts.studentFinetuned as `sha256:${string}`);
      assert.deepEqual(rt.serializeParams(read.params), rt.serializeParams(rt.unpack(bytes, arch)));
    } finally {
      await fs.rm(cacheDir, { recursive: true, force: true });
    }
  }

  it('cnn: trained teachers, a tiny zoo, a meta-trained WeightFormer, every baseline, BN-recomputed metrics; the student registered as TF.js', async () => {
    const name = `cnn-student-${randomUUID().slice(0, 8)}`;
    const loaded = tinySpec(`${DATA(200)}
architecture: {family: cnn, channels: [4, 8], hidden: []}
teachers: {count: 3, train: {epochs: 6, batchSize: 25, learningRate: 0.01, checkpointEvery: 20}}
zoo: {count: 4, train: {epochs: 6, batchSize: 25, learningRate: 0.01}}
weightformer: {mode: train, validationTeachers: 2, validationEnsembles: 1, model: {d: 16, heads: 2, blocks: 1}, train: {steps: 20, batchSize: 50, tMin: 2, tMax: 3, evalEvery: 10}}
generate: {method: weightformer}
baselines: {kd: {epochs: 3, batchSize: 50}, dataOnly: {batchSize: 50}}
tracking: {experiment: families-cnn-${randomUUID().slice(0, 8)}, registerModel: ${name}}`, 'families-cnn');
    const started = Date.now();
    const result = await run(loaded, 'families-cnn');
    assert.equal(result.status, 'completed');
    assert.deepEqual(Object.keys(result.stages).sort(), ['baselines', 'evaluate', 'finetune', 'generate', 'teachers', 'track', 'weightformer', 'zoo']);
    const m = result.metrics;
    assertSane(m, [...COMMON, ...WEIGHTFORMER, ...BN_RECOMPUTED, 'acc.teacher_ablation_bn_recomputed']);
    // The WeightFormer's student is a working CNN (chance is 0.1), and fine-tuning does not break it.
    assert.ok(m['acc.student_zero_shot']! > 0.3, `zero-shot ${m['acc.student_zero_shot']}`);
    assert.ok(m['acc.student_finetuned']! > 0.3, `fine-tuned ${m['acc.student_finetuned']}`);
    assert.ok(m['acc.kd']! > 0.5, `kd ${m['acc.kd']}`);
    assert.equal(m['zoo.count'], 4);
    const store = new ArtifactStore(storeRoot);
    for (const ref of [...(result.artifacts.teachers as string[]), result.artifacts.student as string, result.artifacts.avgAligned as string]) {
      assert.equal(storedFamilyOf(await store.getBytes(ref as `sha256:${string}`)), 'cnn');
    }
    await assertRegisteredStudent(loaded, result, name, ['model.json', 'weights.bin']);
    // eslint-disable-next-line no-console
    console.log(`      cnn pipeline: ${((Date.now() - started) / 1000).toFixed(1)} s; zero-shot ${m['acc.student_zero_shot']} (BN recomputed ${m['acc.student_zero_shot_bn_recomputed']}), ` +
      `fine-tuned ${m['acc.student_finetuned']}, aligned average ${m['acc.avg_aligned']} (${m['acc.avg_aligned_bn_recomputed']}), ensemble ${m['acc.ensemble']}`);
  });

  it('resnet: aligned average, fine-tune, baselines, BN-recomputed metrics; the student registered as a safetensors state_dict', async () => {
    const name = `resnet-student-${randomUUID().slice(0, 8)}`;
    const loaded = tinySpec(`${DATA(400)}
architecture: {family: resnet, width: 8, stages: 3}
teachers: {count: 3, train: {epochs: 10, batchSize: 32, learningRate: 0.01, checkpointEvery: 20}}
baselines: {kd: {epochs: 2, batchSize: 50}}
tracking: {experiment: families-resnet-${randomUUID().slice(0, 8)}, registerModel: ${name}}`, 'families-resnet');
    const result = await run(loaded, 'families-resnet');
    assert.equal(result.status, 'completed');
    assert.equal(result.stages.weightformer?.state, 'skipped');
    const m = result.metrics;
    assertSane(m, [...COMMON, ...BN_RECOMPUTED], ['acc.data_only', 'acc.teacher_ablation', 'acc.teacher_ablation_bn_recomputed']);
    // The student is the aligned average: the same model, the same numbers.
    assert.equal(result.artifacts.student, result.artifacts.avgAligned);
    assert.equal(m['acc.student_zero_shot'], m['acc.avg_aligned']);
    assert.equal(m['acc.student_zero_shot_bn_recomputed'], m['acc.avg_aligned_bn_recomputed']);
    assert.equal(storedFamilyOf(await new ArtifactStore(storeRoot).getBytes(result.artifacts.student as `sha256:${string}`)), 'resnet');
    await assertRegisteredStudent(loaded, result, name, ['model.safetensors']);
  });

  it('vit: aligned average, fine-tune and baselines (no batch norm, so no recomputed metrics)', async () => {
    const loaded = tinySpec(`${DATA(400)}
architecture: {family: vit, dim: 16, heads: 2, depth: 1}
teachers: {count: 3, train: {epochs: 10, batchSize: 16, learningRate: 0.003, checkpointEvery: 20}}
baselines: {kd: {epochs: 3, batchSize: 50}}`, 'families-vit');
    const result = await run(loaded, 'families-vit');
    assert.equal(result.status, 'completed');
    const m = result.metrics;
    assertSane(m, COMMON, [...BN_RECOMPUTED, 'acc.teacher_ablation_bn_recomputed', 'acc.data_only']);
    assert.ok(m['acc.kd']! > 0.3, `kd ${m['acc.kd']}`);
    assert.equal(storedFamilyOf(await new ArtifactStore(storeRoot).getBytes(result.artifacts.student as `sha256:${string}`)), 'vit');
  });

  it('accepts the WeightFormer for resnet and vit pipelines (every family is consolidated)', () => {
    for (const family of ['resnet', 'vit']) {
      const loaded = tinySpec(`architecture: {family: ${family}}\nzoo: {count: 6}\nweightformer: {mode: train}\ngenerate: {method: weightformer}`);
      assert.equal(loaded.spec.architecture.family, family);
      assert.equal(loaded.spec.generate.method, 'weightformer');
    }
  });

  /**
   * ResNet and ViT teachers given as PyTorch state_dicts (torchvision / timm names, OIHW conv kernels,
   * (out, in) linear weights, fused qkv) in .safetensors files: imported bit for bit, a tiny zoo trained,
   * a WeightFormer meta-trained for a few steps, the student generated, scored and registered. Random
   * (untrained) teachers keep it fast: what is tested is the path from files to a registered student,
   * not the accuracy.
   */
  for (const family of ['resnet', 'vit'] as const) {
    it(`${family}: teachers from safetensors files through a WeightFormer pipeline; the teachers are stored bit for bit`, async () => {
      const teacherDir = await fs.mkdtemp(path.join(os.tmpdir(), `families-files-${family}-`));
      const previousRoots = process.env.WEIGHTFORMER_ALLOWED_ROOTS;
      process.env.WEIGHTFORMER_ALLOWED_ROOTS = teacherDir;
      try {
        const architecture = family === 'resnet' ? '{family: resnet, width: 4, stages: 2}' : '{family: vit, patchSize: 7, dim: 8, heads: 2, depth: 1}';
        const probe = tinySpec(`architecture: ${architecture}`);
        const arch = probe.spec.architecture;
        const rt = runtimeOf(family);
        const files: string[] = [];
        const teachers = [0, 1, 2].map((i) => rt.init(arch, 50 + i));
        for (const [i, t] of teachers.entries()) {
          files.push(path.join(teacherDir, `teacher-${i}.safetensors`));
          if (family === 'resnet') await writeSafetensorsResnet(files[i]!, t as ResnetParams);
          else await writeSafetensorsVit(files[i]!, t as VitParams);
        }
        const name = `${family}-files-${randomUUID().slice(0, 8)}`;
        const loaded = tinySpec(`${DATA(100)}
architecture: ${architecture}
teachers: {count: 3, source: files, files: ${JSON.stringify(files)}}
zoo: {count: 3, train: {epochs: 1, batchSize: 50, learningRate: 0.01}}
weightformer: {mode: train, validationTeachers: 2, validationEnsembles: 1, model: {d: 8, heads: 2, blocks: 1}, train: {steps: 4, batchSize: 50, tMin: 2, tMax: 2, evalEvery: 2}}
generate: {method: weightformer}
finetune: {epochs: 1, batchSize: 50}
baselines: {include: [teachers, ensemble, avg_aligned]}
tracking: {experiment: families-files-${family}-${randomUUID().slice(0, 8)}, registerModel: ${name}}`, `families-files-${family}`);
        const result = await run(loaded, `families-files-${family}`);
        assert.equal(result.status, 'completed');
        assert.equal(result.stages.weightformer?.state, 'completed');
        const store = new ArtifactStore(storeRoot);
        const refs = result.artifacts.teachers as string[];
        assert.equal(refs.length, 3);
        for (const [i, ref] of refs.entries()) {
          const stored = rt.unpack(await store.getBytes(ref as `sha256:${string}`), arch);
          assert.deepEqual(rt.serializeParams(stored), rt.serializeParams(teachers[i]!), `teacher ${i} imported bit for bit`);
        }
        assert.equal(storedFamilyOf(await store.getBytes(result.artifacts.student as `sha256:${string}`)), family);
        const m = result.metrics;
        for (const key of ['acc.teacher_0', 'acc.ensemble', 'acc.avg_aligned', 'acc.student_zero_shot', 'acc.student_finetuned', 'weightformer.steps']) {
          assert.ok(Number.isFinite(m[key]), `${key} = ${m[key]}`);
        }
        assert.equal(m['weightformer.steps'], 4);
        await assertRegisteredStudent(loaded, result, name, ['model.safetensors']);
      } finally {
        if (previousRoots === undefined) delete process.env.WEIGHTFORMER_ALLOWED_ROOTS;
        else process.env.WEIGHTFORMER_ALLOWED_ROOTS = previousRoots;
        await fs.rm(teacherDir, { recursive: true, force: true });
      }
    });
  }
});
