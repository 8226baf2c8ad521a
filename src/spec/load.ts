/**
 * Loading pipeline files: read (size and encoding guards) → parse YAML safely → validate against the schema →
 * apply defaults → check cross-field constraints and the matrix → hash.
 *
 * Every failure is a `SpecError` whose diagnostics are positioned (`FILE:LINE:COL: /json/path: message`).
 * Problems are reported per layer: YAML-level problems (syntax, tags, aliases, …) stop before the schema,
 * schema problems stop before the cross-field checks (which need well-typed values); within a layer every
 * problem is reported.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { defaultAllowedRoots, resolveAllowedPath } from '../store/paths.js';
import { parseTeacherSource } from '../teachers/source-kind.js';
import { AccessError, InputError, SpecError, formatDiagnostic, type SpecDiagnostic } from '../util/errors.js';
import { applyDefaults, type RawPipeline } from './defaults.js';
import { specHash } from './hash.js';
import { expandMatrixWith, involvesMatrix, registerLocator, type Locate } from './matrix.js';
import { problemFromAjv, type Problem } from './messages.js';
import { schemaErrors } from './schema.js';
import { semanticProblems } from './semantics.js';
import type { LoadedSpec } from './types.js';
import { MAX_FILE_BYTES, parseYaml, positionOf, sortDiagnostics, type SourceMap } from './yaml.js';

export { expandMatrix, MAX_MATRIX_CELLS, type MatrixCell } from './matrix.js';

function fileError(file: string, message: string, line = 1, col = 1): SpecError {
  return new SpecError([{ file, line, col, path: '/', message }]);
}

/** Offset of the first byte that is not part of valid UTF-8, or -1. */
function invalidUtf8Offset(buf: Buffer): number {
  let i = 0;
  while (i < buf.length) {
    const b = buf[i]!;
    let n: number;
    let min: number;
    if (b < 0x80) { i++; continue; }
    if (b >= 0xc2 && b <= 0xdf) { n = 1; min = 0x80; }
    else if (b >= 0xe0 && b <= 0xef) { n = 2; min = 0x800; }
    else if (b >= 0xf0 && b <= 0xf4) { n = 3; min = 0x10000; }
    else return i;
    let cp = b & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const c = buf[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return -1;
}

/** Reads and loads one pipeline file (see the module comment). */
export function loadPipelineFile(file: string): LoadedSpec {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw fileError(file, code === 'ENOENT' ? 'no such file' : `cannot read the file (${code})`);
  }
  if (!stat.isFile()) throw fileError(file, 'not a regular file');
  if (stat.size > MAX_FILE_BYTES) {
    throw fileError(file, `file is too large: ${stat.size} bytes (at most ${MAX_FILE_BYTES})`);
  }
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw fileError(file, `cannot read the file (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  if (buf.length > MAX_FILE_BYTES) {
    throw fileError(file, `file is too large: ${buf.length} bytes (at most ${MAX_FILE_BYTES})`);
  }
  const bad = invalidUtf8Offset(buf);
  if (bad !== -1) {
    const prefix = buf.subarray(0, bad).toString('utf8').replace(/^\ufeff/, '');
    const { line, col } = positionOf(prefix + 'x', prefix.length);
    throw fileError(file, `the file is not valid UTF-8 (byte 0x${buf[bad]!.toString(16).padStart(2, '0')})`, line, col);
  }
  return loadPipelineText(buf.toString('utf8'), file);
}

/** Loads a pipeline from its text; `file` names it in diagnostics. */
export function loadPipelineText(text: string, file: string): LoadedSpec {
  const { value, source } = parseYaml(text, file);
  const locate = locator(source);

  const problems = schemaErrors(value).map(problemFromAjv).filter((p): p is Problem => p !== undefined);
  if (problems.length > 0) throw new SpecError(sortDiagnostics(problems.map(locate)));

  const spec = applyDefaults(value as unknown as RawPipeline);
  // Cross-field problems that involve a field the matrix varies are left to the per-cell checks.
  const semantic = semanticProblems(spec).filter((p) => !involvesMatrix(p, spec.matrix));
  if (semantic.length > 0) throw new SpecError(sortDiagnostics(semantic.map(locate)));

  resolveFileReferences(spec, file, locate);

  expandMatrixWith(spec, locate); // throws on a bad matrix; the cells themselves are expanded on demand
  registerLocator(spec, locate);
  return { file, spec, hash: specHash(spec) };
}

/**
 * Paths in the spec are resolved here, where the file's folder is known, so every worker reads the same
 * absolute paths; each must lie under the allowed roots. Teacher URLs are checked for their scheme.
 * Every refusal is positioned at the value that caused it.
 */
function resolveFileReferences(spec: LoadedSpec['spec'], file: string, locate: Locate): void {
  const baseDir = path.dirname(path.resolve(file));
  const allowedRoots = defaultAllowedRoots(file);
  const problems: Problem[] = [];
  const resolve = (written: string, pointer: string, field: string): string => {
    try {
      return resolveAllowedPath(written, { baseDir, allowedRoots, field });
    } catch (e) {
      if (!(e instanceof AccessError)) throw e;
      problems.push({ pointer, at: 'value', message: e.message.slice(field.length + 2) });
      return written;
    }
  };
  if (spec.data.path !== undefined) spec.data.path = resolve(spec.data.path, '/data/path', 'data.path');
  if (spec.teachers.files !== undefined) spec.teachers.files = spec.teachers.files.map((source, i) => {
    const field = `teachers.files[${i}]`;
    try {
      const kind = parseTeacherSource(source, field);
      return kind.kind === 'path' ? resolve(source, `/teachers/files/${i}`, field) : source;
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      problems.push({ pointer: `/teachers/files/${i}`, at: 'value', message: e.message.slice(field.length + 2) });
      return source;
    }
  });
  if (problems.length > 0) throw new SpecError(sortDiagnostics(problems.map(locate)));
}

/** Positions problems in the file; a pointer the file lacks falls back to a related one, then to its parent. */
function locator(source: SourceMap): Locate {
  return (p: Problem): SpecDiagnostic => {
    let anchor = p.pointer;
    if (!source.has(anchor)) anchor = (p.related ?? []).find((r) => source.has(r)) ?? anchor;
    const d = source.diagnostic(anchor, p.message, p.at);
    return { ...d, path: p.pointer === '' ? '/' : p.pointer };
  };
}

/**
 * Validates pipeline files for `weightformer validate FILE...`: one line per diagnostic, or
 * `FILE: ok (hash 0123456789ab…)` per valid file; `ok` is false when any file has a problem.
 */
export function validateFiles(files: string[]): { ok: boolean; output: string } {
  const lines: string[] = [];
  let ok = true;
  for (const file of files) {
    try {
      const loaded = loadPipelineFile(file);
      const cells = Object.keys(loaded.spec.matrix).length > 0 ? expandMatrixWith(loaded.spec).length : 0;
      lines.push(`${file}: ok (hash ${loaded.hash.slice(0, 12)}…${cells > 0 ? `, ${cells} matrix cells` : ''})`);
    } catch (e) {
      ok = false;
      if (e instanceof SpecError) lines.push(...e.diagnostics.map(formatDiagnostic));
      else if (e instanceof InputError) lines.push(`${file}: ${e.message}`);
      else throw e;
    }
  }
  return { ok, output: lines.join('\n') };
}
