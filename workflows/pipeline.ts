import {
  ActivityFailure,
  CancellationScope,
  continueAsNew,
  defineQuery,
  defineSignal,
  executeChild,
  isCancellation,
  patched,
  proxyActivities,
  setHandler,
  workflowInfo,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { StageOptions } from '../src/spec/types';
import { taskQueueName } from './queues';
import type {
  CellResult,
  PipelineInput,
  PipelineProgress,
  PipelineResult,
  ReportStatus,
  Ref,
  StageInput,
  StageName,
  StageOutput,
  TrackingHandle,
} from './types';

export const progressQuery = defineQuery<PipelineProgress>('progress');
/** Cancels the running stage and stops the pipeline; the MLflow run is marked KILLED. */
export const cancelSignal = defineSignal<[reason?: string]>('cancel');

// Kept in sync with src/util/errors.ts NON_RETRYABLE_ERROR_TYPES (the sandbox cannot import runtime code
// from outside workflows/; a unit test checks the two lists are equal).
export const NON_RETRYABLE = ['InputError', 'SpecError', 'AccessError', 'MlflowRequestError'];

/** Activity options of one stage, from its `stages.<name>` block of the spec. */
export function stageActivityOptions(options: StageOptions, queuePrefix?: string): ActivityOptions {
  return {
    taskQueue: taskQueueName(options.resources.gpu ? 'gpu' : 'cpu', queuePrefix),
    startToCloseTimeout: options.startToCloseTimeout as ActivityOptions['startToCloseTimeout'],
    heartbeatTimeout: options.heartbeatTimeout as ActivityOptions['heartbeatTimeout'],
    // A stage whose queue no worker serves fails after this instead of waiting forever.
    scheduleToStartTimeout: options.scheduleToStartTimeout as ActivityOptions['scheduleToStartTimeout'],
    retry: {
      maximumAttempts: options.retry.maximumAttempts,
      initialInterval: options.retry.initialInterval as ActivityOptions['startToCloseTimeout'],
      backoffCoefficient: options.retry.backoffCoefficient,
      maximumInterval: options.retry.maximumInterval as ActivityOptions['startToCloseTimeout'],
      nonRetryableErrorTypes: NON_RETRYABLE,
    },
  };
}

/**
 * The `pipeline` workflow: each stage is one activity; each sweep cell is a child workflow.
 * Only references and metrics pass through here, never tensors.
 */
export async function pipeline(input: PipelineInput): Promise<PipelineResult> {
  if (input.cells && input.cells.length > 0) return sweep(input);

  const { spec } = input;
  const workflowId = workflowInfo().workflowId;
  const progress: PipelineProgress = { name: spec.name, stage: null, state: 'running', stages: {} };
  setHandler(progressQuery, () => progress);

  const stagesScope = new CancellationScope();
  setHandler(cancelSignal, () => stagesScope.cancel());

  // Tracking calls are short network I/O: always on the cpu queue, with the `track` stage's policy.
  const tracking = proxyActivities<Activities>(stageActivityOptions({ ...spec.stages.track, resources: { gpu: false } }, input.queuePrefix));
  const stageActivities = (stage: StageName) => proxyActivities<Activities>(stageActivityOptions(spec.stages[stage], input.queuePrefix));

  let handle: TrackingHandle | null = null;
  const artifacts: Record<string, Ref | Ref[]> = {};
  const metrics: Record<string, number> = {};
  const tags: Record<string, string> = { ...(input.tags ?? {}) };

  const runStage = async (stage: StageName, call: (input: StageInput) => Promise<StageOutput>): Promise<StageOutput> => {
    progress.stage = stage;
    progress.stages[stage] = { state: 'running' };
    try {
      const out = await stagesScope.run(() =>
        call({ spec, specHash: input.specHash, noCache: input.noCache, tracking: handle, workflowId, inputs: { ...artifacts }, metrics: { ...metrics } }),
      );
      Object.assign(artifacts, out.outputs);
      Object.assign(metrics, out.metrics);
      Object.assign(tags, out.tags ?? {});
      progress.stages[stage] = { state: out.cacheHit ? 'cached' : 'completed', cacheHit: out.cacheHit, seconds: out.seconds };
      return out;
    } catch (err) {
      progress.stages[stage] = { state: isCancellation(err) ? 'cancelled' : 'failed', note: failureMessage(err) };
      throw err;
    }
  };
  const skip = (stage: StageName, note: string) => {
    progress.stages[stage] = { state: 'skipped', note };
  };

  try {
    if (spec.tracking.enabled) {
      handle = await stagesScope.run(() =>
        tracking.startTracking({
          spec,
          specHash: input.specHash,
          workflowId,
          file: input.file ?? null,
          parentRunId: input.parentRunId ?? null,
          parentExperimentId: input.parentExperimentId ?? null,
        }),
      );
    }
    await runStage('teachers', (i) => stageActivities('teachers').trainTeachers(i));
    // A WeightFormer taken from the registry needs no zoo, and its stage only downloads it.
    const reused = spec.weightformer.mode !== 'none' && spec.weightformer.reuse !== undefined;
    if (reused) skip('zoo', `weightformer.reuse is ${spec.weightformer.reuse}: the WeightFormer comes from the registry, no zoo is trained`);
    else if (spec.zoo.count > 0) await runStage('zoo', (i) => stageActivities('zoo').trainZoo(i));
    else skip('zoo', 'zoo.count is 0: no meta-training pool');
    if (reused) await runStage('weightformer', (i) => stageActivities('weightformer').reuseRegisteredWeightformer(i));
    else if (spec.weightformer.mode !== 'none') await runStage('weightformer', (i) => stageActivities('weightformer').trainWeightformer(i));
    else skip('weightformer', 'weightformer.mode is none: the student is the aligned average');
    await runStage('generate', (i) => stageActivities('generate').generateStudent(i));
    if (spec.finetune.enabled) await runStage('finetune', (i) => stageActivities('finetune').finetuneStudent(i));
    else skip('finetune', 'finetune.enabled is false');
    await runStage('baselines', (i) => stageActivities('baselines').computeBaselines(i));
    await runStage('evaluate', (i) => stageActivities('evaluate').evaluatePipeline(i));
    // Histories recorded before reports existed replay without this call.
    let report: ReportStatus | undefined;
    if (patched('html-report')) {
      const finalHandle = handle;
      report = await stagesScope.run(() =>
        writeReportOrNote(tracking, { spec, specHash: input.specHash, workflowId, tracking: finalHandle, metrics: { ...metrics }, tags: { ...tags }, stages: { ...progress.stages } }),
      );
      if (report.ref) artifacts.report = report.ref;
    }
    if (handle) await runStage('track', (i) => tracking.finishTracking({ ...i, status: 'FINISHED', metrics: { ...metrics }, tags: { ...tags } }));
    else skip('track', 'tracking.enabled is false');
    progress.state = 'completed';
    return { status: 'completed', workflowId, mlflowRunId: handle?.runId ?? null, mlflowExperimentId: handle?.experimentId ?? null, metrics, tags, stages: progress.stages, artifacts, ...(report ? { report } : {}) };
  } catch (err) {
    progress.state = isCancellation(err) ? 'cancelled' : 'failed';
    if (handle) {
      const finalHandle = handle;
      // Mark the MLflow run even when the pipeline was cancelled: run outside the cancelled scope.
      await CancellationScope.nonCancellable(() =>
        tracking
          .finishTracking({
            spec,
            specHash: input.specHash,
            noCache: input.noCache,
            tracking: finalHandle,
            workflowId,
            inputs: artifacts,
            status: isCancellation(err) ? 'KILLED' : 'FAILED',
            metrics,
            tags,
          })
          .catch(() => undefined),
      );
    }
    throw err;
  }
}

/** Runs each sweep cell as a child workflow, continuing as new when history grows large. */
async function sweep(input: PipelineInput): Promise<PipelineResult> {
  const cells = input.cells ?? [];
  const completed: CellResult[] = [...(input.completedCells ?? [])];
  const progress: PipelineProgress = {
    name: input.spec.name,
    stage: null,
    state: 'running',
    stages: {},
    cells: { total: cells.length, completed: completed.length },
  };
  setHandler(progressQuery, () => progress);
  const scope = new CancellationScope();
  setHandler(cancelSignal, () => scope.cancel());
  const workflowId = workflowInfo().workflowId;

  for (let index = completed.length; index < cells.length; index++) {
    const cell = cells[index]!;
    const childId = `${workflowId}-cell-${index}`;
    const result = await scope.run(() =>
      executeChild(pipeline, {
        workflowId: childId,
        args: [{ spec: cell.spec, specHash: cell.hash, file: input.file, noCache: input.noCache, queuePrefix: input.queuePrefix }],
      }),
    );
    completed.push({ cell: cell.cell, workflowId: childId, mlflowRunId: result.mlflowRunId, metrics: result.metrics, tags: result.tags });
    progress.cells = { total: cells.length, completed: completed.length };
    if (workflowInfo().continueAsNewSuggested && index + 1 < cells.length) {
      await continueAsNew<typeof pipeline>({ ...input, completedCells: completed });
    }
  }
  let report: ReportStatus | undefined;
  if (patched('html-report')) {
    const reporting = proxyActivities<Activities>(stageActivityOptions({ ...input.spec.stages.track, resources: { gpu: false } }, input.queuePrefix));
    report = await scope.run(() =>
      writeReportOrNote(reporting, { spec: input.spec, specHash: input.specHash, workflowId, tracking: null, metrics: {}, tags: {}, stages: {}, cells: completed }),
    );
  }
  progress.state = 'completed';
  return {
    status: 'completed', workflowId, mlflowRunId: null, mlflowExperimentId: null, metrics: {}, tags: {}, stages: {},
    artifacts: report?.ref ? { report: report.ref } : {}, cells: completed, ...(report ? { report } : {}),
  };
}

/**
 * Writes the HTML report. A report that cannot be written (after the activity's retries) does not fail a
 * pipeline whose stages all succeeded: the student and its metrics are already stored and tracked, and
 * failing would mark good results failed and have a rerun start over. The failure is not hidden either:
 * it is returned with its reason, in the result and the CLI's output. Cancellation still propagates.
 */
async function writeReportOrNote(activities: Pick<Activities, 'writeReport'>, request: Parameters<Activities['writeReport']>[0]): Promise<ReportStatus> {
  try {
    const out = await activities.writeReport(request);
    return { state: 'written', ref: out.ref, mlflowRunId: out.mlflowRunId, artifactPath: out.artifactPath };
  } catch (err) {
    if (isCancellation(err)) throw err;
    return { state: 'failed', note: failureMessage(err) };
  }
}

function failureMessage(err: unknown): string {
  if (err instanceof ActivityFailure && err.cause) return err.cause.message;
  return err instanceof Error ? err.message : String(err);
}
