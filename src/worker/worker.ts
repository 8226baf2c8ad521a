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
  const heartbeatInterval = parseHeartbeatInterval(options.heartbeatInterval ?? '2s');
  const connection = options.connection ?? (await NativeConnection.connect({ address: options.temporalAddress }));
  const store = new ArtifactStore(options.storeRoot);
  const tracker = options.mlflowUrl ? new StageTracker(new MlflowClient(options.mlflowUrl), store) : null;
  return Worker.create({
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
    maxHeartbeatThrottleInterval: heartbeatInterval,
  });
}

/**
 * A heartbeat interval as `<n>ms` or `<n>s`, between 50 ms and 60 s: shorter floods the server with
 * heartbeats, longer than the SDK's own cap does nothing.
 */
export function parseHeartbeatInterval(text: string): string {
  const m = /^(\d+(?:\.\d+)?)(ms|s)$/.exec(text.trim());
  const ms = m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : NaN;
  if (!(ms >= 50 && ms <= 60_000)) {
    throw new Error(`WEIGHTFORMER_HEARTBEAT_INTERVAL: '${text}' is not a duration between 50ms and 60s (write e.g. 500ms or 2s)`);
  }
  return `${ms}ms`;
}
