import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { WorkflowHandle } from '@temporalio/client';
import { liveActivity, sharedTemporal } from './helpers/temporal';
import { tinySpec } from './helpers/specs';
import { BIN } from './helpers/cli';
import { taskQueueName } from '../workflows/queues';
import type { PipelineInput, PipelineResult } from '../workflows/types';

/*
 * Many workers on one real Temporal dev server, each a separate `weightformer worker` process with its own
 * working directory and temp dir, all sharing one store folder (as machines would share a volume).
 */

const PREFIX = 'workers-test';
const CHECKPOINT_EVERY = 200;

interface WorkerProcess {
  identity: string;
  child: ChildProcess;
  output(): string;
}

function startWorker(queue: 'cpu' | 'gpu', identity: string, store: string, home: string, address: string): WorkerProcess {
  const tmp = path.join(home, 'tmp');
  const child = spawn(process.execPath, [BIN, 'worker', '--queue', queue], {
    cwd: home,
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: address,
      WEIGHTFORMER_STORE: store,
      WEIGHTFORMER_QUEUE_PREFIX: PREFIX,
      WEIGHTFORMER_WORKER_IDENTITY: identity,
      MLFLOW_TRACKING_URI: '',
      TMPDIR: tmp,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  return { identity, child, output: () => output };
}

async function kill(worker: WorkerProcess): Promise<void> {
  if (worker.child.exitCode !== null || worker.child.signalCode !== null) return;
  const exited = new Promise((r) => worker.child.once('exit', r));
  worker.child.kill('SIGKILL');
  await exited;
}

/** One activity execution as the workflow history records it (the final attempt of each activity). */
interface ActivityRun {
  workflowId: string;
  type: string;
  queue: string;
  identity: string;
  attempt: number;
  scheduledMs: number;
  startedMs: number;
  closedMs: number;
}

const millis = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => Number(t?.seconds ?? 0) * 1000 + Math.floor((t?.nanos ?? 0) / 1e6);

async function activityRuns(handle: WorkflowHandle): Promise<ActivityRun[]> {
  const events = (await handle.fetchHistory()).events ?? [];
  const scheduled = new Map<number, { type: string; queue: string; at: number }>();
  const started = new Map<number, { identity: string; attempt: number; at: number }>();
  const runs: ActivityRun[] = [];
  for (const e of events) {
    const id = Number(e.eventId);
    if (e.activityTaskScheduledEventAttributes) {
      const a = e.activityTaskScheduledEventAttributes;
      scheduled.set(id, { type: a.activityType!.name!, queue: a.taskQueue!.name!, at: millis(e.eventTime) });
    } else if (e.activityTaskStartedEventAttributes) {
      const a = e.activityTaskStartedEventAttributes;
      started.set(id, { identity: a.identity!, attempt: a.attempt!, at: millis(e.eventTime) });
    } else if (e.activityTaskCompletedEventAttributes) {
      const a = e.activityTaskCompletedEventAttributes;
      const s = scheduled.get(Number(a.scheduledEventId))!;
      const st = started.get(Number(a.startedEventId))!;
      runs.push({ workflowId: handle.workflowId, type: s.type, queue: s.queue, identity: st.identity, attempt: st.attempt, scheduledMs: s.at, startedMs: st.at, closedMs: millis(e.eventTime) });
    }
  }
  return runs;
}

const overlaps = (a: ActivityRun, b: ActivityRun) => a.startedMs < b.closedMs && b.startedMs < a.closedMs;


describe('many worker processes sharing one store', function () {
  this.timeout(600_000);
  let env: TestWorkflowEnvironment;
  let root: string;
  let store: string;
  const workers: WorkerProcess[] = [];
  const worker = (identity: string) => workers.find((w) => w.identity === identity)!;

  before(async () => {
    env = await sharedTemporal();
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'workers-test-'));
    store = path.join(root, 'shared-store');
    await fs.mkdir(store);
    for (const [queue, identity] of [['cpu', 'cpu-a'], ['cpu', 'cpu-b'], ['gpu', 'gpu-1']] as const) {
      const home = path.join(root, identity);
      await fs.mkdir(path.join(home, 'tmp'), { recursive: true });
      workers.push(startWorker(queue, identity, store, home, env.address));
    }
  });

  after(async () => {
    // Never leave a worker polling the shared server, whatever happened.
    for (const w of workers) await kill(w);
    await fs.rm(root, { recursive: true, force: true });
  });

  const start = (input: PipelineInput, id: string) =>
    env.client.workflow.start('pipeline', { taskQueue: taskQueueName('cpu', PREFIX), workflowId: `${id}-${Date.now()}`, args: [input] });

  it('spreads stages over both CPU workers and runs one GPU stage at a time on the GPU worker', async () => {
    // Two pipelines at once; both train their teachers on the gpu queue, so those two stages contend for
    // the one GPU worker, while the CPU stages of one pipeline run beside the other's GPU stage.
    const loaded = tinySpec(`teachers: {count: 3, train: {epochs: 20, batchSize: 20, checkpointEvery: 50}}
stages: {teachers: {resources: {gpu: true}}, finetune: {resources: {gpu: true}}}`, 'test-workers-spread');
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };
    const handles = await Promise.all([start(input, 'workers-spread-1'), start(input, 'workers-spread-2')]);
    const results = (await Promise.all(handles.map((h) => h.result()))) as PipelineResult[];
    for (const r of results) assert.equal(r.status, 'completed');
    // Same spec and seed on different workers: the same numbers.
    assert.deepEqual(results[0]!.artifacts.teachers, results[1]!.artifacts.teachers);

    const runs = (await Promise.all(handles.map(activityRuns))).flat();
    const gpuQueue = taskQueueName('gpu', PREFIX);
    const gpuRuns = runs.filter((r) => r.queue === gpuQueue);
    const cpuRuns = runs.filter((r) => r.queue !== gpuQueue);
    const table = runs.map((r) => `${r.workflowId.slice(0, 16)} ${r.type} ${r.queue} ${r.identity} #${r.attempt} ${r.startedMs}-${r.closedMs}`).join('\n');
    assert.equal(gpuRuns.length, 4, table);
    assert.ok(gpuRuns.every((r) => r.identity === 'gpu-1'), table);
    assert.ok(cpuRuns.every((r) => r.identity === 'cpu-a' || r.identity === 'cpu-b'), table);
    // Both CPU workers took stages.
    assert.deepEqual(new Set(cpuRuns.map((r) => r.identity)), new Set(['cpu-a', 'cpu-b']), table);
    // No two GPU stages overlapped in time, though one was waiting for the GPU (scheduled before another
    // finished, started after it), so the one-at-a-time rule was put to the test...
    for (const [i, a] of gpuRuns.entries()) {
      for (const b of gpuRuns.slice(i + 1)) assert.ok(!overlaps(a, b), `GPU stages overlap:\n${table}`);
    }
    const contended = gpuRuns.some((a) => gpuRuns.some((b) => b !== a && a.scheduledMs < b.closedMs && b.startedMs < a.startedMs));
    assert.ok(contended, `no GPU stage ever waited for another:\n${table}`);
    // ...while stages did run side by side across the deployment (so the check above can see overlap).
    assert.ok(cpuRuns.some((c) => gpuRuns.some((g) => g.workflowId !== c.workflowId && overlaps(c, g))), `nothing ran concurrently:\n${table}`);
  });

  it('hands a killed worker’s stage to the other worker, which resumes it from the last checkpoint', async () => {
    // The heartbeat timeout is how long the server waits before handing the stage on; it is generous because
    // a loaded test machine can delay a live worker's heartbeats by seconds.
    const loaded = tinySpec(`teachers: {count: 2, train: {epochs: 250, batchSize: 10, checkpointEvery: ${CHECKPOINT_EVERY}}}
stages: {default: {heartbeatTimeout: '15s', retry: {initialInterval: '500ms', maximumAttempts: 5}}}`, 'test-workers-kill');
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };
    const handle = await start(input, 'workers-kill');

    // Wait for a checkpoint of the second teacher, then kill whichever CPU worker runs the stage.
    let victim: WorkerProcess | undefined;
    let stepAtKill = 0;
    while (!victim) {
      const live = await liveActivity(handle);
      const checkpoint = live.heartbeat?.checkpoint as { unit?: string } | undefined;
      if (checkpoint?.unit === 'trainTeacher:teacher:1') {
        const identity = live.identity ?? '';
        victim = workers.find((w) => w.identity === identity);
        assert.ok(victim && identity.startsWith('cpu-'), `stage runs on '${identity}'`);
        stepAtKill = live.heartbeat!.step;
        await kill(victim);
      } else if (!live.running) {
        const failure = await handle.result().then(() => 'none', (err: Error) => `${err.message}: ${(err.cause as Error | undefined)?.message ?? ''} ${((err.cause as Error | undefined)?.cause as Error | undefined)?.message ?? ''}`);
        assert.fail(`pipeline ended before a checkpoint of teacher 2: ${failure}\n${workers.map((w) => `${w.identity}: ${w.output()}`).join('\n')}`);
      } else await new Promise((r) => setTimeout(r, 100));
    }
    const survivor = victim.identity === 'cpu-a' ? worker('cpu-b') : worker('cpu-a');

    // The retried attempt starts from the checkpoint: its steps never fall back below the first checkpoint.
    const resumedSteps: number[] = [];
    for (;;) {
      const live = await liveActivity(handle);
      if (!live.running || live.activity !== 'trainTeachers') break;
      if ((live.attempt ?? 1) >= 2 && live.heartbeat && live.heartbeat.step !== stepAtKill) resumedSteps.push(live.heartbeat.step);
      await new Promise((r) => setTimeout(r, 100));
    }
    const result = (await handle.result()) as PipelineResult;
    assert.equal(result.status, 'completed');
    assert.ok(resumedSteps.length > 0, 'no heartbeat of the resumed attempt was seen');
    assert.ok(Math.min(...resumedSteps) >= CHECKPOINT_EVERY, `resumed attempt restarted: steps ${resumedSteps.slice(0, 10)}; killed at ${stepAtKill}`);

    const runs = await activityRuns(handle);
    const teachers = runs.find((r) => r.type === 'trainTeachers')!;
    assert.ok(teachers.attempt >= 2, `attempt ${teachers.attempt}`);
    assert.equal(teachers.identity, survivor.identity);
    // Every later stage ran on the survivor too: the killed one is gone.
    assert.ok(runs.filter((r) => r.type !== 'trainTeachers' && !r.queue.endsWith('-gpu')).every((r) => r.identity === survivor.identity));
  });

  it('a worker stopped with SIGTERM (docker stop, scale-down) fails its stage at once and another resumes it', async () => {
    // The previous test may have left one CPU worker; a new one joins, as a replacement container would.
    const isAlive = (w: WorkerProcess) => w.identity.startsWith('cpu-') && w.child.exitCode === null && w.child.signalCode === null;
    if (workers.filter(isAlive).length < 2) {
      const home = path.join(root, 'cpu-c');
      await fs.mkdir(path.join(home, 'tmp'), { recursive: true });
      workers.push(startWorker('cpu', 'cpu-c', store, home, env.address));
    }
    const alive = workers.filter(isAlive);

    // The attempt's failure tells a shutdown hand-over from a heartbeat timeout. (The
    // timeout also paces heartbeats: the SDK sends them at most every 80% of it, so it cannot be huge here.)
    const loaded = tinySpec(`teachers: {count: 2, train: {epochs: 250, batchSize: 10, checkpointEvery: ${CHECKPOINT_EVERY}}}
stages: {default: {heartbeatTimeout: '15s', retry: {initialInterval: '500ms', maximumAttempts: 5}}}`, 'test-workers-sigterm');
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };
    const handle = await start(input, 'workers-sigterm');
    let stopped: WorkerProcess | undefined;
    let stepAtStop = 0;
    while (!stopped) {
      const live = await liveActivity(handle);
      const checkpoint = live.heartbeat?.checkpoint as { unit?: string } | undefined;
      if (checkpoint?.unit === 'trainTeacher:teacher:1') {
        const identity = live.identity ?? '';
        stopped = alive.find((w) => w.identity === identity);
        assert.ok(stopped, `stage runs on '${identity}'`);
        stepAtStop = live.heartbeat!.step;
        const exited = new Promise<number | null>((r) => stopped!.child.once('exit', (code) => r(code)));
        stopped.child.kill('SIGTERM');
        assert.equal(await exited, 0, `worker did not exit cleanly:\n${stopped.output()}`);
      } else if (!live.running) {
        const failure = await handle.result().then(() => 'none', (err: Error) => `${err.message}: ${(err.cause as Error | undefined)?.message ?? ''}`);
        assert.fail(`pipeline ended before a checkpoint of teacher 2: ${failure}`);
      } else await new Promise((r) => setTimeout(r, 100));
    }

    // The stopped worker reported the attempt failed because it shut down (not a timeout), and the retry
    // continued from the checkpoint.
    const failures = new Set<string>();
    const resumedSteps: number[] = [];
    for (;;) {
      const live = await liveActivity(handle);
      if (!live.running || live.activity !== 'trainTeachers') break;
      if (live.lastFailure) failures.add(live.lastFailure);
      if ((live.attempt ?? 1) >= 2 && live.heartbeat && live.heartbeat.step !== stepAtStop) resumedSteps.push(live.heartbeat.step);
      await new Promise((r) => setTimeout(r, 100));
    }
    const result = (await handle.result()) as PipelineResult;
    assert.equal(result.status, 'completed');
    // The SDK's words for a shutdown ("Worker is shutting down…"), not "activity Heartbeat timeout".
    assert.equal(failures.size, 1, [...failures].join(' | '));
    assert.match([...failures][0]!, /shutting down/i);
    assert.ok(resumedSteps.length > 0 && Math.min(...resumedSteps) >= CHECKPOINT_EVERY, `steps after the stop: ${resumedSteps.slice(0, 10)}`);
    const teachers = (await activityRuns(handle)).find((r) => r.type === 'trainTeachers')!;
    assert.notEqual(teachers.identity, stopped.identity);
    assert.ok(alive.some((w) => w.identity === teachers.identity), teachers.identity);
    assert.equal(teachers.attempt, 2);
  });
});
