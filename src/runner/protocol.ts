/** Messages between an activity (main thread) and the ML job it runs in a worker thread. */

export interface JobProgress {
  /** What the job is doing, e.g. `teacher 2/4`. */
  phase: string;
  step: number;
  totalSteps: number;
  loss?: number;
}

export type JobMessage =
  | { type: 'progress'; progress: JobProgress }
  /** `resume` is what a retried attempt needs to continue (references into the store, never tensors). */
  | { type: 'checkpoint'; step: number; resume: unknown }
  | { type: 'result'; value: unknown }
  | { type: 'error'; name: string; message: string; stack?: string };

export interface JobRequest {
  job: string;
  input: unknown;
  storeRoot: string;
  /** The last checkpoint's `resume` value from the previous attempt's heartbeat, if any. */
  resume?: unknown;
}
