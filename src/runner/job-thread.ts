import { parentPort, workerData } from 'node:worker_threads';
import { ArtifactStore } from '../store/store';
import { JOBS } from './jobs';
import type { JobMessage, JobRequest } from './protocol';

// Entry point of the worker thread started by runJobInThread.
const request = workerData as JobRequest;
const post = (msg: JobMessage) => parentPort!.postMessage(msg);

async function main(): Promise<void> {
  const job = JOBS[request.job];
  if (!job) throw new Error(`unknown job '${request.job}'`);
  const value = await job(request.input as never, {
    store: new ArtifactStore(request.storeRoot),
    resume: request.resume,
    progress: (progress) => post({ type: 'progress', progress }),
    checkpoint: (step, resume) => post({ type: 'checkpoint', step, resume }),
  });
  post({ type: 'result', value });
}

main().catch((err: unknown) => {
  const e = err instanceof Error ? err : new Error(String(err));
  post({ type: 'error', name: e.name, message: e.message, stack: e.stack });
});
