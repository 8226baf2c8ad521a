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
 * A worker serving one task queue. A `gpu` worker runs one activity at a time: one GPU stage at a time per
 * device. A `cpu` worker runs a few at once; each ML job has its own thread.
 */
export async function createPipelineWorker(options: WorkerOptions): Promise<Worker> {
  const connection = options.connection ?? (await NativeConnection.connect({ address: options.temporalAddress }));
  const store = new ArtifactStore(options.storeRoot);
  const tracker = options.mlflowUrl ? new StageTracker(new MlflowClient(options.mlflowUrl), store) : null;
  return Worker.create({
    connection,
    namespace: options.namespace ?? 'default',
    taskQueue: taskQueueName(options.taskQueue, options.queuePrefix),
    workflowBundle: await workflowBundle(),
    activities: createActivities({ store, tracker }),
    maxConcurrentActivityTaskExecutions: options.taskQueue === 'gpu' ? 1 : 2,
  });
}
