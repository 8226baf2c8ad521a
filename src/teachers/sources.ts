/**
 * Teacher sources: a string in a pipeline file that names a trained model to consolidate, resolved into the
 * host parameters of its family (the family of `expected`, the pipeline's architecture; an MLP without
 * one). Three forms are accepted, in two formats (a `.safetensors` PyTorch state_dict — torch-mlp,
 * torch-cnn, torch-resnet or torch-vit by family — or a TF.js layers `model.json` with its weight files,
 * for the mlp and cnn families):
 *
 * - a **path**, relative to the pipeline file's folder or absolute: a `.safetensors` file, a `model.json`,
 *   or a folder holding `model.json` or exactly one `.safetensors`. It must resolve, after following
 *   symbolic links, under one of the allowed roots (`resolveAllowedPath`), and so must every weight file a
 *   `model.json` names: `../` tricks and links out of a root are refused.
 * - an **`http://` or `https://` URL**: downloaded with a connect timeout, an overall timeout and a byte
 *   limit enforced while streaming (an announced Content-Length above it is refused before reading); a
 *   `model.json` URL brings the weight files its manifest names, resolved relative to it (plain relative
 *   names only). Redirects are followed (at most `maxRedirects`, never from https to http).
 * - **`models:/<name>/<version>`** (or `models:/<name>@<alias>`) from the MLflow model registry: the
 *   version's source must lie in its run's artifacts, as the pipeline registers students
 *   (`<run artifact_uri>/student` holding `model.json` + `weights.bin`, or `model.safetensors` for ResNets
 *   and ViTs; see activities/tracking.ts), so a
 *   student registered by one pipeline is a teacher for the next. That folder (or a `.safetensors` file)
 *   is downloaded through the project's MLflow client.
 *
 * Any other scheme (`file:`, `ftp:`, `data:`, `s3:`, `runs:`, …) is refused. Downloads are written into
 * a fresh temporary folder inside `cacheDir`, validated there, and renamed, complete and valid, to
 * `cacheDir/<sha256>` (a content address: two downloads of the same bytes share a folder, and a rename
 * never replaces a folder another reader uses); on any failure the temporary folder is removed, so nothing
 * half-written (or invalid) is left.
 *
 * Errors: every refusal (a path outside the roots, a scheme, credentials in a URL, a size over the limit, a
 * timeout, an HTTP 4xx, a missing registry version, a file that fails validation) is an InputError
 * (AccessError for paths and schemes), which the workflow never retries. Failures a retry can cure (the
 * server answering 5xx/429, a connection refused or cut mid-transfer) are `TeacherDownloadError`s, which it
 * retries; the MLflow client's own MlflowUnavailableError passes through for the same reason.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, promises as fs, type Stats } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TFJS_MODEL_JSON } from '../ml/tfjs-format';
import { readTeacherFile, type ParamsOfArch, type TeacherFileFormat } from '../runner/families';
import type { ArchitectureSpec, ModelArchitecture } from '../spec/types';
import { resolveAllowedPath } from '../store/paths';
import { MlflowRequestError, type MlflowClient } from '../tracking/mlflow';
import { AccessError, InputError } from '../util/errors';
import { checkedUrl, parseTeacherSource, redactSource, type TeacherSource } from './source-kind';

export { parseTeacherSource, type TeacherSource } from './source-kind';

export const DEFAULT_MAX_TEACHER_BYTES = 512 * 1024 * 1024;
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_DOWNLOAD_TIMEOUT_MS = 300_000;
export const DEFAULT_MAX_REDIRECTS = 5;
const SAFETENSORS_EXT = '.safetensors';
/** The name a downloaded safetensors teacher gets in its cache folder. */
const CACHED_SAFETENSORS = `model${SAFETENSORS_EXT}`;

/** A download failed in a way a later attempt may not (server error, connection refused or cut). */
export class TeacherDownloadError extends Error {
  override name = 'TeacherDownloadError';
}

export type TeacherFormat = TeacherFileFormat;

