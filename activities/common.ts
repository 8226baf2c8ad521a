import { Context } from '@temporalio/activity';
import type { StageHeartbeat, StageInput, StageOutput } from '../workflows/types';
import type { StageName } from '../src/spec/types';
import { ArtifactStore } from '../src/store/store';
import { runJobInThread } from '../src/runner/thread';
import { codeVersion } from '../src/runner/code-version';
import { contentHash } from '../src/util/canonical';
import type { StageTracker } from './tracking';

/** What every stage activity needs; built once per worker. */
export interface ActivityDeps {
  store: ArtifactStore;
  /** Opens (or, on a retry, finds again) a stage's nested MLflow run; null when tracking is off. */
  tracker: StageTracker | null;
}

/**
 * The cache key of one unit of stage work: its resolved inputs and options plus the code version, so the
 * same work is never done twice and a code change is never served a stale result.
 */
export function cacheKey(kind: string, resolvedInputs: unknown): string {
  return contentHash({ kind, inputs: resolvedInputs, code: codeVersion() });
}

/** A checkpoint as heartbeated: which unit of work it belongs to, and what that job needs to resume. */
interface KeyedCheckpoint {
  unit: string;
  resume: unknown;
}

/**
 * Runs one ML job in a worker thread: heartbeats its progress (step, loss, ETA) and checkpoint reference,
 * resumes from the previous attempt's last heartbeated checkpoint when it belongs to the same unit of work
 * (`unit`, e.g. `trainTeacher:teacher:2`), and aborts the thread when the activity is cancelled.
 */
export async function runHeartbeatedJob<T>(deps: ActivityDeps, job: string, input: unknown, unit: string = job): Promise<T> {
  const ctx = Context.current();
  const previous = ctx.info.heartbeatDetails as StageHeartbeat | undefined;
  const saved = previous?.checkpoint as KeyedCheckpoint | undefined;
  const resume = saved?.unit === unit ? saved.resume : undefined;
  let beat: StageHeartbeat = previous ?? { phase: job, step: 0, totalSteps: 0 };
  let etaStart: { at: number; step: number } | undefined;
  return runJobInThread<T>(
    { job, input, storeRoot: deps.store.root, resume },
    {
      signal: ctx.cancellationSignal,
      onProgress: (p) => {
        const now = Date.now();
        if (!etaStart || p.step < etaStart.step) etaStart = { at: now, step: p.step };
        const done = p.step - etaStart.step;
        const etaSeconds = done > 0 ? ((now - etaStart.at) / done / 1000) * (p.totalSteps - p.step) : undefined;
        beat = { ...beat, ...p, etaSeconds };
        ctx.heartbeat(beat);
      },
      onCheckpoint: (_step, resumeValue) => {
        const checkpoint: KeyedCheckpoint = { unit, resume: resumeValue };
        beat = { ...beat, checkpoint };
        ctx.heartbeat(beat);
      },
    },
  );
}

/** Wraps a stage body: times it and logs its metrics to the stage's nested MLflow run. */
export async function trackedStage(
  deps: ActivityDeps,
  stage: StageName,
  input: StageInput,
  body: () => Promise<Omit<StageOutput, 'seconds'> & { curves?: Record<string, Array<{ step: number; value: number }>> }>,
): Promise<StageOutput> {
  const started = Date.now();
  const out = await body();
  const seconds = (Date.now() - started) / 1000;
  if (deps.tracker && input.tracking) {
    await deps.tracker.logStage(input.tracking, input.workflowId, stage, {
      metrics: out.metrics,
      curves: out.curves ?? {},
      tags: { 'weightformer.cache_hit': String(out.cacheHit), ...out.tags },
    });
  }
  return { outputs: out.outputs, metrics: out.metrics, tags: out.tags ?? {}, cacheHit: out.cacheHit, seconds };
}

/**
 * The key a stage result is looked up under. With `noCache` only results computed by this same workflow run
 * count (so a retried attempt still reuses what its earlier attempt finished), never those of earlier runs.
 */
function lookupKey(input: StageInput, key: string): string {
  return input.noCache ? runScopedKey(input, key) : key;
}

/**
 * A `noCache` run's own key for a result: scoped by the workflow's run id, not only its id, because
 * `weightformer run` gives every run of one spec the same workflow id (so a second `--no-cache` run would
 * otherwise be served the first one's results). Retries of an activity keep the run id.
 */
function runScopedKey(input: StageInput, key: string): string {
  return cacheKey('run-scoped', { key, workflowId: input.workflowId, runId: Context.current().info.workflowExecution?.runId ?? null });
}

/**
 * The cached result of `key`, or `compute()`'s, recorded under `key`. When two runs of the same spec ask at
 * once, one computes and the other waits for its result (an atomic claim in the store), heartbeating the
 * details its attempt started with so a retry still finds its checkpoint.
 */
export async function computeCached<T>(deps: ActivityDeps, input: StageInput, key: string, compute: () => Promise<T>): Promise<{ result: T; cacheHit: boolean }> {
  const ctx = Context.current();
  const started = ctx.info.heartbeatDetails as StageHeartbeat | undefined;
  const { value, computed } = await deps.store.computeOnce<T>(
    lookupKey(input, key),
    async () => {
      const result = await compute();
      await storeCached(deps, input, key, result);
      return result;
    },
    { onWait: (holder) => ctx.heartbeat({ ...(started ?? { step: 0, totalSteps: 0 }), phase: `waiting for ${holder}, which computes the same result` }) },
  );
  return { result: value, cacheHit: !computed };
}

/** Records a stage result under its key, and under this run's scope for retries of a `noCache` run. */
export async function storeCached(deps: ActivityDeps, input: StageInput, key: string, value: unknown): Promise<void> {
  await deps.store.putCached(key, value);
  if (input.noCache) await deps.store.putCached(runScopedKey(input, key), value);
}

/**
 * Runs a job unless its result is cached under the key of `keyInputs`. `unit` names this piece of work
 * among several of one stage, so a retried stage resumes each from its own checkpoint.
 */
export async function cachedJob<T>(
  deps: ActivityDeps,
  input: StageInput,
  job: string,
  jobInput: unknown,
  keyInputs: unknown,
  unit: string = job,
): Promise<{ result: T; cacheHit: boolean }> {
  return computeCached<T>(deps, input, cacheKey(job, keyInputs), () => runHeartbeatedJob<T>(deps, job, jobInput, unit));
}
