import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { ActivityFailure, ApplicationFailure, TimeoutFailure, WorkflowFailedError } from '@temporalio/client';
import { TimeoutType } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from './helpers/temporal';
import { tinySpec } from './helpers/specs';
import { expandMatrix } from '../src/spec/load';
import { createPipelineWorker, workflowBundle } from '../src/worker/worker';
import { createActivities } from '../activities';
import { ArtifactStore } from '../src/store/store';
import { InputError, NON_RETRYABLE_ERROR_TYPES } from '../src/util/errors';
import { MLFLOW_NON_RETRYABLE_ERROR_TYPES } from '../src/tracking/errors';
import { NON_RETRYABLE } from '../workflows/pipeline';
import { readLiveStatus } from '../src/cli/follow';
import type { PipelineInput, PipelineResult } from '../workflows/types';
import { taskQueueName } from '../workflows/queues';
import type { LoadedSpec } from '../src/spec/types';

let counter = 0;
// Own task queues: other suites' workers on the shared dev server never take these tasks.
const PREFIX = 'workflow-test';
const QUEUE = taskQueueName('cpu', PREFIX);
function input(loaded: LoadedSpec, noCache = false): PipelineInput {
  return { spec: loaded.spec, specHash: loaded.hash, noCache, queuePrefix: PREFIX };
}
function workflowId(prefix: string): string {
  return `${prefix}-${process.pid}-${Date.now()}-${counter++}`;
}

describe('pipeline workflow on a real Temporal dev server', function () {
  this.timeout(240_000);
  let env: TestWorkflowEnvironment;
  let storeRoot: string;

  before(async () => {
    env = await sharedTemporal();
    storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'wf-store-'));
  });

  async function withCpuWorker<T>(fn: (worker: Worker) => Promise<T>): Promise<T> {
    const worker = await createPipelineWorker({
      temporalAddress: env.address,
      connection: env.nativeConnection,
      taskQueue: 'cpu',
      queuePrefix: PREFIX,
      storeRoot,
      mlflowUrl: null,
    });
    return worker.runUntil(() => fn(worker));
  }

  it('lists the same non-retryable error types in the workflow as in the library', () => {
    for (const name of [...NON_RETRYABLE_ERROR_TYPES, ...MLFLOW_NON_RETRYABLE_ERROR_TYPES]) assert.ok(NON_RETRYABLE.includes(name), name);
  });

  it('runs every stage, reports progress, and returns metrics and references (then a cache hit)', async () => {
    const loaded = tinySpec();
    const first = await withCpuWorker(async () => {
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: workflowId('full'), args: [input(loaded, true)] });
      const result = (await handle.result()) as PipelineResult;
      const live = await readLiveStatus(handle);
      assert.equal(live.progress?.state, 'completed');
      return result;
    });
    assert.equal(first.status, 'completed');
    for (const stage of ['teachers', 'generate', 'finetune', 'baselines', 'evaluate'] as const) {
      assert.equal(first.stages[stage]?.state, 'completed', stage);
    }
    assert.equal(first.stages.zoo?.state, 'skipped');
    assert.equal(first.stages.track?.state, 'skipped');
    assert.match(String(first.artifacts.student), /^sha256:[0-9a-f]{64}$/);
    assert.equal((first.artifacts.teachers as string[]).length, 3);
    for (const key of ['acc.teacher_mean', 'acc.ensemble', 'acc.avg_naive', 'acc.avg_aligned', 'acc.student_zero_shot', 'acc.student_finetuned']) {
      const v = first.metrics[key];
      assert.ok(v !== undefined && v > 0.1 && v <= 1, `${key}=${v}`);
    }
    // Same spec again: every stage is served from the store and the numbers are identical.
    const second = await withCpuWorker(async () =>
      (await env.client.workflow.execute('pipeline', { taskQueue: QUEUE, workflowId: workflowId('cached'), args: [input(loaded)] })) as PipelineResult,
    );
    for (const stage of ['teachers', 'generate', 'finetune', 'baselines', 'evaluate'] as const) {
      assert.equal(second.stages[stage]?.state, 'cached', stage);
    }
    assert.deepEqual(second.metrics['acc.student_finetuned'], first.metrics['acc.student_finetuned']);
  });

  /** A worker whose teachers stage is replaced by `trainTeachers`: to drive the real server's retry policy. */
  async function withFaultyTeachers<T>(trainTeachers: () => Promise<never>, fn: () => Promise<T>): Promise<T> {
    const store = new ArtifactStore(storeRoot);
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: QUEUE,
      workflowBundle: await workflowBundle(),
      activities: { ...createActivities({ store, tracker: null }), trainTeachers },
    });
    return worker.runUntil(fn);
  }

  it('fails bad input at once with a non-retryable error (one attempt)', async () => {
    const loaded = tinySpec("stages: {teachers: {retry: {maximumAttempts: 5, initialInterval: '100ms'}}}", 'test-nonretry');
    let attempts = 0;
    const err = await withFaultyTeachers(
      async () => {
        attempts++;
        throw new InputError('teacher file is truncated');
      },
      () => env.client.workflow.execute('pipeline', { taskQueue: QUEUE, workflowId: workflowId('nonretry'), args: [input(loaded)] }).then(() => assert.fail('expected failure'), (e: unknown) => e),
    );
    assert.equal(attempts, 1);
    assert.ok(err instanceof WorkflowFailedError);
    assert.ok(err.cause instanceof ActivityFailure);
    assert.ok(err.cause.cause instanceof ApplicationFailure);
    assert.equal(err.cause.cause.type, 'InputError');
    assert.equal(err.cause.cause.nonRetryable, false, 'non-retryable through the policy, not by the thrower');
    assert.match(err.cause.cause.message, /teacher file is truncated/);
  });

  it('retries other failures up to the stage policy from the spec', async () => {
    const loaded = tinySpec("stages: {teachers: {retry: {maximumAttempts: 3, initialInterval: '100ms'}}}", 'test-retry');
    let attempts = 0;
    const err = await withFaultyTeachers(
      async () => {
        attempts++;
        throw new Error('transient');
      },
      () => env.client.workflow.execute('pipeline', { taskQueue: QUEUE, workflowId: workflowId('retry'), args: [input(loaded)] }).then(() => assert.fail('expected failure'), (e: unknown) => e),
    );
    assert.equal(attempts, 3);
    assert.ok(err instanceof WorkflowFailedError);
  });

  it('fails a stage clearly when no worker serves its queue (schedule-to-start timeout)', async () => {
    const loaded = tinySpec("stages: {teachers: {resources: {gpu: true}, scheduleToStartTimeout: '2s'}}", 'test-no-gpu');
    await withCpuWorker(async () => {
      const err = await env.client.workflow
        .execute('pipeline', { taskQueue: QUEUE, workflowId: workflowId('s2s'), args: [input(loaded)] })
        .then(() => assert.fail('expected failure'), (e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError);
      assert.ok(err.cause instanceof ActivityFailure);
      assert.ok(err.cause.cause instanceof TimeoutFailure);
      assert.equal(err.cause.cause.timeoutType, TimeoutType.SCHEDULE_TO_START);
    });
  });

  it('cancels the running stage on the cancel signal', async () => {
    const loaded = tinySpec('teachers: {count: 3, train: {epochs: 200, batchSize: 10, checkpointEvery: 50}}', 'test-cancel');
    await withCpuWorker(async () => {
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: workflowId('cancel'), args: [input(loaded, true)] });
      // Wait until the teachers stage is heartbeating progress, then cancel.
      for (let i = 0; i < 120; i++) {
        const live = await readLiveStatus(handle);
        if (live.heartbeat && live.heartbeat.step > 0) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      await handle.signal('cancel', 'test');
      const err = await handle.result().then(() => assert.fail('expected cancellation'), (e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError, String(err));
      const live = await readLiveStatus(handle);
      assert.equal(live.progress?.stages.teachers?.state, 'cancelled');
      assert.equal(live.progress?.state, 'cancelled');
    });
  });
});

