// What a report is made of. Plain data: the report module knows nothing of Temporal or MLflow, so it can be
// rendered from fixtures, from a finished workflow's result, or from a sweep's cells.

export interface CurvePoint {
  step: number;
  value: number;
}

/** One line of a chart, e.g. `teacher_0.loss` over training steps. */
export interface Curve {
  name: string;
  points: CurvePoint[];
}

/**
 * Training curves of one pipeline run, as its stages logged them to MLflow (one point per logged step).
 * A group left empty is shown with the reason in `missing` (stage skipped, tracking off, ...).
 */
export interface ReportCurves {
  /** Training loss of each evaluated teacher (`teacher_<i>.loss`). */
  teachers: Curve[];
  /** WeightFormer meta-training loss on the consolidation set (`weightformer.loss`). */
  weightformerLoss: Curve[];
  /** WeightFormer validation accuracy of the generated students, on validation ensembles (`weightformer.val_acc`). */
  weightformerValidation: Curve[];
  /** Fine-tune loss of the generated student (`finetune.loss`). */
  finetune: Curve[];
  /** Why a group has no curve, by group name. */
  missing: Partial<Record<'teachers' | 'weightformerLoss' | 'weightformerValidation' | 'finetune', string>>;
}

export interface ReportStage {
  state: string;
  cacheHit?: boolean;
  seconds?: number;
  note?: string;
}

/** One finished cell of a matrix sweep. */
export interface ReportCell {
  /** The dotted-path values this cell set, e.g. `{ "teachers.count": 4, seed: 2 }`. */
  cell: Record<string, unknown>;
  workflowId: string;
  mlflowRunId: string | null;
  metrics: Record<string, number>;
}

export interface ReportInput {
  pipelineName: string;
  specHash: string;
  workflowId: string;
  mlflowRunId: string | null;
  /** Single run: the run's final metrics. Sweep: empty (the cells hold theirs). */
  metrics: Record<string, number>;
  tags: Record<string, string>;
  stages: Record<string, ReportStage>;
  /** Single run only; null for a sweep (each cell's own report has its curves). */
  curves: ReportCurves | null;
  /** Present for a sweep. */
  cells?: ReportCell[];
}
