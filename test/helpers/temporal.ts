import { TestWorkflowEnvironment } from '@temporalio/testing';
import { defaultPayloadConverter, type WorkflowHandle } from '@temporalio/client';
import type { StageHeartbeat } from '../../workflows/types';
import { ensurePythonTools } from '../../src/stack/python-tools';

let shared: Promise<TestWorkflowEnvironment> | undefined;

/**
 * One real Temporal dev server per test process: the CLI binary from the project's venv, started through
 * the SDK's `createLocal` with an `existing-path` executable (the SDK's own download needs the internet).
 */
export function sharedTemporal(): Promise<TestWorkflowEnvironment> {
  shared ??= ensurePythonTools().then((tools) =>
    TestWorkflowEnvironment.createLocal({
      server: { executable: { type: 'existing-path', path: tools.temporal }, ip: '127.0.0.1', extraArgs: ['--log-level', 'warn'] },
    }),
  );
  return shared;
}

export async function stopSharedTemporal(): Promise<void> {
  if (!shared) return;
  const env = await shared.catch(() => null);
  shared = undefined;
  await env?.teardown();
}

/**
 * The running stage as the server sees it (describe(): pending activity, heartbeat details, attempt, worker).
 * No query: a query waits for a workflow task on a busy worker, long enough to miss a whole stage.
 */
export async function liveActivity(handle: WorkflowHandle) {
  const description = await handle.describe();
  const pending = description.raw.pendingActivities?.[0];
  const payload = pending?.heartbeatDetails?.payloads?.[0];
  const heartbeat = payload ? defaultPayloadConverter.fromPayload<StageHeartbeat>(payload as never) : null;
  return {
    running: description.status.name === 'RUNNING',
    activity: pending?.activityType?.name ?? null,
    heartbeat,
    attempt: pending?.attempt ?? null,
    identity: pending?.lastWorkerIdentity ?? null,
    lastFailure: pending?.lastFailure?.message ?? null,
  };
}
