import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { InputError } from '../util/errors';
import type { JobMessage, JobProgress, JobRequest } from './protocol';

export interface RunJobHooks {
  onProgress?(progress: JobProgress): void;
  onCheckpoint?(step: number, resume: unknown): void;
  /** Aborting terminates the thread at once: TF.js on wasm is synchronous and cannot be interrupted otherwise. */
  signal?: AbortSignal;
}

/**
 * Runs one ML job in a worker thread, so the activity's event loop (heartbeats, cancellation, workflow
 * tasks on the same worker) never stalls behind a synchronous training step.
 */
export function runJobInThread<T>(request: JobRequest, hooks: RunJobHooks = {}): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const worker = new Worker(path.join(__dirname, 'job-thread.js'), { workerData: request });
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      hooks.signal?.removeEventListener('abort', onAbort);
      fn();
    };
    const onAbort = () => {
      void worker.terminate();
      finish(() => reject(hooks.signal?.reason ?? new Error('job aborted')));
    };
    if (hooks.signal?.aborted) return onAbort();
    hooks.signal?.addEventListener('abort', onAbort);
    worker.on('message', (msg: JobMessage) => {
      switch (msg.type) {
        case 'progress':
          hooks.onProgress?.(msg.progress);
          break;
        case 'checkpoint':
          hooks.onCheckpoint?.(msg.step, msg.resume);
          break;
        case 'result':
          finish(() => resolve(msg.value as T));
          void worker.terminate();
          break;
        case 'error': {
          // Keep the error's name: InputError & co. must stay non-retryable across the thread boundary.
          const err = msg.name === 'InputError' || msg.name === 'SpecError' || msg.name === 'AccessError' ? new InputError(msg.message) : new Error(msg.message);
          err.name = msg.name;
          if (msg.stack) err.stack = msg.stack;
          finish(() => reject(err));
          void worker.terminate();
          break;
        }
      }
    });
    worker.on('error', (err) => finish(() => reject(err)));
    worker.on('exit', (code) => finish(() => reject(new Error(`job ${request.job} thread exited with code ${code} before returning a result`))));
  });
}
