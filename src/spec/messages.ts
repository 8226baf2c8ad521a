/**
 * Human-readable problems: ajv errors turned into `must be ≥ 1 (got 0)`-style messages, did-you-mean
 * suggestions, and the value descriptions every message uses.
 */
import type { ErrorObject } from 'ajv';
import { distance } from 'fastest-levenshtein';
import { ARCHITECTURE_FAMILY_DEFAULT, architectureSettings, isArchitectureFamily, isPlainObject } from './defaults.js';
import type { SchemaNode } from './schema.js';

/** A problem before it is positioned: the loader turns it into a `SpecDiagnostic`. */
export interface Problem {
  /** JSON pointer of the offending value (`''` for the document root). */
  pointer: string;
  message: string;
  /** Point at the key of the pointer's pair (unknown keys) or at its value (everything else). */
  at: 'key' | 'value';
  /** Other pointers the problem depends on: used to position it when `pointer` is not in the file. */
  related?: string[];
}

/** Escapes one JSON-pointer segment (RFC 6901). */
export function escapePointer(segment: string): string {
  return segment.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** Splits a JSON pointer into unescaped segments (`''` → []). */
export function pointerSegments(pointer: string): string[] {
  if (pointer === '') return [];
  return pointer.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

const MAX_SHOWN = 40;

/** How a value is shown in a message: `'abc'`, `3`, `true`, `null`, `a list`, `a mapping`. */
export function describeValue(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'string') {
    const s = v.length > MAX_SHOWN ? `${v.slice(0, MAX_SHOWN)}…` : v;
    return /[\u0000-\u001f'\\]/.test(s) ? JSON.stringify(s) : `'${s}'`;
  }
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return v.length === 0 ? 'an empty list' : 'a list';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

/**
 * The candidate closest to `word`, if it is close enough to be a likely typo: edit distance (ignoring case)
 * at most 3 and at most half the length of the longer of the two words.
 */
export function suggest(word: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestScore = Infinity;
  const w = word.toLowerCase();
  for (const c of candidates) {
    if (c === word) continue;
    const d = distance(w, c.toLowerCase());
    const limit = Math.min(3, Math.max(word.length, c.length) / 2);
    if (d > limit) continue;
    const score = d * 2 + (distance(word, c) > d ? 1 : 0); // exact-case matches win ties
    if (score < bestScore || (score === bestScore && best !== undefined && c < best)) {
      best = c;
      bestScore = score;
    }
  }
  return best;
}

/** `unknown key 'foo', did you mean 'bar'?` or, with no close match, the list of allowed keys. */
export function unknownKeyMessage(key: string, allowed: readonly string[]): string {
  const s = suggest(key, allowed);
  if (s !== undefined) return `unknown key ${describeValue(key)}, did you mean '${s}'?`;
  return `unknown key ${describeValue(key)}; expected one of: ${allowed.join(', ')}`;
}

const TYPE_NAMES: Record<string, [string, string]> = {
  integer: ['an integer', 'integer'],
  number: ['a number', 'number'],
  string: ['a string', 'string'],
  boolean: ['true or false', 'boolean'],
  object: ['a mapping', 'mapping'],
  array: ['a list', 'list'],
  null: ['null', 'null'],
};

function typeDescription(type: unknown): string {
  const types = (Array.isArray(type) ? type : [type]).map(String);
  if (types.length === 1) return TYPE_NAMES[types[0]!]?.[0] ?? types[0]!;
  const names = types.map((t) => TYPE_NAMES[t]?.[1] ?? t);
  return `a ${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}`;
}

/** Phrases for the schema's patterns (ajv would only print the regular expression). */
const PATTERN_PHRASES: Record<string, string> = {
  '^[a-z0-9][a-z0-9-_]{0,62}$':
    "must be 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
  '^\\d+(\\.\\d+)?(ms|s|m|h)$': 'must be a duration such as 500ms, 30s, 10m or 2h',
  '^([A-Za-z0-9][A-Za-z0-9._-]*)?$':
    "must be empty or letters, digits, '.', '_' or '-', starting with a letter or digit",
};

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Turns one ajv error into a problem; undefined for errors that only repeat another one. */
export function problemFromAjv(err: ErrorObject): Problem | undefined {
  const p = err.params as Record<string, unknown>;
  const data: unknown = err.data;
  const got = `(got ${describeValue(data)})`;
  const at = err.instancePath;
  const value = (message: string): Problem => ({ pointer: at, message, at: 'value' });

  // Errors about a mapping's key names (matrix keys): point at the key.
  if (err.keyword === 'propertyNames') return undefined; // the inner error says why
  if (err.propertyName !== undefined) {
    const name = err.propertyName;
    const pointer = `${at}/${escapePointer(name)}`;
    let message: string;
    if (err.keyword === 'pattern') {
      message = `matrix key ${describeValue(name)} must be a dotted path of field names, e.g. teachers.count`;
    } else if (err.keyword === 'not') {
      message = `the matrix cannot vary ${describeValue(name.split('.')[0])}`;
    } else {
      message = `key ${describeValue(name)}: ${err.message ?? 'is not allowed'}`;
    }
    return { pointer, message, at: 'key' };
  }

  switch (err.keyword) {
    case 'required':
      return value(`missing required key '${String(p['missingProperty'])}'`);
    case 'additionalProperties': {
      const key = String(p['additionalProperty']);
      const parent = err.parentSchema as SchemaNode | undefined;
      const allowed = Object.keys(parent?.properties ?? {});
      // `architecture` lists every family's settings: suggest the written family's first, and list only those.
      const family = at === '/architecture' && isPlainObject(data) ? (data['family'] ?? ARCHITECTURE_FAMILY_DEFAULT) : undefined;
      if (isArchitectureFamily(family)) {
        const own = ['family', ...architectureSettings(family)];
        const message = suggest(key, own) === undefined && suggest(key, allowed) !== undefined
          ? unknownKeyMessage(key, allowed)
          : unknownKeyMessage(key, own);
        return { pointer: `${at}/${escapePointer(key)}`, message, at: 'key' };
      }
      return { pointer: `${at}/${escapePointer(key)}`, message: unknownKeyMessage(key, allowed), at: 'key' };
    }
    case 'type':
      return value(`must be ${typeDescription(p['type'])} ${got}`);
    case 'minimum':
      return value(`must be ≥ ${String(p['limit'])} ${got}`);
    case 'maximum':
      return value(`must be ≤ ${String(p['limit'])} ${got}`);
    case 'exclusiveMinimum':
      return value(`must be > ${String(p['limit'])} ${got}`);
    case 'exclusiveMaximum':
      return value(`must be < ${String(p['limit'])} ${got}`);
    case 'enum': {
      const allowed = (p['allowedValues'] as unknown[]).map(String);
      const s = typeof data === 'string' ? suggest(data, allowed) : undefined;
      const hint = s !== undefined ? `, did you mean '${s}'?` : '';
      return value(`must be one of: ${allowed.join(', ')} (got ${describeValue(data)}${hint})`);
    }
    case 'const':
      return value(`must be ${JSON.stringify(p['allowedValue'])} ${got}`);
    case 'pattern': {
      const phrase = PATTERN_PHRASES[String(p['pattern'])] ?? `must match the pattern ${String(p['pattern'])}`;
      return value(`${phrase} ${got}`);
    }
    case 'minLength':
      return value(p['limit'] === 1 ? 'must not be empty' : `must be at least ${plural(Number(p['limit']), 'character')} long`);
    case 'maxLength':
      return value(`must be at most ${plural(Number(p['limit']), 'character')} long (got ${(data as string).length})`);
    case 'minItems':
      return value(`must have at least ${plural(Number(p['limit']), 'item')} (got ${(data as unknown[]).length})`);
    case 'maxItems':
      return value(`must have at most ${plural(Number(p['limit']), 'item')} (got ${(data as unknown[]).length})`);
    case 'uniqueItems': {
      // ajv's i/j order differs between its algorithms: the later index is the repeat.
      const i = Math.max(Number(p['i']), Number(p['j']));
      const item = (data as unknown[])[i];
      return { pointer: `${at}/${i}`, message: `${describeValue(item)} is listed more than once`, at: 'value' };
    }
    default:
      return value(`${err.message ?? 'is invalid'} ${got}`);
  }
}
