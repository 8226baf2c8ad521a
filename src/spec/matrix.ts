/**
 * Matrix expansion: the cartesian product of a spec's `matrix` values, each set at its dotted path.
 *
 * Values are set on the *defaulted* spec, so derived defaults are not recomputed per cell (a matrix over
 * `seed` keeps `data.splitSeed` at the file's value: same split, different training randomness).
 * Order: matrix keys sorted (code-unit order), the first key varying slowest, values in their listed order;
 * so the expansion depends only on the spec's hash. Each cell is validated again (schema and semantics).
 */
import { SpecError, type SpecDiagnostic } from '../util/errors.js';
import { specHash } from './hash.js';
import { describeValue, escapePointer, problemFromAjv, suggest, type Problem } from './messages.js';
import { schemaErrors } from './schema.js';
import { semanticProblems } from './semantics.js';
import { sortDiagnostics } from './yaml.js';
import type { PipelineSpec } from './types.js';

export const MAX_MATRIX_CELLS = 256;

export interface MatrixCell {
  /** The matrix values of this cell, by dotted path (keys sorted). */
  cell: Record<string, unknown>;
  /** The spec with the cell's values set; its `matrix` is `{}`. */
  spec: PipelineSpec;
  /** `specHash` of `spec`. */
  hash: string;
}

/** Positions a problem; the loader passes one backed by the file's SourceMap. */
export type Locate = (problem: Problem) => SpecDiagnostic;

/** Where positions come from for specs the loader produced (others get 1:1 of a `<pipeline NAME>` file). */
const locators = new WeakMap<PipelineSpec, Locate>();

export function registerLocator(spec: PipelineSpec, locate: Locate): void {
  locators.set(spec, locate);
}

function fallbackLocate(spec: PipelineSpec): Locate {
  return (p) => ({ file: `<pipeline ${spec.name}>`, line: 1, col: 1, path: p.pointer || '/', message: p.message });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function segmentsToPointer(segs: readonly string[]): string {
  return segs.map((s) => `/${escapePointer(s)}`).join('');
}

/** Checks that a matrix key names an existing field of the spec; returns a problem if not. */
function checkPath(base: Record<string, unknown>, key: string): Problem | undefined {
  const keyPointer = `/matrix/${escapePointer(key)}`;
  const segs = key.split('.');
  if (segs[0] === 'stages' && segs[1] === 'default') {
    return {
      pointer: keyPointer, at: 'key',
      message: "the matrix cannot vary stages.default: vary each stage's option (e.g. stages.teachers.retry.maximumAttempts)",
    };
  }
  if (key === 'architecture.family') {
    return {
      pointer: keyPointer, at: 'key',
      message: 'the matrix cannot vary architecture.family: each family has its own settings (write one pipeline file per family)',
    };
  }
  let cur: unknown = base;
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    const prefix = segs.slice(0, i).join('.');
    if (!isObject(cur)) {
      return { pointer: keyPointer, at: 'key', message: `'${prefix}' is not a mapping, so '${key}' does not exist` };
    }
    if (!Object.prototype.hasOwnProperty.call(cur, seg)) {
      const s = suggest(seg, Object.keys(cur));
      // Suggest the whole corrected path when the rest of it exists under the suggestion.
      const full = (name: string): string => {
        const fixed = [...segs.slice(0, i), name, ...segs.slice(i + 1)].join('.');
        return checkPath(base, fixed) === undefined ? fixed : [...segs.slice(0, i), name].join('.');
      };
      return {
        pointer: keyPointer, at: 'key',
        message: s !== undefined
          ? `unknown field '${key}', did you mean '${full(s)}'?`
          : `unknown field '${key}'; ${prefix ? `'${prefix}' has` : 'the pipeline has'}: ${Object.keys(cur).join(', ')}`,
      };
    }
    cur = cur[seg];
  }
  return undefined;
}

function setPath(target: Record<string, unknown>, segs: readonly string[], value: unknown): void {
  let cur = target;
  for (const seg of segs.slice(0, -1)) cur = cur[seg] as Record<string, unknown>;
  cur[segs[segs.length - 1]!] = value;
}

