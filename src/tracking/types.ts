/**
 * Entities of the MLflow REST API 2.0, typed as the server's JSON (snake_case), normalised by the client:
 * lists are always present (the server omits empty ones), int64 fields are numbers, metric values are
 * numbers (the server writes NaN/±Infinity as strings). `tagsOf`/`paramsOf`/`latestMetricsOf` in
 * ./mlflow turn the key/value lists into records.
 */

export type RunStatus = 'RUNNING' | 'SCHEDULED' | 'FINISHED' | 'FAILED' | 'KILLED';
export type ViewType = 'ACTIVE_ONLY' | 'DELETED_ONLY' | 'ALL';

export interface KeyValue {
  key: string;
  value: string;
}

export interface Experiment {
  experiment_id: string;
  name: string;
  artifact_location: string;
  /** `active` or `deleted`. */
  lifecycle_stage: string;
  creation_time?: number;
  last_update_time?: number;
  tags: KeyValue[];
}

export interface RunInfo {
  run_id: string;
  experiment_id: string;
  run_name: string;
  user_id: string;
  status: RunStatus;
  start_time?: number;
  end_time?: number;
  /** With a proxied artifact store: `mlflow-artifacts:/<experiment_id>/<run_id>/artifacts`. */
  artifact_uri: string;
  lifecycle_stage: string;
}

export interface Metric {
  key: string;
  /** NaN and ±Infinity round-trip (MLflow stores ±Infinity as ±max double). */
  value: number;
  /** Milliseconds since the epoch. */
  timestamp: number;
  step: number;
}

export interface RunData {
  /** Latest value of each metric. */
  metrics: Metric[];
  params: KeyValue[];
  tags: KeyValue[];
}

export interface Dataset {
  name: string;
  digest: string;
  source_type: string;
  /** Usually JSON, e.g. `{"uri": "..."}`. */
  source: string;
  schema?: string;
  profile?: string;
}

export interface DatasetInput {
  dataset: Dataset;
  /** `mlflow.data.context` holds the context (train/validation/test/...). */
  tags: KeyValue[];
}

export interface Run {
  info: RunInfo;
  data: RunData;
  inputs: { dataset_inputs: DatasetInput[] };
}

export interface FileInfo {
  /** Relative to the run's artifact root, `/`-separated. */
  path: string;
  is_dir: boolean;
  file_size?: number;
}

export interface ModelVersion {
  name: string;
  version: string;
  source: string;
  run_id: string;
  /** READY, PENDING_REGISTRATION or FAILED_REGISTRATION. */
  status: string;
  status_message?: string;
  current_stage: string;
  description: string;
  tags: KeyValue[];
  aliases: string[];
  creation_timestamp?: number;
  last_updated_timestamp?: number;
}

export interface RegisteredModel {
  name: string;
  description: string;
  tags: KeyValue[];
  aliases: { alias: string; version: string }[];
  latest_versions: ModelVersion[];
  creation_timestamp?: number;
  last_updated_timestamp?: number;
}

// ----- client inputs (camelCase) -------------------------------------------------------------------------

/** A metric point to log; `timestamp` defaults to now, `step` to 0. */
export interface MetricInput {
  key: string;
  value: number;
  step?: number;
  timestamp?: number;
}

export interface LogBatchInput {
  metrics?: MetricInput[];
  params?: { key: string; value: string | number | boolean }[];
  tags?: KeyValue[];
}

export interface DatasetInputSpec {
  name: string;
  /** At most 36 characters (server limit). */
  digest: string;
  sourceType: string;
  /** A string is sent as is; an object is JSON-encoded. */
  source: string | Record<string, unknown>;
  schema?: string | Record<string, unknown>;
  profile?: string | Record<string, unknown>;
  /** Stored as the input tag `mlflow.data.context` (e.g. `train`, `validation`, `test`). */
  context?: string;
  tags?: Record<string, string>;
}
