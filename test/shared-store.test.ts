import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { liveActivity, sharedTemporal } from './helpers/temporal';
import { tinySpec } from './helpers/specs';
import { BIN } from './helpers/cli';
import { ArtifactStore, type ArtifactRef } from '../src/store/store';
import { taskQueueName } from '../workflows/queues';
import type { PipelineInput, PipelineResult } from '../workflows/types';

/*
 * Resume on another machine: worker A (its own working directory and temp dir) starts a stage and dies;
 * its directories are then deleted, as if the machine were gone. Worker B (other working directory, other
 * temp dir) shares only WEIGHTFORMER_STORE with A, and resumes the stage from A's checkpoint there.
 */

const PREFIX = 'shared-store-test';
const CHECKPOINT_EVERY = 200;

function startMachine(name: string, home: string, store: string, address: string): ChildProcess & { output: () => string } {
  const child = spawn(process.execPath, [BIN, 'worker', '--queue', 'cpu'], {
    cwd: home,
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: address,
      WEIGHTFORMER_STORE: store,
      WEIGHTFORMER_QUEUE_PREFIX: PREFIX,
      WEIGHTFORMER_WORKER_IDENTITY: name,
      MLFLOW_TRACKING_URI: '',
      TMPDIR: path.join(home, 'tmp'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  return Object.assign(child, { output: () => output });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

/** Every file under a folder, relative to it. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}


describe('shared store: a stage resumes on another machine', function () {
  this.timeout(600_000);
  let env: TestWorkflowEnvironment;
  let root: string;
  const machines: ChildProcess[] = [];

  before(async () => {
    env = await sharedTemporal();
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'shared-store-test-'));
  });

  after(async () => {
    for (const m of machines) await stop(m);
    await fs.rm(root, { recursive: true, force: true });
  });

  it('worker B, sharing only the store, resumes the stage worker A checkpointed there', async () => {
    const store = path.join(root, 'shared');
    const homeA = path.join(root, 'machine-a');
    const homeB = path.join(root, 'machine-b');
    for (const dir of [store, path.join(homeA, 'tmp'), path.join(homeB, 'tmp')]) await fs.mkdir(dir, { recursive: true });

    const loaded = tinySpec(`teachers: {count: 2, train: {epochs: 250, batchSize: 10, checkpointEvery: ${CHECKPOINT_EVERY}}}
stages: {default: {heartbeatTimeout: '15s', retry: {initialInterval: '500ms', maximumAttempts: 5}}}`, 'test-shared-store');
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };

    const a = startMachine('machine-a', homeA, store, env.address);
    machines.push(a);
    const handle = await env.client.workflow.start('pipeline', { taskQueue: taskQueueName('cpu', PREFIX), workflowId: `shared-store-${Date.now()}`, args: [input] });

    // A checkpoints teacher 2 into the store; then machine A disappears, with its directories.
    let checkpointRef: ArtifactRef | undefined;
    let stepAtKill = 0;
    while (!checkpointRef) {
      const live = await liveActivity(handle);
      const checkpoint = live.heartbeat?.checkpoint as { unit?: string; resume?: { state?: ArtifactRef } } | undefined;
      if (checkpoint?.unit === 'trainTeacher:teacher:1' && checkpoint.resume?.state) {
        checkpointRef = checkpoint.resume.state;
        stepAtKill = live.heartbeat!.step;
        await stop(a);
      } else if (!live.running) {
        assert.fail(`pipeline ended before a checkpoint of teacher 2; machine A:\n${a.output()}`);
      } else await new Promise((r) => setTimeout(r, 100));
    }
    await fs.rm(homeA, { recursive: true, force: true });
    const shared = new ArtifactStore(store);
    assert.ok(await shared.has(checkpointRef), `checkpoint ${checkpointRef} is not in the shared store`);

    const b = startMachine('machine-b', homeB, store, env.address);
    machines.push(b);
    const resumedSteps: number[] = [];
    for (;;) {
      const live = await liveActivity(handle);
      if (!live.running || live.activity !== 'trainTeachers') break;
      if ((live.attempt ?? 1) >= 2 && live.heartbeat && live.heartbeat.step !== stepAtKill) resumedSteps.push(live.heartbeat.step);
      await new Promise((r) => setTimeout(r, 100));
    }
    const result = (await handle.result()) as PipelineResult;
    assert.equal(result.status, 'completed');
    // B continued teacher 2 from A's checkpoint (steps from the checkpoint on), not from the start.
    assert.ok(resumedSteps.length > 0, 'no heartbeat of the resumed attempt was seen');
    assert.ok(Math.min(...resumedSteps) >= CHECKPOINT_EVERY, `restarted instead of resuming: steps ${resumedSteps.slice(0, 10)}`);

    // The history names B as the worker of the stage's last attempt, and of every stage after it.
    const events = (await handle.fetchHistory()).events ?? [];
    const started = events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!);
    assert.ok(started.length >= 4);
    assert.ok(started.every((s) => s.identity === 'machine-b'), started.map((s) => `${s.identity}#${s.attempt}`).join(' '));
    assert.ok(started[0]!.attempt! >= 2, `teachers stage attempt ${started[0]!.attempt}`);
    // Every output the workflow returns is in the shared store, and B kept nothing of its own.
    for (const ref of Object.values(result.artifacts).flat()) assert.ok(await shared.has(ref as ArtifactRef), `${String(ref)} not in the shared store`);
    assert.deepEqual(await filesUnder(homeB), [], 'machine B wrote files outside the shared store');
  });
});