/** `A`: the architecture the teacher must have (its family picks the readers); an MLP by default. */
export interface TeacherSourceOptions<A extends ModelArchitecture = ArchitectureSpec> {
  /** Folder a relative path is resolved from: the pipeline file's folder. */
  baseDir: string;
  /** Local files must resolve, after symbolic links, under one of these (`defaultAllowedRoots`). */
  allowedRoots: string[];
  /** Downloads (URL and MLflow) land in `<cacheDir>/<sha256>/`; created if missing. */
  cacheDir: string;
  /** When given, the teacher must have exactly this architecture (and is read as its family); else an MLP of any shape. */
  expected?: A;
  /** Required for `models:/` sources. */
  mlflow?: MlflowClient;
  /** Bytes one source may download, all its files together; default 512 MiB. */
  maxBytes?: number;
  /** Per HTTP connection; default 10 s. */
  connectTimeoutMs?: number;
  /** For the whole download of a URL source; default 5 min. */
  timeoutMs?: number;
  /** Default 5. */
  maxRedirects?: number;
  /** Names the source in messages, e.g. `teachers.sources[2]`; default `teacher source`. */
  field?: string;
}

export interface ResolvedTeacher<P = ParamsOfArch<ArchitectureSpec>> {
  params: P;
  kind: TeacherSource['kind'];
  format: TeacherFormat;
  /** The local file read: the resolved path, or the cached download's `.safetensors` / `model.json`. */
  file: string;
  /** For downloads: the content address (the cache folder's name). */
  sha256?: string;
}

// ------------------------------------------------------------------------------------------ resolving

/**
 * Resolves `source` (see the module comment) into validated parameters.
 *
 * @example
 * const { params } = await resolveTeacherSource('teachers/t0.safetensors', {
 *   baseDir: path.dirname(pipelineFile), allowedRoots: defaultAllowedRoots(pipelineFile),
 *   cacheDir: '.weightformer/teachers', expected: spec.architecture,
 * });
 */
export async function resolveTeacherSource<A extends ModelArchitecture = ArchitectureSpec>(
  source: string,
  opts: TeacherSourceOptions<A>,
): Promise<ResolvedTeacher<ParamsOfArch<A>>> {
  const field = opts.field ?? 'teacher source';
  const parsed = parseTeacherSource(source, field);
  switch (parsed.kind) {
    case 'path': {
      const { file, format } = await locateLocalTeacher(parsed.path, opts, field);
      return { params: await readTeacher(file, format, opts.expected), kind: 'path', format, file };
    }
    case 'url':
      return { kind: 'url', ...(await downloadUrlTeacher(parsed.url, opts, field)) };
    case 'mlflow':
      return { kind: 'mlflow', ...(await downloadMlflowTeacher(parsed, opts, field)) };
  }
}

async function readTeacher<A extends ModelArchitecture>(file: string, format: TeacherFormat, expected: A | undefined): Promise<ParamsOfArch<A>> {
  // The family's reader returns the family's parameters: those of `A` (an MLP's when nothing is expected).
  try {
    return (await readTeacherFile(file, format, expected)) as ParamsOfArch<A>;
  } catch (err) {
    // Every refusal names the file, whichever reader refused it (some only know the bytes they were given).
    if (err instanceof InputError && !err.message.includes(file)) throw new InputError(`${file}: ${err.message}`);
    throw err;
  }
}

