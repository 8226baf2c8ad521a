/**
 * What kind of teacher source a string is (a path, an http(s) URL, or an MLflow registry reference), with
 * the scheme policy. Kept free of I/O and of the ML library so the pipeline loader can check sources
 * where the file is known, with positioned errors, without loading TensorFlow.js.
 */
import { AccessError, InputError } from '../util/errors';

const ALLOWED_SCHEMES = 'a path (under the allowed roots), an http:// or https:// URL, or models:/<name>/<version>';

export type TeacherSource =
  | { kind: 'path'; path: string }
  | { kind: 'url'; url: URL }
  | { kind: 'mlflow'; name: string; version: string; alias?: undefined }
  | { kind: 'mlflow'; name: string; alias: string; version?: undefined };

// ------------------------------------------------------------------------------------------- parsing

/**
 * What kind of source `source` is. Throws AccessError for a scheme other than http, https and models,
 * and for URLs holding credentials; InputError for a malformed URL or registry reference.
 *
 * @example
 * parseTeacherSource('models:/mnist-student/3') // { kind: 'mlflow', name: 'mnist-student', version: '3' }
 */
export function parseTeacherSource(source: string, field = 'teacher source'): TeacherSource {
  if (typeof source !== 'string' || source.trim() === '') throw new InputError(`${field}: empty teacher source`);
  // A scheme is at least two letters, so a Windows-style `C:` stays a path.
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]+):/.exec(source)?.[1]?.toLowerCase();
  if (scheme === undefined) return { kind: 'path', path: source };
  if (scheme === 'http' || scheme === 'https') return { kind: 'url', url: checkedUrl(source, field) };
  if (scheme === 'models') return parseModelsUri(source, field);
  throw new AccessError(`${field}: ${JSON.stringify(redactSource(source))} uses the scheme ${scheme}:, which is not allowed; use ${ALLOWED_SCHEMES}`);
}

export function redactSource(source: string): string {
  return source.length > 200 ? `${source.slice(0, 197)}...` : source;
}

export function checkedUrl(text: string, field: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new InputError(`${field}: ${JSON.stringify(redactSource(text))} is not a valid URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new AccessError(`${field}: ${url.protocol} URLs are not allowed; use ${ALLOWED_SCHEMES}`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new AccessError(`${field}: the URL holds credentials (user:password@); pipeline files must not carry secrets`);
  }
  return url;
}

function parseModelsUri(source: string, field: string): TeacherSource {
  const rest = source.slice('models:'.length);
  const bad = (why: string): never => {
    throw new InputError(`${field}: ${JSON.stringify(redactSource(source))} ${why}; expected models:/<name>/<version> or models:/<name>@<alias>`);
  };
  if (!rest.startsWith('/') || rest.startsWith('//')) bad('is not a registry reference');
  const body = rest.slice(1);
  const at = body.lastIndexOf('@');
  if (at >= 0 && !body.slice(at).includes('/')) {
    const name = body.slice(0, at);
    const alias = body.slice(at + 1);
    if (name === '' || alias === '') bad('has an empty name or alias');
    return { kind: 'mlflow', name, alias };
  }
  const slash = body.lastIndexOf('/');
  if (slash <= 0) bad('has no version');
  const name = body.slice(0, slash);
  const version = body.slice(slash + 1);
  if (!/^[1-9]\d*$/.test(version)) {
    bad(`has version ${JSON.stringify(version)}, not a version number (registry stages such as Production are deprecated in MLflow; use an @alias)`);
  }
  return { kind: 'mlflow', name, version };
}

