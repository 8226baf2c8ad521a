import { TestWorkflowEnvironment } from '@temporalio/testing';
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
