/**
 * One real MLflow tracking server per test process, started lazily on first use in a temp folder and
 * stopped when the process exits. Set WEIGHTFORMER_TEST_MLFLOW_URI to use an already running server.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMlflowServer, type MlflowServer } from '../../src/stack/mlflow-server';

export interface SharedMlflow {
  url: string;
  /** Undefined when WEIGHTFORMER_TEST_MLFLOW_URI points at an external server. */
  server?: MlflowServer;
  stateDir?: string;
}

let shared: Promise<SharedMlflow> | undefined;

export function sharedMlflow(): Promise<SharedMlflow> {
  shared ??= start().catch((err: unknown) => {
    shared = undefined;
    throw err;
  });
  return shared;
}

async function start(): Promise<SharedMlflow> {
  const external = process.env.WEIGHTFORMER_TEST_MLFLOW_URI;
  if (external) return { url: external.replace(/\/+$/, '') };
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-test-mlflow-'));
  const server = await startMlflowServer({ stateDir, timeoutMs: 180_000 });
  process.once('exit', () => {
    // The process.ts exit hook has already sent SIGTERM to the server's group; drop its files.
    try {
      fs.rmSync(stateDir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  });
  return { url: server.url, server, stateDir };
}

/** Stop the shared server now (e.g. from a root afterAll hook); a later sharedMlflow() starts a new one. */
export async function stopSharedMlflow(): Promise<void> {
  if (!shared) return;
  const s = await shared.catch(() => undefined);
  shared = undefined;
  await s?.server?.stop();
}
