// Types shared by the workflow, the activities and the client. Type-only: the workflow sandbox imports
// nothing at runtime from outside workflows/.
import type { PipelineSpec, StageName } from '../src/spec/types';

export type { PipelineSpec, StageName };

/** A stored artifact, `sha256:<hex>`. */
export type Ref = string;

export interface TrackingHandle {
  experimentId: string;
  /** The pipeline's parent MLflow run. */
  runId: string;
}

export interface MatrixCell {
  /** The dotted-path values this cell sets, e.g. `{ seed: 2 }`. */
  cell: Record<string, unknown>;
  spec: PipelineSpec;
  hash: string;
}

export interface PipelineInput {
  spec: PipelineSpec;
  specHash: string;
  /** Pipeline file the spec came from (for the record only). */
  file?: string;
  noCache: boolean;
  /** Task queues are `<prefix>-cpu` / `<prefix>-gpu` when set (see queues.ts), else `cpu` / `gpu`. */
  queuePrefix?: string;
  /** Sweep cells, expanded by the client; when present each runs as a child workflow. */
  cells?: MatrixCell[];
  /** Results of cells finished before a continue-as-new. */
  completedCells?: CellResult[];
  /** MLflow run a sweep cell nests under. */
  parentRunId?: string;
  parentExperimentId?: string;
  /** Tags the pipeline's MLflow run gets besides its own (a triggered consolidation's lineage). */
  tags?: Record<string, string>;
}

export interface StageInput {
  spec: PipelineSpec;
  specHash: string;
  noCache: boolean;
  tracking: TrackingHandle | null;
  workflowId: string;
  /** References produced by earlier stages. */
  inputs: Record<string, Ref | Ref[]>;
  /** Metrics of earlier stages (e.g. the timings KD is compared with). */
  metrics: Record<string, number>;
}

export interface StageOutput {
  outputs: Record<string, Ref | Ref[]>;
  metrics: Record<string, number>;
  /** Facts about how the stage ran, e.g. `weightformer.backend`; logged as run tags. */
  tags?: Record<string, string>;
  cacheHit: boolean;
  seconds: number;
}

export type StageState = 'pending' | 'running' | 'completed' | 'cached' | 'skipped' | 'failed' | 'cancelled';

export interface StageStatus {
  state: StageState;
  cacheHit?: boolean;
  seconds?: number;
  /** Why a stage was skipped or failed. */
  note?: string;
}

export interface PipelineProgress {
  name: string;
  /** The stage running now (or the last one to run). */
  stage: StageName | null;
  state: 'running' | 'completed' | 'failed' | 'cancelled';
  stages: Partial<Record<StageName, StageStatus>>;
  cells?: { total: number; completed: number };
}

export interface CellResult {
  cell: Record<string, unknown>;
  workflowId: string;
  mlflowRunId: string | null;
  metrics: Record<string, number>;
  tags: Record<string, string>;
}

export interface PipelineResult {
  status: 'completed';
  workflowId: string;
  mlflowRunId: string | null;
  mlflowExperimentId: string | null;
  metrics: Record<string, number>;
  tags: Record<string, string>;
  stages: Partial<Record<StageName, StageStatus>>;
  /** Artifact references of the outputs (student, report). */
  artifacts: Record<string, Ref | Ref[]>;
  cells?: CellResult[];
  /** The HTML report: where it was written, or why it was not. Absent in runs recorded before reports. */
  report?: ReportStatus;
}

export interface ReportStatus {
  state: 'written' | 'failed';
  /** The HTML in the artifact store (also `artifacts.report`). */
  ref?: Ref;
  /** The MLflow run holding it as `artifactPath`. */
  mlflowRunId?: string | null;
  artifactPath?: string | null;
  /** Why it was not written. */
  note?: string;
}

/** Heartbeat details of a long stage: read by the CLI through describe(), never stored in history. */
export interface StageHeartbeat {
  phase: string;
  step: number;
  totalSteps: number;
  loss?: number;
  etaSeconds?: number;
  /** What a retried attempt resumes from (references into the store). */
  checkpoint?: unknown;
}

/** One consolidation the watcher runs: the newest teacher versions and the child pipeline's spec. */
export interface ConsolidationPlan {
  /** `<registered model>/<version>`, oldest first. */
  teacherVersions: string[];
  spec: PipelineSpec;
  specHash: string;
}

/** What one poll of the registry found. */
export interface TeacherPoll {
  /** Every teacher version (`<name>/<version>`), oldest first. */
  teacherVersions: string[];
  /** The consolidation of the newest ones; null while fewer than 2 exist. */
  plan: ConsolidationPlan | null;
}

/** Where a registered student came from (its model version's lineage tags). */
export interface StudentLineage {
  teacherVersions: string[];
  /** `models:/<name>/<version>` of the WeightFormer that generated it; null without one. */
  weightformerVersion: string | null;
  specHash: string;
  workflowId: string;
  watcherWorkflowId: string;
}

/** One finished consolidation, as the watcher reports it. */
export interface ConsolidationRecord {
  teacherVersions: string[];
  workflowId: string;
  /** The registered student version (`<name>/<version>`). */
  studentVersion: string | null;
  weightformerVersion: string | null;
}

export interface WatchInput {
  /** The pipeline file's spec, with its `trigger`. */
  spec: PipelineSpec;
  specHash: string;
  file?: string;
  queuePrefix?: string;
  /** Carried over a continue-as-new: the teacher set consolidated last (so it is not consolidated again). */
  lastTeacherVersions?: string[];
  consolidations?: ConsolidationRecord[];
  /** Polls done by earlier runs of this watcher (the count goes on across continue-as-new). */
  pollsBefore?: number;
}

export interface WatchStatus {
  state: 'watching' | 'consolidating' | 'stopped';
  polls: number;
  /** Teacher versions seen at the last poll. */
  teacherVersions: string[];
  consolidations: ConsolidationRecord[];
  /**
   * The last consolidation's failure, if it failed, or the last registry poll's (`registry poll: …`, cleared
   * by the next successful poll); the watcher keeps watching either way.
   */
  lastError?: string;
}
