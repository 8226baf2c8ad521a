import type { PipelineSpec, StageName } from '../src/spec/types';
import type { StageInput, StageOutput, TrackingHandle } from '../workflows/types';
import { MlflowUnavailableError, type MlflowClient } from '../src/tracking/mlflow';
import { TrackingOutbox } from '../src/tracking/outbox';
import type { ArtifactStore } from '../src/store/store';
import type { ActivityDeps } from './common';
import { studentRegistryFiles } from '../src/runner/families';
import { lineageFromRunTags } from './registry';

const TAG_WORKFLOW = 'weightformer.workflow_id';
const TAG_KIND = 'weightformer.kind';
const TAG_STAGE = 'weightformer.stage';
const TAG_LOGGED = 'weightformer.logged';

export type FinishInput = StageInput & { status: 'FINISHED' | 'FAILED' | 'KILLED'; metrics: Record<string, number>; tags: Record<string, string> };

export interface StageLog {
  metrics: Record<string, number>;
  curves: Record<string, Array<{ step: number; value: number }>>;
  tags: Record<string, string>;
}

/** Flattens a spec into MLflow params: dotted keys, JSON for arrays. */
export function flattenSpec(value: unknown, prefix = '', out: Record<string, string> = {}): Record<string, string> {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flattenSpec(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out[prefix] = typeof value === 'string' ? value : JSON.stringify(value);
  }
  return out;
}

/** A tracking write MLflow could not take in time, kept in the store's outbox until it can. */
export type OutboxRecord =
  | { kind: 'logStage'; handle: TrackingHandle; workflowId: string; stage: StageName; log: StageLog }
  | { kind: 'finish'; input: FinishInput };

/**
 * One parent MLflow run per pipeline and one nested run per stage. Runs are found again by their tags, so
 * a retried activity reuses the run its earlier attempt created instead of making a second one.
 *
 * When MLflow stays down past the client's retry window, a stage's log and the pipeline's finish are
 * written to a durable outbox in the shared store instead of failing the pipeline, and replayed (oldest
 * first) by the next tracking call that reaches MLflow. Every write is idempotent, so a replay after a
 * partial success adds nothing twice.
 */
export class StageTracker {
  readonly outbox: TrackingOutbox<OutboxRecord>;

  constructor(
    readonly client: MlflowClient,
    private readonly store: ArtifactStore,
  ) {
    this.outbox = new TrackingOutbox<OutboxRecord>(store.root);
  }

  /** Applies what the outbox holds; MLflow still down is not an error here (the records stay). */
  async replayOutbox(): Promise<{ replayed: number; unavailable: boolean }> {
    return this.outbox.replay((r) => (r.kind === 'logStage' ? this.logStageNow(r.handle, r.workflowId, r.stage, r.log) : this.finishNow(r.input).then(() => undefined)));
  }

  /** Runs `write` after replaying the outbox; when MLflow is unavailable, records `record` durably instead. */
  private async writeOrBuffer<T>(record: OutboxRecord, write: () => Promise<T>, buffered: T): Promise<T> {
    try {
      const { unavailable } = await this.replayOutbox();
      // Older records first: while they cannot go, this one waits behind them.
      if (unavailable) throw new MlflowUnavailableError('MLflow still unavailable for the outbox', 'outbox', 0);
      return await write();
    } catch (err) {
      if (!(err instanceof MlflowUnavailableError)) throw err;
      await this.outbox.add(record);
      return buffered;
    }
  }

  async startPipelineRun(args: {
    spec: PipelineSpec;
    specHash: string;
    workflowId: string;
    file: string | null;
    parentRunId: string | null;
  }): Promise<TrackingHandle> {
    const experimentId = await this.client.getOrCreateExperiment(args.spec.tracking.experiment);
    const matchTags: Record<string, string> = { [TAG_WORKFLOW]: args.workflowId, [TAG_KIND]: 'pipeline' };
    const { run, created } = await this.client.findOrCreateRunByTags({
      experimentId,
      runName: `${args.spec.name}-${args.specHash.slice(0, 8)}`,
      matchTags,
      tags: {
        ...matchTags,
        'weightformer.spec_hash': args.specHash,
        'weightformer.backend_requested': args.spec.compute.backend,
        ...(args.file ? { 'mlflow.source.name': args.file } : {}),
      },
      ...(args.parentRunId ? { parentRunId: args.parentRunId } : {}),
    });
    const runId = run.info.run_id;
    if (created) {
      const params = Object.entries(flattenSpec(args.spec)).map(([key, value]) => ({ key, value }));
      await this.client.logBatch(runId, { params });
      await this.client.logArtifact(runId, 'spec.json', JSON.stringify(args.spec, null, 2));
    }
    return { experimentId, runId };
  }

  /** Logs a stage's metrics and curves into its nested run, once, even when the stage is retried. */
  async logStage(handle: TrackingHandle, workflowId: string, stage: StageName, log: StageLog): Promise<void> {
    await this.writeOrBuffer({ kind: 'logStage', handle, workflowId, stage, log }, () => this.logStageNow(handle, workflowId, stage, log), undefined);
  }

