import { Context } from '@temporalio/activity';
import type { PipelineSpec, StageName } from '../src/spec/types';
import type { CellResult, Ref, StageStatus, TrackingHandle } from '../workflows/types';
import { PARENT_RUN_ID_TAG, tagsFilter, type MlflowClient } from '../src/tracking/mlflow';
import { renderReport, type Curve, type ReportCurves, type ReportInput } from '../src/report';
import type { ActivityDeps } from './common';

/** Where the report lies among a run's MLflow artifacts. */
export const REPORT_ARTIFACT = 'report/report.html';

export interface ReportRequest {
  spec: PipelineSpec;
  specHash: string;
  workflowId: string;
  /** The pipeline's MLflow run (null when tracking is off, and for a sweep, which gets a run of its own here). */
  tracking: TrackingHandle | null;
  metrics: Record<string, number>;
  tags: Record<string, string>;
  stages: Partial<Record<StageName, StageStatus>>;
  /** A sweep's finished cells. */
  cells?: CellResult[];
}

export interface ReportOutput {
  /** The HTML in the artifact store. */
  ref: Ref;
  /** The MLflow run holding it as `artifactPath`; null when tracking is off. */
  mlflowRunId: string | null;
  artifactPath: string | null;
}

type CurveGroup = Exclude<keyof ReportCurves, 'missing'>;

/** Which logged metric histories are which curves: the keys the stage activities log their curves under. */
const CURVE_KEYS: Array<{ stage: StageName; group: CurveGroup; key: RegExp }> = [
  { stage: 'teachers', group: 'teachers', key: /^teacher_\d+\.loss$/ },
  { stage: 'weightformer', group: 'weightformerLoss', key: /^weightformer\.loss$/ },
  { stage: 'weightformer', group: 'weightformerValidation', key: /^weightformer\.val_acc$/ },
  { stage: 'finetune', group: 'finetune', key: /^finetune\.loss$/ },
];

/**
 * The training curves of one pipeline run, read back from where the stages logged them: the metric
 * histories of the stage runs nested under the pipeline's run (one point per logged step). Nothing new is
 * carried through the workflow for them.
 */
export async function readRunCurves(client: MlflowClient, handle: TrackingHandle, stages: ReportRequest['stages']): Promise<ReportCurves> {
  const curves: ReportCurves = { teachers: [], weightformerLoss: [], weightformerValidation: [], finetune: [], missing: {} };
  const runs = await client.searchRuns({
    experimentIds: [handle.experimentId],
    filter: tagsFilter({ [PARENT_RUN_ID_TAG]: handle.runId, 'weightformer.kind': 'stage' }),
  });
  const runOfStage = new Map<string, (typeof runs)[number]>();
  for (const run of runs) {
    const stage = run.data.tags?.find((t) => t.key === 'weightformer.stage')?.value;
    if (stage) runOfStage.set(stage, run);
  }
  for (const { stage, group, key } of CURVE_KEYS) {
    const status = stages[stage];
    const run = runOfStage.get(stage);
    if (status?.state === 'skipped') {
      curves.missing[group] = `the ${stage} stage was skipped: ${status.note ?? ''}`.trim();
      continue;
    }
    if (!run) {
      curves.missing[group] = `no MLflow run of the ${stage} stage under run ${handle.runId}`;
      continue;
    }
    const keys = (run.data.metrics ?? []).map((m) => m.key).filter((k) => key.test(k)).sort(byTrailingNumber);
    for (const metric of keys) {
      const history = await client.getMetricHistory(run.info.run_id, metric);
      const curve: Curve = { name: metric, points: history.map((h) => ({ step: h.step, value: h.value })) };
      if (curve.points.length > 0) curves[group].push(curve);
    }
    if (curves[group].length === 0) {
      const reused = stage === 'weightformer' ? run.data.tags?.find((t) => t.key === 'weightformer.registered_version')?.value : undefined;
      const fromRegistry = run.data.tags?.some((t) => t.key === 'weightformer.reuse');
      curves.missing[group] =
        stage === 'teachers'
          ? 'the teachers were read from files: they have no training curve here'
          : fromRegistry && reused
            ? `the WeightFormer was taken from the registry (${reused}): its training curves are in the run that trained it`
            : `the ${stage} stage logged no ${key.source} curve`;
    }
  }
  return curves;
}

/** teacher_2 before teacher_10. */
function byTrailingNumber(a: string, b: string): number {
  const n = (s: string) => Number(/(\d+)/.exec(s)?.[1] ?? 0);
  return n(a) - n(b) || (a < b ? -1 : a > b ? 1 : 0);
}

/**
 * `writeReport`: renders a run's (or a sweep's) HTML report, keeps it in the artifact store (the CLI copies
 * it from there to `<state>/reports/`) and logs it as the MLflow artifact `report/report.html`.
 */
export function reportActivities(deps: ActivityDeps) {
  return {
    async writeReport(request: ReportRequest): Promise<ReportOutput> {
      const client = request.spec.tracking.enabled ? deps.tracker?.client ?? null : null;
      let runId = request.tracking?.runId ?? null;
      let curves: ReportCurves | null = null;
      if (!request.cells) {
        curves =
          client && request.tracking
            ? await readRunCurves(client, request.tracking, request.stages)
            : { teachers: [], weightformerLoss: [], weightformerValidation: [], finetune: [], missing: Object.fromEntries(CURVE_KEYS.map((c) => [c.group, 'tracking is off: training curves are kept only as MLflow metric histories'])) };
      } else if (client) {
        // A sweep has no pipeline run of its own: one run per sweep execution holds its report.
        // Keyed by the Temporal run too: the workflow id is the spec's, reused by the next run of the same file.
        const temporalRunId = Context.current().info.workflowExecution?.runId ?? request.workflowId;
        const experimentId = await client.getOrCreateExperiment(request.spec.tracking.experiment);
        const tags = { 'weightformer.workflow_id': request.workflowId, 'weightformer.kind': 'sweep', 'weightformer.temporal_run_id': temporalRunId };
        const { run } = await client.findOrCreateRunByTags({ experimentId, runName: `${request.spec.name}-sweep`, tags });
        runId = run.info.run_id;
      }
      const input: ReportInput = {
        pipelineName: request.spec.name,
        specHash: request.specHash,
        workflowId: request.workflowId,
        mlflowRunId: runId,
        metrics: request.metrics,
        tags: request.tags,
        stages: request.stages as ReportInput['stages'],
        curves,
        ...(request.cells
          ? { cells: request.cells.map((c) => ({ cell: c.cell, workflowId: c.workflowId, mlflowRunId: c.mlflowRunId, metrics: c.metrics })) }
          : {}),
      };
      const html = await renderReport(input);
      const ref = await deps.store.putBytes(Buffer.from(html, 'utf8'));
      if (client && runId) {
        await client.logArtifact(runId, REPORT_ARTIFACT, html);
        if (request.cells) await client.updateRun(runId, 'FINISHED');
      }
      return { ref, mlflowRunId: client ? runId : null, artifactPath: client && runId ? REPORT_ARTIFACT : null };
    },
  };
}