/** The teacher file a local path names, checked against the allowed roots (weight files included). */
async function locateLocalTeacher<A extends ModelArchitecture>(written: string, opts: TeacherSourceOptions<A>, field: string): Promise<{ file: string; format: TeacherFormat }> {
  const allowed = (p: string): string => resolveAllowedPath(p, { baseDir: opts.baseDir, allowedRoots: opts.allowedRoots, field });
  const resolved = allowed(written);
  let stat: Stats;
  try {
    stat = await fs.stat(resolved);
  } catch (err) {
    throw new InputError(`${field}: cannot read ${resolved}: ${(err as Error).message}`);
  }
  let file = resolved;
  if (stat.isDirectory()) {
    const names = await fs.readdir(resolved);
    const safetensors = names.filter((n) => n.endsWith(SAFETENSORS_EXT));
    if (names.includes(TFJS_MODEL_JSON)) file = path.join(resolved, TFJS_MODEL_JSON);
    else if (safetensors.length === 1 && safetensors[0]) file = path.join(resolved, safetensors[0]);
    else {
      throw new InputError(`${field}: the folder ${resolved} holds ${safetensors.length === 0 ? 'neither a model.json nor a .safetensors file' : `several .safetensors files (${safetensors.join(', ')}); name one`}`);
    }
    // A link inside the folder may still point out of the roots.
    file = allowed(file);
  }
  const format = formatOfName(file);
  if (!format) throw new InputError(`${field}: ${resolved} is neither a .safetensors file nor a TF.js model.json`);
  if (format === 'tfjs') {
    for (const rel of await manifestPaths(file, field)) {
      if (path.isAbsolute(rel)) throw new InputError(`${field}: ${file} names the weight file ${rel} by an absolute path`);
      allowed(path.join(path.dirname(file), rel));
    }
  }
  return { file, format };
}

function formatOfName(name: string): TeacherFormat | undefined {
  if (name.endsWith(SAFETENSORS_EXT)) return 'safetensors';
  if (name.endsWith('.json')) return 'tfjs';
  return undefined;
}

/** The weight paths a model.json's manifest lists (validation proper is `fromTfjsModel`'s). */
async function manifestPaths(modelJson: string, field: string): Promise<string[]> {
  let json: unknown;
  try {
    json = JSON.parse(await fs.readFile(modelJson, 'utf8')) as unknown;
  } catch (err) {
    throw new InputError(`${field}: cannot read ${modelJson} as JSON: ${(err as Error).message}`);
  }
  return manifestPathsOf(json, `${field}: ${modelJson}`);
}

function manifestPathsOf(json: unknown, where: string): string[] {
  const manifest = typeof json === 'object' && json !== null ? (json as Record<string, unknown>).weightsManifest : undefined;
  if (!Array.isArray(manifest)) throw new InputError(`${where}: weightsManifest is not a list`);
  const out: string[] = [];
  for (const group of manifest) {
    const paths: unknown = typeof group === 'object' && group !== null ? (group as Record<string, unknown>).paths : undefined;
    if (!Array.isArray(paths) || !paths.every((p) => typeof p === 'string' && p !== '')) {
      throw new InputError(`${where}: a weight group has no list of paths`);
    }
    out.push(...(paths as string[]));
  }
  return out;
}

/**
 * A weight path of a downloaded model.json must be a plain relative name: it becomes both a URL relative
 * to the model.json and a file name inside the cache folder.
 */
function checkRelativeWeightPath(rel: string, where: string): string {
  const parts = rel.split('/');
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(rel) || rel.startsWith('/') || /[\\?#%]/.test(rel) || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new InputError(`${where}: weight path ${JSON.stringify(rel)} is not a plain relative file name`);
  }
  return rel;
}

// ------------------------------------------------------------------------------------------ the cache

/** One source's download in progress: files go to a private temporary folder, then move as one. */
class PendingDownload {
  readonly dir: string;
  private readonly hashes: Array<{ rel: string; sha256: string }> = [];
  bytesLeft: number;

  private constructor(readonly cacheDir: string, readonly maxBytes: number) {
    this.dir = path.join(cacheDir, `.download-${process.pid}-${randomBytes(6).toString('hex')}`);
    this.bytesLeft = maxBytes;
  }

  static async start(cacheDir: string, maxBytes: number): Promise<PendingDownload> {
    if (!(maxBytes > 0)) throw new InputError(`maxBytes must be positive, got ${maxBytes}`);
    const pending = new PendingDownload(path.resolve(cacheDir), maxBytes);
    await fs.mkdir(pending.dir, { recursive: true });
    return pending;
  }

  /** Where the file `rel` (`/`-separated) goes; its folders are created. */
  async fileFor(rel: string): Promise<string> {
    const file = path.join(this.dir, ...rel.split('/'));
    await fs.mkdir(path.dirname(file), { recursive: true });
    return file;
  }