/** Expands the matrix with positioned errors; `locate` defaults to the spec's registered locator. */
export function expandMatrixWith(spec: PipelineSpec, locate?: Locate): MatrixCell[] {
  const where = locate ?? locators.get(spec) ?? fallbackLocate(spec);
  const base = JSON.parse(JSON.stringify({ ...spec, matrix: {} })) as Record<string, unknown>;
  const matrix = spec.matrix ?? {};
  const keys = Object.keys(matrix).sort();
  if (keys.length === 0) {
    const cellSpec = base as unknown as PipelineSpec;
    return [{ cell: {}, spec: cellSpec, hash: specHash(cellSpec) }];
  }

  const lengths = keys.map((k) => matrix[k]!.length);
  const total = lengths.reduce((a, b) => a * b, 1);
  if (total > MAX_MATRIX_CELLS) {
    throw new SpecError([where({
      pointer: '/matrix', at: 'value',
      message: `the matrix has ${total} cells (${lengths.join(' × ')}); at most ${MAX_MATRIX_CELLS} are allowed`,
    })]);
  }
  const pathProblems = keys.map((k) => checkPath(base, k)).filter((p): p is Problem => p !== undefined);
  if (pathProblems.length > 0) throw new SpecError(sortDiagnostics(pathProblems.map(where)));

  const segsOf = keys.map((k) => k.split('.'));
  const pointerOf = segsOf.map(segmentsToPointer);
  const cells: MatrixCell[] = [];
  const problems: Problem[] = [];
  const index = keys.map(() => 0);
  for (let n = 0; n < total; n++) {
    const cellSpec = JSON.parse(JSON.stringify(base)) as Record<string, unknown>;
    const cell: Record<string, unknown> = {};
    keys.forEach((k, i) => {
      const v = matrix[k]![index[i]!];
      cell[k] = v;
      setPath(cellSpec, segsOf[i]!, v);
    });
    const cellProblems = schemaErrors(cellSpec).map(problemFromAjv).filter((p): p is Problem => p !== undefined);
    if (cellProblems.length === 0) cellProblems.push(...semanticProblems(cellSpec as unknown as PipelineSpec));
    for (const p of cellProblems) problems.push(attribute(p, keys, pointerOf, index, cell));
    cells.push({ cell, spec: cellSpec as unknown as PipelineSpec, hash: specHash(cellSpec) });
    // Odometer: the last key varies fastest.
    for (let i = keys.length - 1; i >= 0; i--) {
      index[i]!++;
      if (index[i]! < lengths[i]!) break;
      index[i] = 0;
    }
  }
  if (problems.length > 0) throw new SpecError(sortDiagnostics(problems.map(where)));
  return cells;
}

function touches(a: string, b: string): boolean {
  return a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
}

/** Whether a problem of the matrix's base spec involves a field the matrix varies (the cells decide those). */
export function involvesMatrix(p: Problem, matrix: Record<string, unknown>): boolean {
  const pointers = Object.keys(matrix).map((k) => segmentsToPointer(k.split('.')));
  return pointers.some((k) => [p.pointer, ...(p.related ?? [])].some((q) => touches(q, k)));
}

/**
 * Moves a cell's problem onto the matrix: onto the value that caused it when the problem is about a varied
 * field, else onto `/matrix` with the cell spelled out.
 */
function attribute(
  p: Problem, keys: string[], pointerOf: string[], index: number[], cell: Record<string, unknown>,
): Problem {
  const direct = keys.findIndex((_k, i) => touches(p.pointer, pointerOf[i]!));
  if (direct !== -1) {
    return { pointer: `/matrix/${escapePointer(keys[direct]!)}/${index[direct]}`, at: 'value', message: p.message };
  }
  // Show only the varied fields the problem depends on, so one problem shared by many cells reads once.
  const involved = keys.filter((_k, i) => (p.related ?? []).some((r) => touches(r, pointerOf[i]!)));
  const shown = `{${(involved.length ? involved : keys).map((k) => `${k}: ${describeValue(cell[k])}`).join(', ')}}`;
  const related = involved.length ? keys.indexOf(involved[0]!) : -1;
  const pointer = related === -1 ? '/matrix' : `/matrix/${escapePointer(keys[related]!)}/${index[related]}`;
  return { pointer, at: 'value', message: `in the matrix cell ${shown}: ${p.pointer || '/'}: ${p.message}` };
}

/**
 * The cartesian product of `spec.matrix` (see the module comment for order and semantics); a spec without
 * a matrix gives one cell. Throws `SpecError` (positioned at the matrix key or value when the spec came
 * from `loadPipelineFile`/`loadPipelineText`) on an unknown path, too many cells, or an invalid cell.
 */
export function expandMatrix(spec: PipelineSpec): MatrixCell[] {
  return expandMatrixWith(spec);
}