  private async logStageNow(handle: TrackingHandle, workflowId: string, stage: StageName, log: StageLog): Promise<void> {
    const tags = { [TAG_WORKFLOW]: workflowId, [TAG_STAGE]: stage };
    const { run } = await this.client.findOrCreateRunByTags({
      experimentId: handle.experimentId,
      runName: stage,
      matchTags: tags,
      tags: { ...tags, [TAG_KIND]: 'stage' },
      parentRunId: handle.runId,
    });
    const runId = run.info.run_id;
    const alreadyLogged = run.data.tags?.some((t) => t.key === TAG_LOGGED && t.value === 'true');
    if (!alreadyLogged) {
      const timestamp = Date.now();
      const metrics = [
        ...Object.entries(log.metrics).map(([key, value]) => ({ key, value, step: 0, timestamp })),
        ...Object.entries(log.curves).flatMap(([key, points]) => points.map((p) => ({ key, value: p.value, step: p.step, timestamp }))),
      ];
      // An earlier attempt (or replay) may have logged part of it before failing: never log a step twice.
      const logged = await this.loggedSteps(runId, run.data.metrics?.map((m) => m.key) ?? []);
      const fresh = metrics.filter((m) => !logged.get(m.key)?.has(m.step));
      await this.client.logBatch(runId, { metrics: fresh, tags: Object.entries(log.tags).map(([key, value]) => ({ key, value })) });
      await this.client.setTag(runId, TAG_LOGGED, 'true');
    }
    await this.client.updateRun(runId, 'FINISHED');
  }

  /** The steps already logged of each of `keys` in `runId`. */
  private async loggedSteps(runId: string, keys: string[]): Promise<Map<string, Set<number>>> {
    const out = new Map<string, Set<number>>();
    for (const key of keys) out.set(key, new Set((await this.client.getMetricHistory(runId, key)).map((m) => Number(m.step))));
    return out;
  }

  /** Closes the pipeline's run; when MLflow is down past the retry window, the finish waits in the outbox. */
  async finishPipelineRun(input: FinishInput): Promise<{ modelVersion: string | null; buffered: boolean }> {
    return this.writeOrBuffer<{ modelVersion: string | null; buffered: boolean }>({ kind: 'finish', input }, async () => ({ ...(await this.finishNow(input)), buffered: false }), { modelVersion: null, buffered: true });
  }

  private async finishNow(
    input: FinishInput,
  ): Promise<{ modelVersion: string | null }> {
    const handle = input.tracking!;
    const timestamp = Date.now();
    const metrics = Object.entries(input.metrics).map(([key, value]) => ({ key, value, step: 0, timestamp }));
    const existing = await this.client.getRun(handle.runId);
    const logged = new Set((existing.data.metrics ?? []).map((m) => m.key));
    // Final metrics are logged once: a retried finish must not add a second point to any of them.
    await this.client.logBatch(handle.runId, {
      metrics: metrics.filter((m) => !logged.has(m.key)),
      tags: Object.entries(input.tags).map(([key, value]) => ({ key, value })),
    });
    await this.client.logArtifact(handle.runId, 'result.json', JSON.stringify({ metrics: input.metrics, artifacts: input.inputs }, null, 2));
    let modelVersion: string | null = null;
    const student = (input.inputs.studentFinetuned ?? input.inputs.student) as string | undefined;
    if (input.status === 'FINISHED' && student && input.spec.tracking.registerModel) {
      // The student in its family's format: as TF.js loads it (student/model.json + student/weights.bin) for
      // MLPs and CNNs, as a PyTorch state_dict (student/model.safetensors) for ResNets and ViTs; either is
      // what a `models:/` teacher source of the next pipeline reads.
      const files = studentRegistryFiles(await this.store.getBytes(student as `sha256:${string}`), input.spec.architecture);
      for (const file of files) await this.client.logArtifact(handle.runId, `student/${file.path}`, file.content);
      const name = input.spec.tracking.registerModel;
      await this.client.createRegisteredModel(name);
      const { version } = await this.client.findOrCreateModelVersion({
        name,
        source: `${existing.info.artifact_uri}/student`,
        runId: handle.runId,
        tags: {
          'weightformer.spec_hash': input.specHash,
          'weightformer.workflow_id': input.workflowId,
          'weightformer.student_ref': student,
          ...lineageFromRunTags(input.tags, input.specHash, input.workflowId),
        },
      });
      modelVersion = version.version;
    }
    await this.client.updateRun(handle.runId, input.status);
    return { modelVersion };
  }
}

/** The tracking activities: open the pipeline's run at the start, log and close it at the end. */
export function trackingActivities(deps: ActivityDeps) {
  const requireTracker = () => {
    if (!deps.tracker) throw new Error('tracking is enabled in the spec but this worker has no MLflow server (set MLFLOW_TRACKING_URI)');
    return deps.tracker;
  };
  return {
    async startTracking(args: {
      spec: PipelineSpec;
      specHash: string;
      workflowId: string;
      file: string | null;
      parentRunId: string | null;
      parentExperimentId: string | null;
    }): Promise<TrackingHandle> {
      return requireTracker().startPipelineRun(args);
    },
    async finishTracking(input: FinishInput): Promise<StageOutput> {
      const started = Date.now();
      const { modelVersion, buffered } = await requireTracker().finishPipelineRun(input);
      return {
        outputs: {},
        metrics: modelVersion ? ({ 'registry.model_version': Number(modelVersion) } as Record<string, number>) : {},
        ...(buffered ? { tags: { 'weightformer.tracking': 'buffered: MLflow was unavailable; the outbox in the store replays it' } } : {}),
        cacheHit: false,
        seconds: (Date.now() - started) / 1000,
      };
    },
  };
}
