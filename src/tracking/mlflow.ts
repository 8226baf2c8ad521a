/**
 * A typed client of the MLflow tracking server's REST API 2.0 (tracking, proxied artifacts, registry).
 *
 * Every call goes through one retry loop: connection errors, per-attempt timeouts, 429 and 5xx are retried
 * with exponential backoff and jitter (429's Retry-After is honoured); any other 4xx fails at once with
 * `MlflowRequestError`, and exhausted retries end in `MlflowUnavailableError`.
 *
 * Calls are written to be safe to repeat, because both this loop and Temporal's activity retries repeat
 * them: experiments and registered models are get-or-create (a concurrent creator is tolerated), a stage's
 * run is found again by its tags (`findOrCreateRunByTags`), re-logging a param with the same value
 * succeeds, and artifacts are overwritten in place.
 *
 * Auth: `token` (by default the MLFLOW_TRACKING_TOKEN environment variable, never a pipeline file) is sent
 * as `Authorization: Bearer`; without it, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD give Basic auth.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { InputError } from '../util/errors';
import { MlflowRequestError, MlflowUnavailableError } from './errors';
import type {
  DatasetInput, DatasetInputSpec, Experiment, FileInfo, KeyValue, LogBatchInput, Metric, MetricInput, ModelVersion,
  RegisteredModel, Run, RunInfo, RunStatus, ViewType,
} from './types';

export { MlflowRequestError, MlflowUnavailableError, MLFLOW_NON_RETRYABLE_ERROR_TYPES } from './errors';
export type * from './types';

/** Server-side limits of one `runs/log-batch` request (mlflow/utils/validation.py). */
export const LOG_BATCH_LIMITS = { metrics: 1000, params: 100, tags: 100, total: 1000 } as const;
/** Datasets per `runs/log-inputs` request (the server allows 1000; kept smaller to bound request size). */
const INPUTS_PER_REQUEST = 100;
/** The input tag holding a dataset's context. */
export const DATASET_CONTEXT_TAG = 'mlflow.data.context';
/** The tag that makes a run nested under another. */
export const PARENT_RUN_ID_TAG = 'mlflow.parentRunId';

export interface RetryOptions {
  /** Total attempts, including the first (>= 1). */
  attempts: number;
  initialDelayMs: number;
  maxDelayMs: number;
}

export interface AttemptInfo {
  /** `METHOD /path` */
  endpoint: string;
  /** 1-based. */
  attempt: number;
}

export interface MlflowClientOptions {
  /** Bearer token; default `process.env.MLFLOW_TRACKING_TOKEN`. Never take it from a pipeline file. */
  token?: string;
  retry?: Partial<RetryOptions>;
  /** Per-attempt timeout of JSON calls; default 30 s. */
  requestTimeoutMs?: number;
  /** Per-attempt timeout of artifact uploads and downloads; default 10 min. */
  artifactTimeoutMs?: number;
  /** Called before every HTTP attempt (tests count attempts with it). */
  onAttempt?: (info: AttemptInfo) => void;
  /** Replaces global fetch (tests). */
  fetch?: typeof fetch;
}

/** How long findOrCreateRunByTags waits after creating before it checks for a racing duplicate. */
export const FIND_OR_CREATE_SETTLE_MS = 300;

export const DEFAULT_RETRY: RetryOptions = { attempts: 5, initialDelayMs: 500, maxDelayMs: 10_000 };

interface RequestOptions {
  query?: Record<string, string | number | undefined>;
  /** JSON body. */
  json?: unknown;
  /** Raw body (artifact upload). */
  bytes?: Uint8Array;
  /** Read the answer as bytes instead of JSON. */
  binary?: boolean;
  timeoutMs?: number;
}

type Json = Record<string, unknown>;

const MAX_SERVER_MESSAGE = 1000;

// ---------------------------------------------------------------------------------------------------------
// Filter strings

/** Quote a value for an MLflow search filter (single quotes, or double quotes if it holds a single one). */
export function filterValue(value: string): string {
  if (!value.includes("'")) return `'${value}'`;
  if (!value.includes('"')) return `"${value}"`;
  throw new InputError(`cannot use a value holding both ' and " in an MLflow filter: ${JSON.stringify(value)}`);
}

/** `tags.\`k1\` = 'v1' AND tags.\`k2\` = 'v2'` */
export function tagsFilter(tags: Record<string, string>): string {
  return Object.entries(tags).map(([k, v]) => {
    if (k.includes('`')) throw new InputError(`cannot use a tag key holding a backtick in an MLflow filter: ${k}`);
    return `tags.\`${k}\` = ${filterValue(v)}`;
  }).join(' AND ');
}

// ---------------------------------------------------------------------------------------------------------
// JSON → typed (REST shapes, normalised)

