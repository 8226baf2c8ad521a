/** What the crash and outage fault tests share: worker processes, kills at a checkpoint phase, MLflow audits. */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import type { WorkflowHandle } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { ArtifactStore } from '../../src/store/store';
import { MLP_RUNTIME } from '../../src/runner/families';
import { deserializeMetaTrainState } from '../../src/ml/weightformer/meta-state';
import { deserializeEarlyStoppingState } from '../../src/ml/early-stopping';
import { MlflowClient } from '../../src/tracking/mlflow';
import { isWallClockMetric } from '../../src/util/metric-names';
import type { StageHeartbeat } from '../../workflows/types';
import { startCli } from '../helpers/cli';

export type WorkerProcess = ChildProcess & { output: () => string };

/** A `weightformer worker` process on the cpu queue of `prefix`. */
export function startWorkerProcess(opts: { temporalAddress: string; store: string; prefix: string; mlflowUrl: string | null; extraEnv?: NodeJS.ProcessEnv }): WorkerProcess {
  return startCli(['worker', '--queue', 'cpu'], {
    TEMPORAL_ADDRESS: opts.temporalAddress,
    WEIGHTFORMER_STORE: opts.store,
    MLFLOW_TRACKING_URI: opts.mlflowUrl ?? '',
    WEIGHTFORMER_QUEUE_PREFIX: opts.prefix,
    ...opts.extraEnv,
  });
}

export async function killProcess(p: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill(signal);
  await exited;
}

interface KeyedCheckpoint {
  unit: string;
  resume: { state?: string };
}

/** The step a checkpoint state holds, read from the store in the format of the job that wrote it. */
export async function checkpointStep(store: ArtifactStore, unit: string, stateRef: string): Promise<number> {
  const bytes = await store.getBytes(stateRef as `sha256:${string}`);
  if (unit.startsWith('metaTrain:')) return deserializeMetaTrainState(bytes).step;
  if (unit.startsWith('kdFromScratch') || unit.startsWith('dataOnly')) return deserializeEarlyStoppingState(bytes).train.step;
  return MLP_RUNTIME.deserializeTrainState(bytes).step; // trainTeacher, finetune (MLP family)
}

export interface KillMeasurement {
  unit: string;
  /** Step of the last heartbeat seen before the kill (the killed attempt was there or slightly past it). */
  stepAtKill: number;
  /** Step of the checkpoint the retry resumes from (the last heartbeated one, read from the store). */
  resumedFrom: number;
  workRedone: number;
}

type Description = Awaited<ReturnType<WorkflowHandle['describe']>>;

/** The last heartbeat the server holds for each pending activity. */
function pendingHeartbeats(desc: Description): StageHeartbeat[] {
  return (desc.raw.pendingActivities ?? []).flatMap((a) => {
    const payload = a.heartbeatDetails?.payloads?.[0];
    return payload ? [defaultPayloadConverter.fromPayload<StageHeartbeat>(payload as never)] : [];
  });
}

function checkpointUnit(hb: StageHeartbeat): string | undefined {
  return (hb.checkpoint as KeyedCheckpoint | undefined)?.unit;
}

/**
 * Waits until the running stage heartbeats `unit` at least half a checkpoint interval past its last
 * checkpoint (so the kill loses real work), SIGKILLs `worker` at once, and measures the work the retry will
 * redo: the last heartbeated step minus the step of the checkpoint the server hands the retry.
 */