describe('sweeps (matrix) on a real Temporal dev server', function () {
  this.timeout(240_000);

  it('runs each matrix cell as a child workflow and collects their metrics', async () => {
    const env = await sharedTemporal();
    const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'sweep-store-'));
    const loaded = tinySpec('matrix: {seed: [1, 2]}\nteachers: {count: 2, train: {epochs: 1, batchSize: 50}}', 'test-sweep');
    const cells = expandMatrix(loaded.spec);
    assert.equal(cells.length, 2);
    const worker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot, mlflowUrl: null });
    const id = `sweep-${Date.now()}`;
    const result = (await worker.runUntil(
      env.client.workflow.execute('pipeline', { taskQueue: QUEUE, workflowId: id, args: [{ spec: loaded.spec, specHash: loaded.hash, noCache: false, cells, queuePrefix: PREFIX }] }),
    )) as PipelineResult;
    assert.equal(result.cells?.length, 2);
    assert.deepEqual(result.cells!.map((c) => c.cell), [{ seed: 1 }, { seed: 2 }]);
    assert.deepEqual(result.cells!.map((c) => c.workflowId), [`${id}-cell-0`, `${id}-cell-1`]);
    // Different seeds train different teachers.
    assert.notEqual(result.cells![0]!.metrics['acc.teacher_0'], result.cells![1]!.metrics['acc.teacher_0']);
    const child = await env.client.workflow.getHandle(`${id}-cell-1`).describe();
    assert.equal(child.status.name, 'COMPLETED');
  });
});
