import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { WorkflowFailedError } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from './helpers/temporal';
import { tinySpec } from './helpers/specs';
import { createPipelineWorker } from '../src/worker/worker';
import { ArtifactStore } from '../src/store/store';
import { tfjsArtifactToParams, writeTfjsModelDir } from '../src/ml/tfjs-format';
import { writeSafetensorsTeacher } from '../src/ml/formats/torch-mlp';
import { SpecError } from '../src/util/errors';
import type { PipelineInput, PipelineResult } from '../workflows/types';
import { taskQueueName } from '../workflows/queues';
import type { LoadedSpec } from '../src/spec/types';

const PREFIX = 'teacher-files-test';
const QUEUE = taskQueueName('cpu', PREFIX);

describe('teachers read from files (safetensors, TF.js) instead of trained', function () {
  this.timeout(240_000);
  let env: TestWorkflowEnvironment;
  let storeRoot: string;
  let teacherDir: string;
  const previousRoots = process.env.WEIGHTFORMER_ALLOWED_ROOTS;

  before(async () => {
    env = await sharedTemporal();
    storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'teacher-files-store-'));
    teacherDir = await fs.mkdtemp(path.join(os.tmpdir(), 'teacher-files-'));
    process.env.WEIGHTFORMER_ALLOWED_ROOTS = teacherDir;
  });
  after(async () => {
    if (previousRoots === undefined) delete process.env.WEIGHTFORMER_ALLOWED_ROOTS;
    else process.env.WEIGHTFORMER_ALLOWED_ROOTS = previousRoots;
    await fs.rm(teacherDir, { recursive: true, force: true });
  });

  async function run(loaded: LoadedSpec, id: string): Promise<PipelineResult> {
    const worker = await createPipelineWorker({
      temporalAddress: env.address,
      connection: env.nativeConnection,
      taskQueue: 'cpu',
      queuePrefix: PREFIX,
      storeRoot,
      mlflowUrl: null,
    });
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };
    return worker.runUntil(async () => {
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: `${id}-${process.pid}-${Date.now()}`, args: [input] });
      return (await handle.result()) as PipelineResult;
    });
  }

  it('consolidates teachers exported by one run, as PyTorch safetensors and TF.js, into the same numbers', async () => {
    const trained = await run(tinySpec(), 'trained');
    const store = new ArtifactStore(storeRoot);
    const refs = trained.artifacts.teachers as string[];
    const files: string[] = [];
    for (const [i, ref] of refs.entries()) {
      const params = tfjsArtifactToParams(await store.getBytes(ref as `sha256:${string}`));
      // Alternate the formats, so one ensemble mixes both.
      if (i % 2 === 0) {
        files.push(path.join(teacherDir, `t${i}.safetensors`));
        await writeSafetensorsTeacher(files[i]!, params);
      } else {
        files.push(path.join(teacherDir, `t${i}`));
        await writeTfjsModelDir(files[i]!, params);
      }
    }
    const imported = await run(tinySpec(`teachers: {count: ${files.length}, source: files, files: ${JSON.stringify(files)}}`), 'imported');
    assert.equal(imported.status, 'completed');
    // Bit-identical teachers: the same content addresses, so the same consolidation and the same numbers.
    assert.deepEqual(imported.artifacts.teachers, refs);
    for (const key of ['acc.teacher_0', 'acc.teacher_1', 'acc.teacher_2', 'acc.ensemble', 'acc.avg_aligned', 'acc.student_zero_shot', 'acc.student_finetuned']) {
      assert.equal(imported.metrics[key], trained.metrics[key], key);
    }
  });

  it('fails the teachers stage without retrying on a teacher of another architecture', async () => {
    const wrong = path.join(teacherDir, 'wrong.safetensors');
    await writeSafetensorsTeacher(wrong, {
      activation: 'relu',
      layers: [
        { inSize: 784, outSize: 8, w: new Float32Array(784 * 8), b: new Float32Array(8) },
        { inSize: 8, outSize: 10, w: new Float32Array(80), b: new Float32Array(10) },
      ],
    });
    const loaded = tinySpec(`teachers: {count: 1, source: files, files: [${JSON.stringify(wrong)}]}\ngenerate: {method: aligned-average}`);
    const started = Date.now();
    await assert.rejects(run(loaded, 'wrong-arch'), (e: Error) => {
      assert.ok(e instanceof WorkflowFailedError, String(e));
      const text = JSON.stringify(e.cause, Object.getOwnPropertyNames(e.cause ?? {}));
      assert.match(text, /wrong\.safetensors|hidden|architecture|shape/i);
      return true;
    });
    // Non-retryable: it fails at once rather than after the retry policy's backoff.
    assert.ok(Date.now() - started < 60_000);
  });

  it('refuses teacher paths outside the allowed roots and other URL schemes, positioned in the file', () => {
    const errorOf = (files: string[]): SpecError => {
      try {
        tinySpec(`teachers: {count: ${files.length}, source: files, files: ${JSON.stringify(files)}}`);
      } catch (e) {
        if (e instanceof SpecError) return e;
        throw e;
      }
      return assert.fail('the pipeline loaded');
    };
    const outside = errorOf(['/etc/passwd']).diagnostics;
    assert.equal(outside[0]?.path, '/teachers/files/0');
    assert.match(outside[0]!.message, /outside the allowed roots/);
    const schemes = errorOf(['file:///etc/passwd', 'ftp://example.com/t.safetensors']).diagnostics.map((d) => `${d.path}: ${d.message}`);
    assert.equal(schemes.length, 2);
    assert.match(schemes[0]!, /^\/teachers\/files\/0: .*scheme file:, which is not allowed/);
    assert.match(schemes[1]!, /^\/teachers\/files\/1: .*scheme ftp:/);
    assert.match(errorOf(['https://user:secret@example.com/t.safetensors']).message, /credentials/);
  });

  it('asks for as many files as teachers', () => {
    assert.throws(() => tinySpec('teachers: {count: 3, source: files, files: [a.safetensors]}'), /\/teachers\/count: must equal the number of teachers.files \(1\), got 3/);
    assert.throws(() => tinySpec('teachers: {count: 1, source: files}'), /teachers.source 'files' reads its teachers from teachers.files/);
  });
});