  recorded(rel: string, sha256: string, bytes: number): void {
    this.hashes.push({ rel, sha256 });
    this.bytesLeft -= bytes;
  }

  /** Moves the complete download to `cacheDir/<sha256 of its files>`; returns that folder and address. */
  async commit(): Promise<{ dir: string; sha256: string }> {
    const digest = createHash('sha256');
    for (const { rel, sha256 } of [...this.hashes].sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0))) {
      digest.update(`${sha256}  ${rel}\n`);
    }
    const sha256 = digest.digest('hex');
    const target = path.join(this.cacheDir, sha256);
    try {
      await fs.rename(this.dir, target);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Already there: the same content, downloaded before or concurrently. Keep that one.
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      await this.discard();
    }
    return { dir: target, sha256 };
  }

  async discard(): Promise<void> {
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Runs `fill` on a fresh pending download and reads the teacher it fetched; commits the folder only when
 * the teacher is valid (the cache never holds a file that failed), and removes every trace on failure.
 */
async function withPendingDownload<A extends ModelArchitecture>(
  opts: TeacherSourceOptions<A>,
  fill: (pending: PendingDownload) => Promise<{ format: TeacherFormat; rel: string }>,
): Promise<{ params: ParamsOfArch<A>; file: string; format: TeacherFormat; sha256: string }> {
  const pending = await PendingDownload.start(opts.cacheDir, opts.maxBytes ?? DEFAULT_MAX_TEACHER_BYTES);
  try {
    const { format, rel } = await fill(pending);
    const params = await readTeacher(path.join(pending.dir, ...rel.split('/')), format, opts.expected);
    const { dir, sha256 } = await pending.commit();
    return { params, file: path.join(dir, ...rel.split('/')), format, sha256 };
  } catch (err) {
    await pending.discard();
    throw err;
  }
}

// ------------------------------------------------------------------------------------------------ HTTP

interface HttpContext {
  field: string;
  signal: AbortSignal;
  connectTimeoutMs: number;
  timeoutMs: number;
  maxRedirects: number;
}

/** Marks the connect timer's abort, to tell it from the overall one. */
class ConnectTimeout extends Error {}

function describeUrl(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/** A URL teacher: the file itself, plus the weight files when it is a model.json. */
async function downloadUrlTeacher<A extends ModelArchitecture>(url: URL, opts: TeacherSourceOptions<A>, field: string) {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_DOWNLOAD_TIMEOUT_MS;
  const overall = new AbortController();
  const timer = setTimeout(() => overall.abort(), timeoutMs);
  const ctx: HttpContext = {
    field,
    signal: overall.signal,
    connectTimeoutMs: opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    timeoutMs,
    maxRedirects: opts.maxRedirects ?? DEFAULT_MAX_REDIRECTS,
  };
  try {
    return await withPendingDownload(opts, async (pending) => {
      // Name the first file after its kind, known from the URL or else from its first bytes.
      const first = await pending.fileFor('.first');
      const got = await httpGetToFile(url, first, pending, ctx);
      const finalUrl = got.finalUrl;
      const format = formatOfName(finalUrl.pathname) ?? formatOfName(url.pathname) ?? (await sniffFormat(first));
      if (format === 'safetensors') {
        await fs.rename(first, await pending.fileFor(CACHED_SAFETENSORS));
        pending.recorded(CACHED_SAFETENSORS, got.sha256, got.bytes);
        return { format, rel: CACHED_SAFETENSORS };
      }
      const modelJsonFile = await pending.fileFor(TFJS_MODEL_JSON);
      await fs.rename(first, modelJsonFile);
      pending.recorded(TFJS_MODEL_JSON, got.sha256, got.bytes);
      let json: unknown;
      try {
        json = JSON.parse(await fs.readFile(modelJsonFile, 'utf8')) as unknown;
      } catch {
        throw new InputError(`${field}: ${describeUrl(finalUrl)} is neither a safetensors file nor a TF.js model.json (not valid JSON)`);
      }
      const where = `${field}: ${describeUrl(finalUrl)}`;
      for (const rel of new Set(manifestPathsOf(json, where))) {
        checkRelativeWeightPath(rel, where);
        if (rel === TFJS_MODEL_JSON) throw new InputError(`${where}: a weight file cannot be named ${TFJS_MODEL_JSON}`);
        const weights = await httpGetToFile(new URL(rel, finalUrl), await pending.fileFor(rel), pending, ctx);
        pending.recorded(rel, weights.sha256, weights.bytes);
      }
      return { format, rel: TFJS_MODEL_JSON };
    });
  } finally {
    clearTimeout(timer);
  }
}

/** safetensors starts with a u64 header length below 2^32 (upper bytes zero); JSON text holds no NUL. */
async function sniffFormat(file: string): Promise<TeacherFormat> {
  const handle = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(8);
    const { bytesRead } = await handle.read(head, 0, 8, 0);
    return bytesRead === 8 && head.readUInt32LE(4) === 0 ? 'safetensors' : 'tfjs';
  } finally {
    await handle.close();
  }
}

/**
 * GET `url` into `file` (following redirects), within the pending download's byte budget; the caller
 * records the file under its final name.
 */
async function httpGetToFile(url: URL, file: string, pending: PendingDownload, ctx: HttpContext): Promise<{ finalUrl: URL; bytes: number; sha256: string }> {
  let current = url;
  for (let redirects = 0; ; redirects++) {
    const res = await openResponse(current, ctx);
    const status = res.statusCode ?? 0;
    if ([301, 302, 303, 307, 308].includes(status)) {
      res.destroy();
      const location = res.headers.location;
      if (!location) throw new InputError(`${ctx.field}: ${describeUrl(current)} redirects (${status}) without a Location`);
      if (redirects >= ctx.maxRedirects) throw new InputError(`${ctx.field}: more than ${ctx.maxRedirects} redirects from ${describeUrl(url)}`);
      const next = checkedUrl(new URL(location, current).toString(), ctx.field);
      if (current.protocol === 'https:' && next.protocol === 'http:') {
        throw new AccessError(`${ctx.field}: ${describeUrl(current)} redirects from https to plain http (${describeUrl(next)}); refused`);
      }
      current = next;
      continue;
    }
    if (status !== 200) {
      res.destroy();
      const message = `${ctx.field}: GET ${describeUrl(current)} answered ${status} ${res.statusMessage ?? ''}`.trimEnd();
      if (status >= 500 || status === 429 || status === 408) throw new TeacherDownloadError(message);
      throw new InputError(message);
    }
    const announced = res.headers['content-length'];
    const declared = announced === undefined ? undefined : Number(announced);
    if (declared !== undefined && Number.isFinite(declared) && declared > pending.bytesLeft) {
      res.destroy();
      throw new InputError(`${ctx.field}: ${describeUrl(current)} announces ${declared} bytes (Content-Length), more than the ` +
        `${pending.bytesLeft} left of the ${pending.maxBytes}-byte limit for a teacher`);
    }
    const { bytes, sha256 } = await streamToFile(res, file, pending, ctx, current);
    if (declared !== undefined && Number.isFinite(declared) && bytes !== declared) {
      throw new TeacherDownloadError(`${ctx.field}: ${describeUrl(current)} sent ${bytes} of the ${declared} bytes it announced`);
    }
    return { finalUrl: current, bytes, sha256 };
  }
}

function timeoutError(ctx: HttpContext, url: URL): InputError {
  return new InputError(`${ctx.field}: downloading ${describeUrl(url)} took longer than ${ctx.timeoutMs} ms; refused`);
}

/** Sends the GET; resolves on the response head. Maps timeouts to InputError, network failures to TeacherDownloadError. */
function openResponse(url: URL, ctx: HttpContext): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    if (ctx.signal.aborted) {
      reject(timeoutError(ctx, url));
      return;
    }
    const get = url.protocol === 'https:' ? https.request : http.request;
    // agent: false: a fresh connection, closed after the transfer, so the connect timer always measures a connect.
    const req = get(url, { method: 'GET', agent: false, signal: ctx.signal, headers: { Accept: '*/*', 'User-Agent': 'weightformer-pipelines' } });
    const connectTimer = setTimeout(() => req.destroy(new ConnectTimeout()), ctx.connectTimeoutMs);
    req.once('socket', (socket) => {
      if (!socket.connecting) clearTimeout(connectTimer);
      else socket.once('connect', () => clearTimeout(connectTimer));
    });
    req.once('response', (res) => {
      clearTimeout(connectTimer);
      resolve(res);
    });
    req.once('error', (err) => {
      clearTimeout(connectTimer);
      if (err instanceof ConnectTimeout) {
        reject(new InputError(`${ctx.field}: could not connect to ${url.host} within ${ctx.connectTimeoutMs} ms; refused`));
      } else if (ctx.signal.aborted) {
        reject(timeoutError(ctx, url));
      } else {
        reject(new TeacherDownloadError(`${ctx.field}: GET ${describeUrl(url)} failed: ${err.message}`));
      }
    });
    req.end();
  });
}