function str(v: unknown): string {
  return typeof v === 'string' ? v : v === undefined || v === null ? '' : String(v);
}
function optNum(v: unknown): number | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  const n = Number(v);
  return Number.isNaN(n) ? undefined : n;
}
function optStr(v: unknown): string | undefined {
  return v === undefined || v === null ? undefined : str(v);
}
function arr(v: unknown): Json[] {
  return Array.isArray(v) ? (v as Json[]) : [];
}
function kvs(v: unknown): KeyValue[] {
  return arr(v).map((e) => ({ key: str(e.key), value: str(e.value) }));
}
function kvList(r: Record<string, string> | undefined): KeyValue[] {
  return Object.entries(r ?? {}).map(([key, value]) => ({ key, value }));
}
/** Drop undefined fields, so optional ones are absent rather than present-but-undefined. */
function compact<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}
/** MLflow writes NaN/±Infinity as the strings "NaN", "Infinity", "-Infinity". */
function metricValue(v: unknown): number {
  return typeof v === 'number' ? v : Number(v);
}
function metricToWire(v: number): number | string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return 'Infinity';
  if (v === -Infinity) return '-Infinity';
  return v;
}

function toMetric(m: Json): Metric {
  return { key: str(m.key), value: metricValue(m.value), timestamp: optNum(m.timestamp) ?? 0, step: optNum(m.step) ?? 0 };
}

function toExperiment(e: Json): Experiment {
  return compact({
    experiment_id: str(e.experiment_id),
    name: str(e.name),
    artifact_location: str(e.artifact_location),
    lifecycle_stage: str(e.lifecycle_stage),
    creation_time: optNum(e.creation_time),
    last_update_time: optNum(e.last_update_time),
    tags: kvs(e.tags),
  });
}

function toRunInfo(i: Json): RunInfo {
  return compact({
    run_id: str(i.run_id ?? i.run_uuid),
    experiment_id: str(i.experiment_id),
    run_name: str(i.run_name),
    user_id: str(i.user_id),
    status: str(i.status) as RunStatus,
    start_time: optNum(i.start_time),
    end_time: optNum(i.end_time),
    artifact_uri: str(i.artifact_uri),
    lifecycle_stage: str(i.lifecycle_stage),
  });
}

function toRun(r: Json): Run {
  const data = (r.data ?? {}) as Json;
  const inputs = (r.inputs ?? {}) as Json;
  return {
    info: toRunInfo((r.info ?? {}) as Json),
    data: { metrics: arr(data.metrics).map(toMetric), params: kvs(data.params), tags: kvs(data.tags) },
    inputs: {
      dataset_inputs: arr(inputs.dataset_inputs).map((di): DatasetInput => {
        const d = (di.dataset ?? {}) as Json;
        return {
          dataset: compact({
            name: str(d.name),
            digest: str(d.digest),
            source_type: str(d.source_type),
            source: str(d.source),
            schema: optStr(d.schema),
            profile: optStr(d.profile),
          }),
          tags: kvs(di.tags),
        };
      }),
    },
  };
}

function toModelVersion(v: Json): ModelVersion {
  return compact({
    name: str(v.name),
    version: str(v.version),
    source: str(v.source),
    run_id: str(v.run_id),
    status: str(v.status),
    status_message: optStr(v.status_message),
    current_stage: str(v.current_stage),
    description: str(v.description),
    tags: kvs(v.tags),
    aliases: Array.isArray(v.aliases) ? v.aliases.map(str) : [],
    creation_timestamp: optNum(v.creation_timestamp),
    last_updated_timestamp: optNum(v.last_updated_timestamp),
  });
}

function toRegisteredModel(m: Json): RegisteredModel {
  return compact({
    name: str(m.name),
    description: str(m.description),
    tags: kvs(m.tags),
    aliases: arr(m.aliases).map((a) => ({ alias: str(a.alias), version: str(a.version) })),
    latest_versions: arr(m.latest_versions).map(toModelVersion),
    creation_timestamp: optNum(m.creation_timestamp),
    last_updated_timestamp: optNum(m.last_updated_timestamp),
  });
}

/** A key/value list (tags, params) as a record. */
export function kvRecord(list: readonly KeyValue[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of list ?? []) out[e.key] = e.value;
  return out;
}
/** The run's tags as a record. */
export function tagsOf(run: Run): Record<string, string> {
  return kvRecord(run.data.tags);
}
/** The run's params as a record. */
export function paramsOf(run: Run): Record<string, string> {
  return kvRecord(run.data.params);
}
/** The latest value of each of the run's metrics. */
export function latestMetricsOf(run: Run): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of run.data.metrics) out[m.key] = m.value;
  return out;
}

/** Validate and normalise an artifact path relative to the run's artifact root. */
export function normaliseArtifactPath(relPath: string, allowRoot = false): string {
  const p = relPath.replace(/\\/g, '/');
  if (p.startsWith('/')) throw new InputError(`artifact path must be relative: ${JSON.stringify(relPath)}`);
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.some((s) => s === '..')) throw new InputError(`artifact path must not contain '..': ${JSON.stringify(relPath)}`);
  if (parts.length === 0 && !allowRoot) throw new InputError(`artifact path is empty: ${JSON.stringify(relPath)}`);
  return parts.join('/');
}