export async function killMidInterval(handle: WorkflowHandle, worker: WorkerProcess, unit: string, interval: number, store: ArtifactStore): Promise<KillMeasurement> {
  let seen: StageHeartbeat | null = null; // the unit's last heartbeat
  let lastSeen: StageHeartbeat[] = []; // every pending activity's, for the error message
  const seenCheckpoints = new Map<string, number>();
  for (;;) {
    // describe() alone: the progress query goes through the worker, which is slow to answer under load.
    const desc = await handle.describe();
    // Stages run several activities at once (one per teacher, the baselines side by side), listed in no set
    // order: look at every pending one, not the first, for the unit's heartbeat.
    const heartbeats = pendingHeartbeats(desc);
    if (heartbeats.length) lastSeen = heartbeats;
    const hb = heartbeats.find((h) => checkpointUnit(h) === unit) ?? null;
    if (hb) seen = hb;
    const cp = hb?.checkpoint as KeyedCheckpoint | undefined;
    if (cp?.unit === unit && cp.resume.state) {
      let c = seenCheckpoints.get(cp.resume.state);
      if (c === undefined) {
        c = await checkpointStep(store, unit, cp.resume.state);
        seenCheckpoints.set(cp.resume.state, c);
      }
      // Half an interval past the checkpoint, so the kill loses real work; near the unit's end, any step past it.
      const midInterval = hb!.step - c >= interval / 2 || (hb!.totalSteps - hb!.step < interval && hb!.step > c);
      if (midInterval && hb!.step < hb!.totalSteps) {
        await killProcess(worker);
        break;
      }
    }
    if (desc.status.name !== 'RUNNING') {
      assert.fail(`pipeline ended (${desc.status.name}) before ${unit} was mid-interval; its last heartbeat ${JSON.stringify(seen)}; the last pending ${JSON.stringify(lastSeen.map((h) => ({ unit: checkpointUnit(h), phase: h.phase, step: h.step })))}; worker output:\n${worker.output()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const stepAtKill = seen!.step;
  // What the server will hand the retry: the last heartbeat it recorded (possibly newer than the one seen).
  const recorded = pendingHeartbeats(await handle.describe()).find((h) => checkpointUnit(h) === unit);
  assert.ok(recorded, `no heartbeat recorded for the killed attempt of ${unit}`);
  const cp = recorded.checkpoint as KeyedCheckpoint;
  const resumedFrom = await checkpointStep(store, unit, cp.resume.state!);
  const lastStep = Math.max(stepAtKill, recorded.step);
  return { unit, stepAtKill: lastStep, resumedFrom, workRedone: lastStep - resumedFrom };
}

/** Artifacts that hold wall-clock times (KD's per-epoch seconds, the report quoting them): never equal twice. */
const WALL_CLOCK_ARTIFACTS = new Set(['kdEpochCurve', 'report']);

export function withoutWallClockArtifacts<T>(artifacts: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(artifacts).filter(([k]) => !WALL_CLOCK_ARTIFACTS.has(k)));
}

export function withoutWallClock(m: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(m).filter(([k]) => !isWallClockMetric(k)));
}

/** Per stage of one pipeline run in MLflow: how many nested runs it has, and each metric's logged steps. */
export interface MlflowAudit {
  parentRuns: number;
  stageRuns: Record<string, number>;
  /** `<stage>/<metric>` → the steps logged, in order, duplicates kept. */
  steps: Record<string, number[]>;
  /** `<stage>/<metric>` → values (wall-clock metrics left out). */
  values: Record<string, number[]>;
}

export async function auditMlflow(client: MlflowClient, experimentName: string, workflowId: string): Promise<MlflowAudit> {
  const exp = await client.getExperimentByName(experimentName);
  assert.ok(exp, `no MLflow experiment ${experimentName}`);
  const runs = await client.searchRuns({ experimentIds: [exp.experiment_id], filter: `tags."weightformer.workflow_id" = '${workflowId}'` });
  const tag = (r: (typeof runs)[number], key: string) => r.data.tags?.find((t) => t.key === key)?.value;
  const audit: MlflowAudit = { parentRuns: 0, stageRuns: {}, steps: {}, values: {} };
  for (const run of runs) {
    const kind = tag(run, 'weightformer.kind');
    const stage = kind === 'pipeline' ? 'pipeline' : (tag(run, 'weightformer.stage') ?? '?');
    if (kind === 'pipeline') audit.parentRuns += 1;
    else audit.stageRuns[stage] = (audit.stageRuns[stage] ?? 0) + 1;
    for (const m of run.data.metrics ?? []) {
      const history = await client.getMetricHistory(run.info.run_id, m.key);
      const sorted = [...history].sort((a, b) => Number(a.step) - Number(b.step));
      audit.steps[`${stage}/${m.key}`] = sorted.map((h) => Number(h.step));
      if (!isWallClockMetric(m.key)) audit.values[`${stage}/${m.key}`] = sorted.map((h) => Number(h.value));
    }
  }
  return audit;
}

/**
 * Records lost or duplicated relative to a reference run: metric steps missing, steps logged twice, stage
 * runs missing or doubled, and non-wall-clock values that differ.
 */
export function compareAudits(reference: MlflowAudit, actual: MlflowAudit): { lost: number; duplicated: number; problems: string[] } {
  const problems: string[] = [];
  let lost = 0;
  let duplicated = 0;
  if (actual.parentRuns !== 1) problems.push(`${actual.parentRuns} pipeline runs`);
  for (const [stage, n] of Object.entries(reference.stageRuns)) {
    const got = actual.stageRuns[stage] ?? 0;
    if (got < n) { lost += n - got; problems.push(`stage ${stage}: ${got} nested runs, reference ${n}`); }
    if (got > n) { duplicated += got - n; problems.push(`stage ${stage}: ${got} nested runs (a second one for the retried stage)`); }
  }
  for (const [key, steps] of Object.entries(reference.steps)) {
    const got = actual.steps[key] ?? [];
    const want = new Set(steps);
    const have = new Set(got);
    const missing = [...want].filter((s) => !have.has(s));
    if (missing.length) { lost += missing.length; problems.push(`${key}: steps ${missing.slice(0, 5).join(',')} missing`); }
    const dups = got.length - have.size;
    if (dups > 0) { duplicated += dups; problems.push(`${key}: ${dups} steps logged twice`); }
  }
  for (const [key, values] of Object.entries(reference.values)) {
    const got = actual.values[key];
    if (got && JSON.stringify(got) !== JSON.stringify(values)) { lost += 1; problems.push(`${key}: values differ`); }
  }
  for (const key of Object.keys(actual.steps)) if (!(key in reference.steps)) { duplicated += 1; problems.push(`${key}: not in the reference`); }
  return { lost, duplicated, problems };
}

export function mlflowClient(url: string): MlflowClient {
  return new MlflowClient(url, { retry: { attempts: 3, initialDelayMs: 200 } });
}