/** Streams the body to `file`, counting: over the budget the transfer is cut at once. */
async function streamToFile(res: http.IncomingMessage, file: string, pending: PendingDownload, ctx: HttpContext, url: URL): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  const limit = pending.bytesLeft;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      bytes += chunk.length;
      if (bytes > limit) {
        done(new InputError(`${ctx.field}: ${describeUrl(url)} sent more than the ${limit} bytes left of the ${pending.maxBytes}-byte limit for a teacher; cut off`));
        return;
      }
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeline(res, counter, createWriteStream(file, { flags: 'wx' }), { signal: ctx.signal });
  } catch (err) {
    res.destroy();
    if (err instanceof InputError) throw err;
    if (ctx.signal.aborted) throw timeoutError(ctx, url);
    throw new TeacherDownloadError(`${ctx.field}: the transfer of ${describeUrl(url)} broke off after ${bytes} bytes: ${(err as Error).message}`);
  }
  return { bytes, sha256: hash.digest('hex') };
}

// ---------------------------------------------------------------------------------------------- MLflow

type MlflowSource = Extract<TeacherSource, { kind: 'mlflow' }>;

/** MLflow refusing a registry call (unknown model or version, bad name) is bad input, never retried. */
async function registryCall<T>(what: string, field: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (err instanceof MlflowRequestError) {
      const missing = err.errorCode === 'RESOURCE_DOES_NOT_EXIST' || err.status === 404;
      throw new InputError(`${field}: ${missing ? `MLflow has no ${what}` : `MLflow refused to look up ${what}`} (${err.errorCode}${err.serverMessage ? `: ${err.serverMessage}` : ''})`);
    }
    throw err;
  }
}