function encodePath(p: string): string {
  return p.split('/').filter((s) => s !== '').map(encodeURIComponent).join('/');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function toText(v: string | Record<string, unknown>): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

// ---------------------------------------------------------------------------------------------------------

export class MlflowClient {
  readonly baseUrl: string;
  private readonly retry: RetryOptions;
  private readonly requestTimeoutMs: number;
  private readonly artifactTimeoutMs: number;
  private readonly authHeader: string | undefined;
  private readonly onAttempt: ((info: AttemptInfo) => void) | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly artifactUris = new Map<string, string>();

  constructor(baseUrl: string, opts: MlflowClientOptions = {}) {
    let url: URL;
    try {
      url = new URL(baseUrl);
    } catch {
      throw new InputError(`MLflow tracking URI is not a URL: ${JSON.stringify(baseUrl)}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new InputError(`MLflow tracking URI must be http(s)://, got ${url.protocol}`);
    }
    if (url.username !== '' || url.password !== '') {
      throw new InputError('MLflow tracking URI must not hold credentials; set MLFLOW_TRACKING_TOKEN instead');
    }
    url.search = '';
    url.hash = '';
    this.baseUrl = url.toString().replace(/\/+$/, '');
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    if (!(this.retry.attempts >= 1)) throw new InputError('retry.attempts must be >= 1');
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.artifactTimeoutMs = opts.artifactTimeoutMs ?? 600_000;
    this.onAttempt = opts.onAttempt;
    this.fetchImpl = opts.fetch ?? fetch;
    const token = opts.token ?? process.env.MLFLOW_TRACKING_TOKEN;
    const user = process.env.MLFLOW_TRACKING_USERNAME;
    const pass = process.env.MLFLOW_TRACKING_PASSWORD;
    if (token) this.authHeader = `Bearer ${token}`;
    else if (user && pass) this.authHeader = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
  }

  // ----- transport ---------------------------------------------------------------------------------------

  private backoff(attempt: number, retryAfterMs?: number): number {
    const { initialDelayMs, maxDelayMs } = this.retry;
    const exp = Math.min(maxDelayMs, initialDelayMs * 2 ** (attempt - 1));
    const jittered = exp / 2 + Math.random() * (exp / 2);
    return retryAfterMs !== undefined ? Math.max(jittered, Math.min(retryAfterMs, maxDelayMs)) : jittered;
  }

  /** One REST call with the retry loop. JSON answers are parsed; `binary` returns the bytes. */
  private async request<T = Json>(method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', apiPath: string,
    opts: RequestOptions = {}): Promise<T> {
    const endpoint = `${method} ${apiPath.split('?')[0]}`;
    const url = new URL(this.baseUrl + apiPath);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { Accept: opts.binary ? '*/*' : 'application/json' };
    if (this.authHeader) headers.Authorization = this.authHeader;
    let body: string | Uint8Array | undefined;
    if (opts.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.json);
    } else if (opts.bytes !== undefined) {
      headers['Content-Type'] = 'application/octet-stream';
      body = opts.bytes;
    }
    const timeoutMs = opts.timeoutMs ?? this.requestTimeoutMs;
    const { attempts } = this.retry;
    let last = '';
    let lastStatus: number | undefined;
    let lastCode: string | undefined;
    for (let attempt = 1; attempt <= attempts; attempt += 1) {
      this.onAttempt?.({ endpoint, attempt });
      let res: Response;
      try {
        res = await this.fetchImpl(url, { method, headers, body, signal: AbortSignal.timeout(timeoutMs) });
      } catch (err) {
        last = describeFetchError(err, timeoutMs);
        lastStatus = undefined;
        lastCode = undefined;
        if (attempt < attempts) await sleep(this.backoff(attempt));
        continue;
      }
      if (res.ok) {
        try {
          if (opts.binary) return Buffer.from(await res.arrayBuffer()) as T;
          const text = await res.text();
          return (text.trim() === '' ? {} : JSON.parse(text)) as T;
        } catch (err) {
          // The connection broke mid-body (or the body is not JSON: a proxy's error page).
          last = `reading the answer failed: ${describeFetchError(err, timeoutMs)}`;
          if (attempt < attempts) await sleep(this.backoff(attempt));
          continue;
        }
      }
      const { errorCode, message } = await readError(res);
      if (res.status === 429 || res.status >= 500) {
        last = `${res.status} ${errorCode}${message ? `: ${message}` : ''}`;
        lastStatus = res.status;
        lastCode = errorCode;
        if (attempt < attempts) await sleep(this.backoff(attempt, retryAfterMs(res)));
        continue;
      }
      throw new MlflowRequestError(
        `MLflow ${endpoint} failed: ${res.status} ${errorCode}${message ? `: ${message}` : ''}`,
        res.status, errorCode, endpoint, message);
    }
    throw new MlflowUnavailableError(
      `MLflow ${endpoint} at ${this.baseUrl} failed after ${attempts} attempt${attempts === 1 ? '' : 's'}: ${last}`,
      endpoint, attempts, lastStatus, lastCode);
  }

  private post<T = Json>(apiPath: string, json: unknown): Promise<T> {
    return this.request<T>('POST', apiPath, { json });
  }

  private get<T = Json>(apiPath: string, query: RequestOptions['query']): Promise<T> {
    return this.request<T>('GET', apiPath, { query });
  }

  // ----- experiments -------------------------------------------------------------------------------------

  /** The experiment of that name, or undefined if none exists (deleted ones are returned: see lifecycle_stage). */
  async getExperimentByName(name: string): Promise<Experiment | undefined> {
    try {
      const r = await this.get('/api/2.0/mlflow/experiments/get-by-name', { experiment_name: name });
      return toExperiment((r.experiment ?? {}) as Json);
    } catch (err) {
      if (err instanceof MlflowRequestError && err.errorCode === 'RESOURCE_DOES_NOT_EXIST') return undefined;
      throw err;
    }
  }

  async getExperiment(experimentId: string): Promise<Experiment> {
    const r = await this.get('/api/2.0/mlflow/experiments/get', { experiment_id: experimentId });
    return toExperiment((r.experiment ?? {}) as Json);
  }

  /** Create an experiment; fails with RESOURCE_ALREADY_EXISTS if the name is taken. Returns its id. */
  async createExperiment(name: string, opts: { artifactLocation?: string; tags?: Record<string, string> } = {}): Promise<string> {
    const r = await this.post('/api/2.0/mlflow/experiments/create', {
      name, artifact_location: opts.artifactLocation, tags: kvList(opts.tags),
    });
    return str(r.experiment_id);
  }

  /**
   * The id of the experiment called `name`, created if missing. Safe when several callers race: the loser
   * of the create gets RESOURCE_ALREADY_EXISTS and reads the winner's experiment. A deleted experiment of
   * that name is an InputError (restore it in MLflow, or pick another name).
   */
  async getOrCreateExperiment(name: string, opts: { tags?: Record<string, string> } = {}): Promise<string> {
    const check = (e: Experiment): string => {
      if (e.lifecycle_stage === 'deleted') {
        throw new InputError(`MLflow experiment ${JSON.stringify(name)} (id ${e.experiment_id}) is deleted; `
          + 'restore it (mlflow experiments restore) or use another experiment name');
      }
      return e.experiment_id;
    };
    const existing = await this.getExperimentByName(name);
    if (existing) return check(existing);
    try {
      return await this.createExperiment(name, opts);
    } catch (err) {
      if (!(err instanceof MlflowRequestError && err.errorCode === 'RESOURCE_ALREADY_EXISTS')) throw err;
      const winner = await this.getExperimentByName(name);
      if (!winner) throw err;
      return check(winner);
    }
  }

  // ----- runs --------------------------------------------------------------------------------------------

  /** Create a run (RUNNING). `parentRunId` nests it (tag `mlflow.parentRunId`). */
  async createRun(opts: {
    experimentId: string;
    runName?: string;
    tags?: Record<string, string>;
    parentRunId?: string;
    startTime?: number;
  }): Promise<Run> {
    const tags = { ...opts.tags };
    if (opts.parentRunId !== undefined) tags[PARENT_RUN_ID_TAG] = opts.parentRunId;
    const r = await this.post('/api/2.0/mlflow/runs/create', {
      experiment_id: opts.experimentId,
      run_name: opts.runName,
      start_time: opts.startTime ?? Date.now(),
      tags: kvList(tags),
    });
    const run = toRun((r.run ?? {}) as Json);
    if (run.info.artifact_uri) this.artifactUris.set(run.info.run_id, run.info.artifact_uri);
    return run;
  }

  async getRun(runId: string): Promise<Run> {
    const r = await this.get('/api/2.0/mlflow/runs/get', { run_id: runId });
    const run = toRun((r.run ?? {}) as Json);
    if (run.info.artifact_uri) this.artifactUris.set(run.info.run_id, run.info.artifact_uri);
    return run;
  }

  /** Set a run's status (and end time: default now for FINISHED/FAILED/KILLED, none otherwise). */
  async updateRun(runId: string, status: RunStatus, endTime?: number): Promise<RunInfo> {
    const terminal = status === 'FINISHED' || status === 'FAILED' || status === 'KILLED';
    const r = await this.post('/api/2.0/mlflow/runs/update', {
      run_id: runId, status, end_time: endTime ?? (terminal ? Date.now() : undefined),
    });
    return toRunInfo((r.run_info ?? {}) as Json);
  }

  /** Mark a run deleted (it disappears from ACTIVE_ONLY searches). */
  async deleteRun(runId: string): Promise<void> {
    await this.post('/api/2.0/mlflow/runs/delete', { run_id: runId });
  }

  /** One page of runs. `filter` uses MLflow's search syntax (see `tagsFilter`). */
  async searchRunsPage(opts: SearchRunsOptions & { pageToken?: string }): Promise<{ runs: Run[]; nextPageToken?: string }> {
    const r = await this.post('/api/2.0/mlflow/runs/search', {
      experiment_ids: opts.experimentIds,
      filter: opts.filter || undefined,
      order_by: opts.orderBy,
      max_results: Math.min(opts.maxResults ?? 1000, 1000),
      page_token: opts.pageToken,
      run_view_type: opts.runViewType ?? 'ACTIVE_ONLY',
    });
    const next = str(r.next_page_token);
    return next === '' ? { runs: arr(r.runs).map(toRun) } : { runs: arr(r.runs).map(toRun), nextPageToken: next };
  }

  /** Matching runs, following pages until `maxResults` (default 1000) runs or the last page. */
  async searchRuns(opts: SearchRunsOptions): Promise<Run[]> {
    const limit = opts.maxResults ?? 1000;
    const out: Run[] = [];
    let pageToken: string | undefined;
    do {
      const page = await this.searchRunsPage({ ...opts, maxResults: limit - out.length, pageToken });
      out.push(...page.runs);
      pageToken = page.nextPageToken;
    } while (pageToken !== undefined && out.length < limit);
    return out.slice(0, limit);
  }

  /**
   * The active run of `experimentId` carrying every tag of `matchTags` (default: `tags`) and, when given,
   * the parent `parentRunId`; created with `tags` if none exists. A retried stage therefore reuses its run
   * instead of opening a second one; a reused run that had ended is set back to RUNNING. Two concurrent
   * callers converge: after creating, the oldest matching run wins and a losing duplicate is deleted.
   */
  async findOrCreateRunByTags(opts: {
    experimentId: string;
    runName?: string;
    tags: Record<string, string>;
    matchTags?: Record<string, string>;
    parentRunId?: string;
  }): Promise<{ run: Run; created: boolean }> {
    const match = { ...(opts.matchTags ?? opts.tags) };
    if (opts.parentRunId !== undefined) match[PARENT_RUN_ID_TAG] = opts.parentRunId;
    if (Object.keys(match).length === 0) throw new InputError('findOrCreateRunByTags needs at least one tag to match on');
    const find = async (): Promise<Run[]> => {
      const runs = await this.searchRuns({ experimentIds: [opts.experimentId], filter: tagsFilter(match) });
      // Oldest first; run id breaks ties so every caller picks the same run.
      return runs.sort((a, b) => (a.info.start_time ?? 0) - (b.info.start_time ?? 0)
        || (a.info.run_id < b.info.run_id ? -1 : a.info.run_id > b.info.run_id ? 1 : 0));
    };
    const found = (await find())[0];
    if (found) {
      if (found.info.status !== 'RUNNING') found.info = await this.updateRun(found.info.run_id, 'RUNNING');
      return { run: found, created: false };
    }
    const run = await this.createRun({
      experimentId: opts.experimentId, runName: opts.runName, tags: { ...opts.tags, ...match },
      parentRunId: opts.parentRunId,
    });
    // Let a racing caller's create land before deciding: both then see both runs and pick the same
    // (oldest) one. Without the pause, a caller that searches before the other's create keeps its own run
    // while the other, ordered by client timestamps, may keep its own too. Only the create path pays this.
    await sleep(FIND_OR_CREATE_SETTLE_MS);
    const winner = (await find())[0];
    if (winner && winner.info.run_id !== run.info.run_id) {
      await this.deleteRun(run.info.run_id);
      return { run: winner, created: false };
    }
    return { run, created: true };
  }

  // ----- metrics, params, tags ---------------------------------------------------------------------------

  /**
   * Log metrics, params and tags, split into requests within the server's limits (1000 metrics,
   * 100 params, 100 tags, 1000 in all). Params are immutable: logging the value a param already has
   * succeeds (so retries are harmless), a different value throws `MlflowRequestError` naming the param.
   */
  async logBatch(runId: string, batch: LogBatchInput): Promise<void> {
    const params = new Map<string, string>();
    for (const p of batch.params ?? []) {
      const value = String(p.value);
      const prev = params.get(p.key);
      if (prev !== undefined && prev !== value) {
        throw new InputError(`param ${JSON.stringify(p.key)} given twice with different values `
          + `(${JSON.stringify(prev)}, ${JSON.stringify(value)})`);
      }
      params.set(p.key, value);
    }
    const tags = new Map<string, string>();
    for (const t of batch.tags ?? []) tags.set(t.key, t.value); // last one wins, as if set one after the other
    const now = Date.now();
    const metrics = (batch.metrics ?? []).map((m) => ({
      key: m.key, value: metricToWire(m.value), timestamp: m.timestamp ?? now, step: m.step ?? 0,
    }));
    const ps = [...params].map(([key, value]) => ({ key, value }));
    const ts = [...tags].map(([key, value]) => ({ key, value }));
    let pi = 0;
    let ti = 0;
    let mi = 0;
    while (pi < ps.length || ti < ts.length || mi < metrics.length) {
      const p = ps.slice(pi, pi + LOG_BATCH_LIMITS.params);
      const t = ts.slice(ti, ti + LOG_BATCH_LIMITS.tags);
      const room = Math.min(LOG_BATCH_LIMITS.metrics, LOG_BATCH_LIMITS.total - p.length - t.length);
      const m = metrics.slice(mi, mi + room);
      pi += p.length;
      ti += t.length;
      mi += m.length;
      try {
        await this.post('/api/2.0/mlflow/runs/log-batch', {
          run_id: runId,
          metrics: m.length ? m : undefined,
          params: p.length ? p : undefined,
          tags: t.length ? t : undefined,
        });
      } catch (err) {
        throw await this.explainParamConflict(runId, p, err);
      }
    }
  }

  /** Turn the server's "Changing param values is not allowed" into an error naming each param. */
  private async explainParamConflict(runId: string, sent: KeyValue[], err: unknown): Promise<unknown> {
    if (!(err instanceof MlflowRequestError && err.errorCode === 'INVALID_PARAMETER_VALUE'
      && /changing param values is not allowed/i.test(err.serverMessage))) return err;
    let logged: Record<string, string>;
    try {
      logged = paramsOf(await this.getRun(runId));
    } catch {
      return err;
    }
    const conflicts = sent.filter((p) => logged[p.key] !== undefined && logged[p.key] !== p.value)
      .map((p) => `${p.key}: logged ${JSON.stringify(logged[p.key])}, now ${JSON.stringify(p.value)}`);
    if (conflicts.length === 0) return err;
    return new MlflowRequestError(
      `MLflow run ${runId}: params are immutable and already logged with other values (${conflicts.join('; ')}); `
      + 'log the new value under another key or start a new run',
      err.status, err.errorCode, err.endpoint, err.serverMessage);
  }

  async logMetrics(runId: string, metrics: MetricInput[]): Promise<void> {
    await this.logBatch(runId, { metrics });
  }

  async logParams(runId: string, params: Record<string, string | number | boolean>): Promise<void> {
    await this.logBatch(runId, { params: Object.entries(params).map(([key, value]) => ({ key, value })) });
  }

  async setTag(runId: string, key: string, value: string): Promise<void> {
    await this.logBatch(runId, { tags: [{ key, value }] });
  }

  async setTags(runId: string, tags: Record<string, string>): Promise<void> {
    await this.logBatch(runId, { tags: kvList(tags) });
  }

  /** Every logged point of one metric, ordered by step, then timestamp. */
  async getMetricHistory(runId: string, key: string): Promise<Metric[]> {
    const out: Metric[] = [];
    let pageToken: string | undefined;
    do {
      const r = await this.get('/api/2.0/mlflow/metrics/get-history', {
        run_id: runId, metric_key: key, max_results: 25_000, page_token: pageToken,
      });
      out.push(...arr(r.metrics).map(toMetric));
      const next = str(r.next_page_token);
      pageToken = next === '' ? undefined : next;
    } while (pageToken !== undefined);
    return out.sort((a, b) => a.step - b.step || a.timestamp - b.timestamp);
  }

  // ----- dataset inputs ----------------------------------------------------------------------------------

  /** Record the datasets a run used (visible in `getRun(...).inputs`); logging the same one again is a no-op. */
  async logInputs(runId: string, datasets: DatasetInputSpec[]): Promise<void> {
    const wire = datasets.map((d) => {
      const tags = { ...d.tags };
      if (d.context !== undefined) tags[DATASET_CONTEXT_TAG] = d.context;
      return {
        dataset: {
          name: d.name,
          digest: d.digest,
          source_type: d.sourceType,
          source: toText(d.source),
          schema: d.schema === undefined ? undefined : toText(d.schema),
          profile: d.profile === undefined ? undefined : toText(d.profile),
        },
        tags: kvList(tags),
      };
    });
    for (let i = 0; i < wire.length; i += INPUTS_PER_REQUEST) {
      await this.post('/api/2.0/mlflow/runs/log-inputs', { run_id: runId, datasets: wire.slice(i, i + INPUTS_PER_REQUEST) });
    }
  }

  // ----- artifacts (through the server's artifact proxy) -------------------------------------------------

  /** `<experiment_id>/<run_id>/artifacts`: the run's root under /api/2.0/mlflow-artifacts/artifacts/. */
  private async artifactRoot(runId: string): Promise<string> {
    const uri = this.artifactUris.get(runId) ?? (await this.getRun(runId)).info.artifact_uri;
    const proxied = '/api/2.0/mlflow-artifacts/artifacts/';
    let root: string | undefined;
    if (uri.startsWith('mlflow-artifacts:')) {
      root = new URL(uri).pathname;
    } else if (/^https?:/.test(uri) && new URL(uri).pathname.includes(proxied)) {
      const p = new URL(uri).pathname;
      root = p.slice(p.indexOf(proxied) + proxied.length);
    }
    if (root === undefined) {
      throw new InputError(`MLflow run ${runId} stores artifacts at ${JSON.stringify(uri)}, which this client `
        + 'cannot reach: start the server with --serve-artifacts so artifacts go through its proxy');
    }
    this.artifactUris.set(runId, uri);
    return root.split('/').filter((s) => s !== '').map(decodeURIComponent).join('/');
  }

  /** Upload (or overwrite) one artifact file at `relPath` under the run's artifact root. */
  async logArtifact(runId: string, relPath: string, data: Uint8Array | string): Promise<void> {
    const rel = normaliseArtifactPath(relPath);
    const root = await this.artifactRoot(runId);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    await this.request('PUT', `/api/2.0/mlflow-artifacts/artifacts/${encodePath(`${root}/${rel}`)}`, {
      bytes, timeoutMs: this.artifactTimeoutMs,
    });
  }

  /** Upload a local file (read into memory) as artifact `relPath` (default: its base name). */
  async logArtifactFile(runId: string, localPath: string, relPath = path.basename(localPath)): Promise<void> {
    await this.logArtifact(runId, relPath, await fs.readFile(localPath));
  }

  /** Direct children of `relPath` (default the root); `path` is relative to the run's artifact root. */
  async listArtifacts(runId: string, relPath = ''): Promise<FileInfo[]> {
    const rel = normaliseArtifactPath(relPath, true);
    const out: FileInfo[] = [];
    let pageToken: string | undefined;
    do {
      const r = await this.get('/api/2.0/mlflow/artifacts/list', {
        run_id: runId, path: rel === '' ? undefined : rel, page_token: pageToken,
      });
      for (const f of arr(r.files)) {
        out.push(compact({ path: str(f.path), is_dir: f.is_dir === true, file_size: optNum(f.file_size) }));
      }
      const next = str(r.next_page_token);
      pageToken = next === '' ? undefined : next;
    } while (pageToken !== undefined);
    return out;
  }

  async downloadArtifact(runId: string, relPath: string): Promise<Buffer> {
    const rel = normaliseArtifactPath(relPath);
    const root = await this.artifactRoot(runId);
    return this.request<Buffer>('GET', `/api/2.0/mlflow-artifacts/artifacts/${encodePath(`${root}/${rel}`)}`, {
      binary: true, timeoutMs: this.artifactTimeoutMs,
    });
  }

  // ----- model registry ----------------------------------------------------------------------------------

  async getRegisteredModel(name: string): Promise<RegisteredModel> {
    const r = await this.get('/api/2.0/mlflow/registered-models/get', { name });
    return toRegisteredModel((r.registered_model ?? {}) as Json);
  }

  /** Create the registered model, or return the existing one of that name. */
  async createRegisteredModel(name: string, opts: { description?: string; tags?: Record<string, string> } = {}): Promise<RegisteredModel> {
    try {
      const r = await this.post('/api/2.0/mlflow/registered-models/create', {
        name, description: opts.description, tags: kvList(opts.tags),
      });
      return toRegisteredModel((r.registered_model ?? {}) as Json);
    } catch (err) {
      if (err instanceof MlflowRequestError && err.errorCode === 'RESOURCE_ALREADY_EXISTS') return this.getRegisteredModel(name);
      throw err;
    }
  }

  /**
   * Register `source` (e.g. `<run artifact_uri>/model`) as a new version of registered model `name` (which
   * must exist). Waits while the version is PENDING_REGISTRATION. Each call adds a version: for retried
   * stages use `findOrCreateModelVersion`.
   */
  createModelVersion(name: string, source: string, runId?: string, tags?: Record<string, string>): Promise<ModelVersion>;
  createModelVersion(opts: CreateModelVersionOptions): Promise<ModelVersion>;
  async createModelVersion(nameOrOpts: string | CreateModelVersionOptions, source?: string, runId?: string,
    tags?: Record<string, string>): Promise<ModelVersion> {
    const o: CreateModelVersionOptions = typeof nameOrOpts === 'string'
      ? { name: nameOrOpts, source: source ?? '', runId, tags }
      : nameOrOpts;
    const r = await this.post('/api/2.0/mlflow/model-versions/create', {
      name: o.name, source: o.source, run_id: o.runId, tags: kvList(o.tags), description: o.description,
    });
    let mv = toModelVersion((r.model_version ?? {}) as Json);
    const deadline = Date.now() + (o.waitMs ?? 60_000);
    while (mv.status === 'PENDING_REGISTRATION' && Date.now() < deadline) {
      await sleep(500);
      mv = await this.getModelVersion(o.name, mv.version);
    }
    if (mv.status === 'FAILED_REGISTRATION') {
      throw new MlflowRequestError(`MLflow model version ${o.name}/${mv.version} failed to register: ${mv.status_message ?? ''}`,
        200, 'FAILED_REGISTRATION', 'POST /api/2.0/mlflow/model-versions/create', mv.status_message ?? '');
    }
    return mv;
  }

  /**
   * The oldest version of `name` registered from `runId` with the same `source`, or a new one (the
   * registered model is created if missing): a retried registration does not add a second version.
   * MLflow has no create-if-absent, so two registrations at once (an attempt that outlived its timeout and
   * its retry) can both create one; each then looks again, and the one whose version is not the oldest
   * deletes its own and returns the oldest: both end with the same single version.
   */
  async findOrCreateModelVersion(opts: CreateModelVersionOptions & { runId: string }): Promise<{ version: ModelVersion; created: boolean }> {
    await this.createRegisteredModel(opts.name);
    const oldestSame = async () => {
      const versions = await this.searchModelVersions({
        filter: `name = ${filterValue(opts.name)} AND run_id = ${filterValue(opts.runId)}`,
      });
      return versions.filter((v) => v.source === opts.source).sort((a, b) => Number(a.version) - Number(b.version))[0];
    };
    const same = await oldestSame();
    if (same) return { version: same, created: false };
    const mine = await this.createModelVersion(opts);
    const oldest = await oldestSame();
    if (!oldest || oldest.version === mine.version) return { version: mine, created: true };
    await this.deleteModelVersion(opts.name, mine.version);
    return { version: oldest, created: false };
  }

  /** Deletes one version of a registered model; one already gone (a retried delete) is not an error. */
  async deleteModelVersion(name: string, version: string | number): Promise<void> {
    try {
      await this.request('DELETE', '/api/2.0/mlflow/model-versions/delete', { json: { name, version: String(version) } });
    } catch (err) {
      if (err instanceof MlflowRequestError && err.errorCode === 'RESOURCE_DOES_NOT_EXIST') return;
      throw err;
    }
  }

  async getModelVersion(name: string, version: string | number): Promise<ModelVersion> {
    const r = await this.get('/api/2.0/mlflow/model-versions/get', { name, version: String(version) });
    return toModelVersion((r.model_version ?? {}) as Json);
  }

  /** One page of model versions; `filter` e.g. `name = 'student'` or `run_id = '...'`. */
  async searchModelVersionsPage(opts: SearchModelVersionsOptions & { pageToken?: string } = {}):
    Promise<{ modelVersions: ModelVersion[]; nextPageToken?: string }> {
    const q = new URLSearchParams();
    if (opts.filter) q.set('filter', opts.filter);
    q.set('max_results', String(Math.min(opts.maxResults ?? 1000, 10_000)));
    for (const o of opts.orderBy ?? []) q.append('order_by', o);
    if (opts.pageToken) q.set('page_token', opts.pageToken);
    const r = await this.request('GET', `/api/2.0/mlflow/model-versions/search?${q.toString()}`);
    const next = str(r.next_page_token);
    const modelVersions = arr(r.model_versions).map(toModelVersion);
    return next === '' ? { modelVersions } : { modelVersions, nextPageToken: next };
  }

  /** Matching model versions (a filter string or options), following pages up to `maxResults` (default 1000). */
  async searchModelVersions(filterOrOpts: string | SearchModelVersionsOptions = {}): Promise<ModelVersion[]> {
    const opts = typeof filterOrOpts === 'string' ? { filter: filterOrOpts } : filterOrOpts;
    const limit = opts.maxResults ?? 1000;
    const out: ModelVersion[] = [];
    let pageToken: string | undefined;
    do {
      const page = await this.searchModelVersionsPage({ ...opts, maxResults: limit - out.length, pageToken });
      out.push(...page.modelVersions);
      pageToken = page.nextPageToken;
    } while (pageToken !== undefined && out.length < limit);
    return out.slice(0, limit);
  }

  /** Point `alias` (e.g. `champion`) at a version; moving it is allowed and repeating it is a no-op. */
  async setRegisteredModelAlias(name: string, alias: string, version: string | number): Promise<void> {
    await this.post('/api/2.0/mlflow/registered-models/alias', { name, alias, version: String(version) });
  }

  async getModelVersionByAlias(name: string, alias: string): Promise<ModelVersion> {
    const r = await this.get('/api/2.0/mlflow/registered-models/alias', { name, alias });
    return toModelVersion((r.model_version ?? {}) as Json);
  }

  /** Set (or overwrite) one tag of a model version; repeating it is a no-op. */
  async setModelVersionTag(name: string, version: string | number, key: string, value: string): Promise<void> {
    await this.post('/api/2.0/mlflow/model-versions/set-tag', { name, version: String(version), key, value });
  }
}

export interface SearchRunsOptions {
  experimentIds: string[];
  filter?: string;
  orderBy?: string[];
  /** Total runs wanted (searchRuns) or page size (searchRunsPage, at most 1000). Default 1000. */
  maxResults?: number;
  /** Default ACTIVE_ONLY. */
  runViewType?: ViewType;
}

export interface SearchModelVersionsOptions {
  filter?: string;
  maxResults?: number;
  orderBy?: string[];
}

export interface CreateModelVersionOptions {
  name: string;
  source: string;
  runId?: string;
  tags?: Record<string, string>;
  description?: string;
  /** How long to wait while PENDING_REGISTRATION; default 60 s. */
  waitMs?: number;
}

// ---------------------------------------------------------------------------------------------------------

function describeFetchError(err: unknown, timeoutMs: number): string {
  if (err instanceof Error) {
    if (err.name === 'TimeoutError' || err.name === 'AbortError') return `no answer within ${timeoutMs} ms`;
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof Error) {
      const code = (cause as { code?: unknown }).code;
      return `${err.message} (${typeof code === 'string' ? `${code}: ` : ''}${cause.message})`;
    }
    return err.message;
  }
  return String(err);
}

async function readError(res: Response): Promise<{ errorCode: string; message: string }> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    /* body lost */
  }
  let errorCode = `HTTP_${res.status}`;
  let message = text.trim();
  try {
    const j: unknown = JSON.parse(text);
    if (isRecord(j)) {
      if (typeof j.error_code === 'string') errorCode = j.error_code;
      if (typeof j.message === 'string') message = j.message;
    }
  } catch {
    /* not JSON (a proxy's page, a middleware's plain-text refusal) */
  }
  if (message.length > MAX_SERVER_MESSAGE) message = `${message.slice(0, MAX_SERVER_MESSAGE)}…`;
  return { errorCode, message };
}

function retryAfterMs(res: Response): number | undefined {
  const h = res.headers.get('retry-after');
  if (!h) return undefined;
  const s = Number(h);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const t = Date.parse(h);
  return Number.isNaN(t) ? undefined : Math.max(0, t - Date.now());
}
