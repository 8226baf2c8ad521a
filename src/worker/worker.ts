import * as path from 'node:path';
import { NativeConnection, Worker, bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { createActivities } from '../../activities';
import { ArtifactStore } from '../store/store';
import { MlflowClient } from '../tracking/mlflow';
import { StageTracker } from '../../activities/tracking';
import { taskQueueName, type QueueKind } from '../../workflows/queues';

export type TaskQueue = QueueKind;

export interface WorkerOptions {
  temporalAddress: string;
  namespace?: string;
  taskQueue: TaskQueue;
  /** Serve `<prefix>-<taskQueue>` (see workflows/queues.ts). */
  queuePrefix?: string;
  storeRoot: string;
  /** MLflow server; null disables tracking on this worker. */
  mlflowUrl: string | null;
  /**
   * The name this worker gives Temporal (shown in history on each activity it ran). Default: the SDK's
   * `<pid>@<hostname>`, unique per process and per container.
   */
  identity?: string;
  /**
   * The most a heartbeat is held back (Temporal duration, default `2s`): how stale the server's checkpoint
   * reference and the shown progress may be, traded against heartbeat traffic to the server.
   */
  heartbeatInterval?: string;
  /**
   * How often the worker replays the store's tracking outbox on its own (Temporal duration, default `30s`):
   * records buffered while MLflow was down reach it once it is back, without waiting for a tracking call.
   */
  outboxReplayInterval?: string;
  /** Reuse an existing connection (in-process workers share the client's). */
  connection?: NativeConnection;
}

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;

/** Bundles the workflow code once per process (webpack takes seconds; every worker reuses the bundle). */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflowCode({
    workflowsPath: path.resolve(__dirname, '../../workflows/index.js'),
    logger: { trace() {}, debug() {}, info() {}, warn() {}, error() {}, log() {} } as never,
  });
  return bundle;
}

/**
 * How many stages one worker runs at once. A GPU stage holds the whole device (TF.js webgpu allocates
 * as it likes and two jobs would contend for memory), so a `gpu` worker takes one at a time and a second
 * GPU stage waits in the queue for it or goes to another GPU worker. CPU stages each get a job thread.
 */
export function maxConcurrentStages(queue: TaskQueue): number {
  return queue === 'gpu' ? 1 : 2;
}

/**
 * A worker serving one task queue. A `gpu` worker runs one activity at a time: one GPU stage at a time per
 * device. A `cpu` worker runs a few at once; each ML job has its own thread.
 */
export async function createPipelineWorker(options: WorkerOptions): Promise<Worker> {
  const heartbeatInterval = parseWorkerDuration('WEIGHTFORMER_HEARTBEAT_INTERVAL', options.heartbeatInterval ?? '2s', 50, 60_000);
  const outboxReplayMs = parseWorkerDuration('WEIGHTFORMER_OUTBOX_REPLAY_INTERVAL', options.outboxReplayInterval ?? '30s', 1000, 3_600_000);
  const connection = options.connection ?? (await NativeConnection.connect({ address: options.temporalAddress }));
  const store = new ArtifactStore(options.storeRoot);
  const tracker = options.mlflowUrl ? new StageTracker(new MlflowClient(options.mlflowUrl), store) : null;
  const worker = await Worker.create({
    connection,
    namespace: options.namespace ?? 'default',
    taskQueue: taskQueueName(options.taskQueue, options.queuePrefix),
    workflowBundle: await workflowBundle(),
    activities: createActivities({ store, tracker }),
    ...(options.identity ? { identity: options.identity } : {}),
    maxConcurrentActivityTaskExecutions: maxConcurrentStages(options.taskQueue),
    // The SDK sends heartbeats at most every 0.8 × heartbeatTimeout (up to a minute); a checkpoint waits for
    // the next one. Sending every 2 s instead bounds how far behind the server's checkpoint reference (what
    // another worker resumes from) and the progress `status` shows can be, whatever the timeout.
    maxHeartbeatThrottleInterval: `${heartbeatInterval}ms`,
  });
  if (tracker) replayOutboxWhileAlive(tracker, worker, outboxReplayMs);
  return worker;
}

/**
 * Replays the store's tracking outbox every `everyMs` until the worker stops. Without it, records buffered
 * during an MLflow outage (a pipeline's finish, say, when the pipeline ended before MLflow came back) would
 * wait for the next tracking call of some pipeline. Workers sharing a store may all do this: each record is
 * claimed by a rename before it is applied (src/tracking/outbox.ts). The timer does not keep the process up.
 */
function replayOutboxWhileAlive(tracker: StageTracker, worker: Worker, everyMs: number): void {
  let busy = false;
  const timer = setInterval(() => {
    const state = worker.getState();
    if (state === 'STOPPED' || state === 'FAILED') {
      clearInterval(timer);
      return;
    }
    if (busy) return;
    busy = true;
    void (async () => {
      if ((await tracker.outbox.pendingCount()) === 0) return;
      const { replayed, unavailable } = await tracker.replayOutbox();
      if (replayed > 0) process.stderr.write(`tracking outbox: replayed ${replayed} record(s) to MLflow${unavailable ? '; MLflow unavailable again, the rest wait' : ''}\n`);
    })()
      // A record MLflow refuses is moved to the outbox's failed/ by the replay itself; anything else
      // (the store unreadable, say) is reported and tried again next time.
      .catch((err: unknown) => process.stderr.write(`tracking outbox: replay failed: ${err instanceof Error ? err.message : String(err)}\n`))
      .finally(() => {
        busy = false;
      });
  }, everyMs);
  timer.unref();
}

/**
 * A worker duration setting as `<n>ms` or `<n>s`, in milliseconds, between `minMs` and `maxMs` (the
 * heartbeat interval: shorter floods the server, longer than the SDK's own cap does nothing).
 */
export function parseWorkerDuration(variable: string, text: string, minMs: number, maxMs: number): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)$/.exec(text.trim());
  const ms = m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : NaN;
  if (!(ms >= minMs && ms <= maxMs)) {
    throw new Error(`${variable}: '${text}' is not a duration between ${formatMs(minMs)} and ${formatMs(maxMs)} (write e.g. 500ms or 2s)`);
  }
  return ms;
}

function formatMs(ms: number): string {
  return ms < 1000 ? `${ms}ms` : `${ms / 1000}s`;
}