/** The artifact path (relative to its run's root) a model version's `source` names. */
async function artifactPathOfVersion(client: MlflowClient, runId: string, source: string, label: string, field: string): Promise<string> {
  const runsPrefix = `runs:/${runId}/`;
  if (source.startsWith(runsPrefix)) return source.slice(runsPrefix.length);
  const run = await registryCall(`run ${runId} (of ${label})`, field, () => client.getRun(runId));
  const root = run.info.artifact_uri.replace(/\/+$/, '');
  if (root !== '' && source === root) return '';
  if (root !== '' && source.startsWith(`${root}/`)) return source.slice(root.length + 1);
  throw new InputError(`${field}: ${label} has source ${JSON.stringify(source)}, which is not in the artifacts of its run ${runId} (${root}); ` +
    'only versions registered from a run\'s artifacts (as the pipeline registers students) can be read');
}

async function downloadMlflowTeacher<A extends ModelArchitecture>(src: MlflowSource, opts: TeacherSourceOptions<A>, field: string) {
  const client = opts.mlflow;
  const label = src.version !== undefined ? `model ${src.name} version ${src.version}` : `model ${src.name} alias @${src.alias}`;
  if (!client) throw new InputError(`${field}: ${label} is in the MLflow registry but no MLflow server is configured (set MLFLOW_TRACKING_URI)`);
  const mv = await registryCall(label, field, () =>
    src.version !== undefined ? client.getModelVersion(src.name, src.version) : client.getModelVersionByAlias(src.name, src.alias));
  if (mv.status !== '' && mv.status !== 'READY') throw new InputError(`${field}: ${label} is ${mv.status}, not READY`);
  if (mv.run_id === '') throw new InputError(`${field}: ${label} (source ${JSON.stringify(mv.source)}) was not registered from a run; its files cannot be located`);
  const base = await artifactPathOfVersion(client, mv.run_id, mv.source, label, field);
  const join = (rel: string): string => (base === '' ? rel : `${base}/${rel}`);

  return withPendingDownload(opts, async (pending) => {
    const fetchArtifact = async (artifactPath: string, rel: string, announced: number | undefined): Promise<void> => {
      if (announced !== undefined && announced > pending.bytesLeft) {
        throw new InputError(`${field}: ${label}: artifact ${artifactPath} has ${announced} bytes, more than the ${pending.bytesLeft} left of the ${pending.maxBytes}-byte limit`);
      }
      const bytes = await registryCall(`artifact ${artifactPath} of run ${mv.run_id}`, field, () => client.downloadArtifact(mv.run_id, artifactPath));
      if (bytes.length > pending.bytesLeft) {
        throw new InputError(`${field}: ${label}: artifact ${artifactPath} has ${bytes.length} bytes, more than the ${pending.bytesLeft} left of the ${pending.maxBytes}-byte limit`);
      }
      await fs.writeFile(await pending.fileFor(rel), bytes, { flag: 'wx' });
      pending.recorded(rel, createHash('sha256').update(bytes).digest('hex'), bytes.length);
    };

    if (base.endsWith(SAFETENSORS_EXT)) {
      await fetchArtifact(base, CACHED_SAFETENSORS, undefined);
      return { format: 'safetensors' as const, rel: CACHED_SAFETENSORS };
    }
    const listing = await registryCall(`artifact folder ${base || '(root)'} of run ${mv.run_id}`, field, () => client.listArtifacts(mv.run_id, base));
    const files = new Map(listing.filter((f) => !f.is_dir).map((f) => [f.path.split('/').pop() ?? f.path, f]));
    const modelJson = files.get(TFJS_MODEL_JSON);
    if (modelJson) {
      await fetchArtifact(join(TFJS_MODEL_JSON), TFJS_MODEL_JSON, modelJson.file_size);
      const where = `${field}: ${label}: ${TFJS_MODEL_JSON}`;
      let json: unknown;
      try {
        json = JSON.parse(await fs.readFile(await pending.fileFor(TFJS_MODEL_JSON), 'utf8')) as unknown;
      } catch {
        throw new InputError(`${where} is not valid JSON`);
      }
      for (const rel of new Set(manifestPathsOf(json, where))) {
        checkRelativeWeightPath(rel, where);
        if (rel === TFJS_MODEL_JSON) throw new InputError(`${where}: a weight file cannot be named ${TFJS_MODEL_JSON}`);
        await fetchArtifact(join(rel), rel, files.get(rel)?.file_size);
      }
      return { format: 'tfjs' as const, rel: TFJS_MODEL_JSON };
    }
    const safetensors = [...files.values()].filter((f) => f.path.endsWith(SAFETENSORS_EXT));
    const only = safetensors[0];
    if (safetensors.length !== 1 || !only) {
      const names = [...files.keys()];
      throw new InputError(`${field}: ${label}: the artifacts at ${base || '(run root)'} hold ${safetensors.length > 1 ? 'several .safetensors files' : 'neither a model.json nor a .safetensors file'}` +
        ` (${names.length > 0 ? names.join(', ') : 'nothing'})`);
    }
    await fetchArtifact(only.path, CACHED_SAFETENSORS, only.file_size);
    return { format: 'safetensors' as const, rel: CACHED_SAFETENSORS };
  });
}
