import { defaultPayloadConverter, type WorkflowHandle } from '@temporalio/client';
import { SingleBar, Presets } from 'cli-progress';
import type { PipelineProgress, PipelineResult, StageHeartbeat, StageName } from '../../workflows/types';
import { progressQuery } from '../../workflows/pipeline';

export interface LiveStatus {
  progress: PipelineProgress | null;
  /** Heartbeat of the running stage's activity, read from the workflow's pending activities. */
  heartbeat: StageHeartbeat | null;
  attempt: number | null;
  lastFailure: string | null;
}

/**
 * Reads where a pipeline is: the `progress` query for stage states, and the pending activity's heartbeat
 * details from describe() for step, loss and ETA — so per-step progress never enters workflow history.
 */
export async function readLiveStatus(handle: WorkflowHandle): Promise<LiveStatus> {
  const [progress, description] = await Promise.all([
    handle.query(progressQuery).catch(() => null),
    handle.describe(),
  ]);
  const pending = description.raw.pendingActivities?.[0];
  let heartbeat: StageHeartbeat | null = null;
  const payload = pending?.heartbeatDetails?.payloads?.[0];
  if (payload) {
    try {
      heartbeat = defaultPayloadConverter.fromPayload<StageHeartbeat>(payload as never);
    } catch {
      heartbeat = null;
    }
  }
  return {
    progress,
    heartbeat,
    attempt: pending?.attempt ?? null,
    lastFailure: pending?.lastFailure?.message ?? null,
  };
}

/** Shows live progress until the workflow ends: a bar with ETA on a TTY, plain lines otherwise. */
export async function followPipeline(handle: WorkflowHandle, out: NodeJS.WriteStream, intervalMs = 1000): Promise<PipelineResult> {
  const resultPromise = handle.result() as Promise<PipelineResult>;
  let done = false;
  void resultPromise.then(
    () => (done = true),
    () => (done = true),
  );
  const tty = Boolean(out.isTTY);
  const bar = tty
    ? new SingleBar(
        { format: '{stage} [{bar}] {value}/{total} | loss {loss} | ETA {eta_formatted} | {phase}', stream: out, hideCursor: true, etaBuffer: 20 },
        Presets.shades_classic,
      )
    : null;
  let barStage: string | null = null;
  let lastLine = '';
  const stageStates = new Map<string, string>();
  let cellsDone = -1;
  while (!done) {
    try {
      const status = await readLiveStatus(handle);
      const stage = status.progress?.stage ?? 'starting';
      const hb = status.heartbeat;
      const cells = status.progress?.cells;
      if (cells && cells.completed !== cellsDone) {
        // A sweep's stages run in its child workflows; the parent reports cells.
        cellsDone = cells.completed;
        out.write(`sweep: ${cells.completed}/${cells.total} cells completed\n`);
      }
      for (const [name, s] of Object.entries(status.progress?.stages ?? {})) {
        if (stageStates.get(name) !== s.state) {
          stageStates.set(name, s.state);
          if (s.state !== 'running') {
            if (bar && barStage === name) {
              bar.stop();
              barStage = null;
            }
            out.write(`stage ${name}: ${s.state}${s.seconds !== undefined ? ` (${s.seconds.toFixed(1)} s)` : ''}${s.note ? ` — ${s.note}` : ''}\n`);
          }
        }
      }
      if (bar && hb && hb.totalSteps > 0 && status.progress?.stages[stage as StageName]?.state === 'running') {
        if (barStage !== stage) {
          if (barStage) bar.stop();
          bar.start(hb.totalSteps, hb.step, { stage, loss: '-', phase: hb.phase });
          barStage = stage;
        }
        bar.setTotal(hb.totalSteps);
        bar.update(hb.step, { loss: hb.loss?.toFixed(4) ?? '-', phase: hb.phase });
      } else if (!bar && hb) {
        const pct = hb.totalSteps > 0 ? Math.floor((hb.step / hb.totalSteps) * 10) * 10 : 0;
        const line = `${stage}: ${hb.phase} ${pct}%${hb.loss !== undefined ? ` loss ${hb.loss.toFixed(4)}` : ''}`;
        if (line !== lastLine) {
          const eta = hb.etaSeconds !== undefined ? ` eta ${Math.round(hb.etaSeconds)} s` : '';
          out.write(`${line}${eta}${status.attempt && status.attempt > 1 ? ` (attempt ${status.attempt})` : ''}\n`);
          lastLine = line;
        }
      }
    } catch {
      // The server may be briefly unreachable (restart); keep following.
    }
    await Promise.race([resultPromise.catch(() => undefined), new Promise((r) => setTimeout(r, intervalMs))]);
  }
  bar?.stop();
  return resultPromise;
}
