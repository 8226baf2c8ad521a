/**
 * Hostile-input-safe YAML reading: a pipeline file becomes a plain JSON-like value plus a `SourceMap` from
 * JSON pointers to the YAML nodes they came from, or a `SpecError` whose every diagnostic has a position.
 *
 * Guards, in order (each fails fast, with a position, instead of hanging or crashing):
 *   - size: more than 1 MiB is refused before parsing (at 1:1);
 *   - characters: NUL, other control characters and unpaired surrogates are refused (YAML forbids them);
 *   - volume and nesting, from the lexer's flat token stream before the (recursive, quadratic-in-places)
 *     composer sees them: more than 10000 keys and values or 100000 tokens, and nesting (flow `[[[[`,
 *     compact `- - - -`, or indentation) so deep that it is certainly beyond 128 levels;
 *   - syntax errors, several documents, unknown directives: the positioned errors of `yaml` (20 at most);
 *   - tags (`!!js/function`, `!!binary`, `!foo`, …): refused; only plain YAML values are accepted;
 *   - aliases: at most 100 expansions in all ("billion laughs"), no unknown or self-containing aliases;
 *   - duplicate keys, merge keys (`<<`), non-string keys, strings over 1024 characters, non-finite numbers
 *     (`.inf`, `.nan`), nesting deeper than 64 (with the path of the offending node, also through aliases)
 *     and more than 10000 values once aliases are expanded: refused by the walk over the composed document.
 *
 * The schema is YAML 1.2 core (`yes`/`no` stay strings), whatever `%YAML` directive the file has.
 */
import {
  isAlias, isCollection, isMap, isScalar, isSeq, Lexer, LineCounter, parseDocument, visit,
  type Alias, type Document, type Node, type Pair, type ParsedNode,
} from 'yaml';
import { SpecError, type SpecDiagnostic } from '../util/errors.js';
import { describeValue, escapePointer, pointerSegments } from './messages.js';

export const MAX_FILE_BYTES = 1024 * 1024;
export const MAX_DEPTH = 64;
export const MAX_ALIAS_EXPANSIONS = 100;
export const MAX_STRING_LENGTH = 1024;
export const MAX_VALUES = 10_000;
export const MAX_TOKENS = 100_000;
/** Depth at which the token pre-scan refuses a file before composing it (see `prescan`). */
const PRESCAN_DEPTH = 2 * MAX_DEPTH;
/** Syntax errors reported per file; the rest are summed up in one last diagnostic. */
const MAX_SYNTAX_ERRORS = 20;

export interface Position {
  line: number;
  col: number;
}

interface Entry {
  /** The key node of the pair the value sits in (absent for the root and list items). */
  key?: Node | null;
  /** The value node (an alias node when the value came through an alias). */
  value?: Node | null;
}

/** Where each JSON pointer of a parsed file came from. */
export class SourceMap {
  constructor(
    readonly file: string,
    private readonly lines: LineCounter,
    private readonly entries: Map<string, Entry>,
  ) {}

  /** Whether the file itself has a value at `pointer`. */
  has(pointer: string): boolean {
    return this.entries.has(pointer);
  }

  /**
   * Position of the value (or key) at `pointer`; for a pointer the file does not have, the position of its
   * nearest ancestor that it has.
   */
  position(pointer: string, at: 'key' | 'value' = 'value'): Position {
    let segs = pointerSegments(pointer);
    for (;;) {
      const ptr = segs.length === 0 ? '' : `/${segs.map(escapePointer).join('/')}`;
      const e = this.entries.get(ptr);
      if (e) {
        // A collection is pointed at by its key (`data:`), a scalar by itself; an empty value by its key.
        const valueNode = e.value && !isEmptyScalar(e.value) && !(e.key && isCollection(e.value)) ? e.value : undefined;
        const node = at === 'key' ? (e.key ?? valueNode) : (valueNode ?? e.key ?? e.value);
        if (node?.range) return this.lines.linePos(node.range[0]);
      }
      if (segs.length === 0) return { line: 1, col: 1 };
      segs = segs.slice(0, -1);
    }
  }

  diagnostic(pointer: string, message: string, at: 'key' | 'value' = 'value'): SpecDiagnostic {
    const { line, col } = this.position(pointer, at);
    return { file: this.file, line, col, path: pointer === '' ? '/' : pointer, message };
  }
}

/** An implicit empty value (`key:` with nothing after it) has a zero-length range: point at its key. */
function isEmptyScalar(node: Node): boolean {
  return isScalar(node) && node.value === null && node.range !== undefined && node.range !== null &&
    node.range[0] === node.range[1];
}

/** 1-based line and column of a string offset (columns count UTF-16 code units, as `yaml` does). */
export function positionOf(text: string, offset: number): Position {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf('\n'); i !== -1 && i < offset; i = text.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, col: offset - lineStart + 1 };
}

function fail(file: string, text: string, offset: number, message: string, path = '/'): never {
  const { line, col } = positionOf(text, offset);
  throw new SpecError([{ file, line, col, path, message }]);
}

function hex(code: number): string {
  return `U+${code.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** Characters YAML does not allow in a stream (C0/C1 controls other than tab/LF/CR/NEL, DEL, U+FFFE/F). */
const FORBIDDEN_CHAR =
  /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u0084\u0086-\u009f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function checkCharacters(text: string, file: string): void {
  const m = FORBIDDEN_CHAR.exec(text);
  if (!m) return;
  const code = m[0].charCodeAt(0);
  const what = code === 0 ? 'NUL character (U+0000)'
    : code >= 0xd800 && code <= 0xdfff ? `unpaired surrogate ${hex(code)}`
    : `control character ${hex(code)}`;
  fail(file, text, m.index, `${what} is not allowed in a pipeline file`);
}

/**
 * Refuses, from the lexer's flat token stream (linear, never recursive), what would make the recursive
 * composer slow or overflow the stack:
 *   - more than MAX_VALUES scalars (keys and values) or MAX_TOKENS tokens;
 *   - nesting deeper than PRESCAN_DEPTH, counted three ways, each a lower bound of the real depth: flow
 *     collections (`[[[[`), block collections opened on one line (`- - - x`), and increasing indentation.
 * PRESCAN_DEPTH is twice MAX_DEPTH so that moderately deep files reach the walk below, which reports the
 * exact depth with the path of the offending node.
 */
function prescan(text: string, file: string): void {
  const tooDeep = (offset: number): never => fail(file, text, offset, `nesting is deeper than ${MAX_DEPTH} levels`);
  let offset = 0;
  let tokens = 0;
  let scalars = 0;
  let flow = 0;
  let lineIndicators = 0;
  let nextIsScalar = false;
  let atLineStart = true;
  let indent = 0;
  const indents: number[] = [];
  for (const token of new Lexer().lex(text)) {
    if (token === '\x02' || token === '\x18') continue; // lexer control tokens, not part of the source
    const start = offset;
    if (token !== '\x1f') offset += token.length; // the scalar marker is not part of the source either
    if (++tokens > MAX_TOKENS) fail(file, text, start, `the document is too large: more than ${MAX_TOKENS} YAML tokens`);
    const isSpace = token[0] === ' ' || token[0] === '\t';
    const isBreak = token === '' || token === '\n' || token === '\r\n';
    if (atLineStart && flow === 0 && !isBreak) {
      if (isSpace) {
        indent = token.length - token.replace(/^ +/, '').length;
        continue;
      }
      if (token === '---' || token === '...') {
        indents.length = 0;
      } else if (token[0] !== '#') {
        // A content line: its indentation closes the deeper blocks above and opens one level.
        while (indents.length > 0 && indents[indents.length - 1]! >= indent) indents.pop();
        indents.push(indent);
        if (indents.length > PRESCAN_DEPTH) tooDeep(start);
      }
      atLineStart = false;
      indent = 0;
      lineIndicators = 0;
    }
    if (token === '\x1f') {
      nextIsScalar = true;
      continue;
    }
    if (nextIsScalar || token[0] === '"' || token[0] === "'") {
      if (++scalars > MAX_VALUES) fail(file, text, start, `the document is too large: more than ${MAX_VALUES} keys and values`);
    }
    if (nextIsScalar) {
      nextIsScalar = false;
    } else {
      switch (token) {
        case '[':
        case '{':
          if (++flow > PRESCAN_DEPTH) tooDeep(start);
          break;
        case ']':
        case '}':
          if (flow > 0) flow--;
          break;
        case '-':
        case '?':
        case ':':
          if (flow === 0 && ++lineIndicators > PRESCAN_DEPTH) tooDeep(start);
          break;
        default:
      }
    }
    if (isBreak || token.endsWith('\n')) {
      atLineStart = true;
      indent = 0;
      lineIndicators = 0;
    }
  }
}

const YAML_ORG = 'tag:yaml.org,2002:';

function shortTag(tag: string): string {
  return tag.startsWith(YAML_ORG) ? `!!${tag.slice(YAML_ORG.length)}` : tag;
}

const CORE_TAGS = new Set(['!!str', '!!int', '!!float', '!!bool', '!!null', '!!map', '!!seq']);

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

/** The JSON pointer of the deepest node (or key) of `root` whose range holds `offset`. */
function pointerAtOffset(root: Node | null | undefined, offset: number): string {
  const within = (n: unknown): boolean => {
    const r = (n as Node | null)?.range;
    return !!r && offset >= r[0] && offset < Math.max(r[2], r[0] + 1);
  };
  let node: unknown = root;
  let ptr = '';
  for (let guard = 0; guard <= MAX_DEPTH && node; guard++) {
    let next: unknown;
    if (isMap(node)) {
      for (const pair of node.items as Pair[]) {
        const name = isScalar(pair.key) ? String(pair.key.value) : '?';
        const seg = escapePointer(name.length > 64 ? `${name.slice(0, 64)}…` : name);
        // A pair spans from its key to the end of its value (a tag before the value is outside both).
        const start = (pair.key as Node | null)?.range?.[0];
        const end = (pair.value as Node | null)?.range?.[2] ?? (pair.key as Node | null)?.range?.[2];
        if (start === undefined || end === undefined || offset < start || offset >= Math.max(end, start + 1)) continue;
        if (within(pair.key)) return `${ptr}/${seg}`;
        ptr += `/${seg}`;
        if (within(pair.value)) next = pair.value;
        else return ptr;
        break;
      }
    } else if (isSeq(node)) {
      // An item spans from the end of the previous one to its own end.
      const i = node.items.findIndex((item) => offset < ((item as Node | null)?.range?.[2] ?? -1));
      if (i !== -1) {
        ptr += `/${i}`;
        if (within(node.items[i])) next = node.items[i];
        else return ptr;
      }
    }
    if (next === undefined) break;
    node = next;
  }
  return ptr === '' ? '/' : ptr;
}

class Abort extends Error {}

export interface ParsedYaml {
  value: Record<string, unknown>;
  source: SourceMap;
}

/** Parses one pipeline file's text; throws `SpecError` listing every problem found. */
export function parseYaml(textIn: string, file: string): ParsedYaml {
  const bytes = Buffer.byteLength(textIn, 'utf8');
  if (bytes > MAX_FILE_BYTES) {
    throw new SpecError([{
      file, line: 1, col: 1, path: '/', message: `file is too large: ${bytes} bytes (at most ${MAX_FILE_BYTES})`,
    }]);
  }
  const text = textIn.startsWith('\ufeff') ? textIn.slice(1) : textIn;
  checkCharacters(text, file);
  prescan(text, file);

  const lines = new LineCounter();
  const doc = parseDocument(text, {
    // uniqueKeys is quadratic in yaml; the walk below finds duplicate keys with a Set instead.
    lineCounter: lines, prettyErrors: false, strict: true, uniqueKeys: false, logLevel: 'error',
    version: '1.2', schema: 'core', merge: false, resolveKnownTags: false, customTags: [],
  }) as Document.Parsed<ParsedNode, true>;

  const diags: SpecDiagnostic[] = [];
  const at = (offset: number, path: string, message: string): void => {
    const { line, col } = lines.linePos(offset);
    diags.push({ file, line, col, path, message });
  };
  const yamlProblems = [...doc.errors, ...doc.warnings].sort((x, y) => x.pos[0] - y.pos[0]);
  for (const err of yamlProblems.slice(0, MAX_SYNTAX_ERRORS)) {
    const offset = err.pos[0];
    const path = pointerAtOffset(doc.contents, offset);
    if (err.code === 'DUPLICATE_KEY') {
      const segs = pointerSegments(path === '/' ? '' : path);
      const key = segs.length ? segs[segs.length - 1]! : text.slice(err.pos[0], err.pos[1]);
      at(offset, path, `duplicate key ${describeValue(key)}`);
    } else if (err.code === 'MULTIPLE_DOCS') {
      at(offset, '/', 'a pipeline file must hold exactly one YAML document (another one starts here)');
    } else if (err.code === 'TAG_RESOLVE_FAILED') {
      const tag = shortTag(err.message.replace(/^Unresolved tag: /, ''));
      at(offset, path, CORE_TAGS.has(tag)
        ? `the value is not a valid ${tag}; remove the tag`
        : `tag '${tag}' is not allowed: a pipeline file holds plain values only`);
    } else {
      at(offset, path, `invalid YAML: ${lowerFirst(err.message)}`);
    }
  }
  if (yamlProblems.length > MAX_SYNTAX_ERRORS) {
    const more = yamlProblems.length - MAX_SYNTAX_ERRORS;
    at(yamlProblems[MAX_SYNTAX_ERRORS]!.pos[0], '/', `${more} more YAML error${more === 1 ? '' : 's'} not shown`);
  }
  if (doc.errors.length > 0) throw new SpecError(sortDiagnostics(diags));

  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null && root.range[0] === root.range[1])) {
    diags.push({
      file, line: 1, col: 1, path: '/',
      message: "the file is empty: a pipeline needs at least 'version: 1' and 'name'",
    });
    throw new SpecError(sortDiagnostics(diags));
  }

  const entries = new Map<string, Entry>();
  entries.set('', { value: root });
  const walker = new Walker(doc, lines, file, entries, diags);
  let value: unknown;
  try {
    value = walker.walk(root, '', 0);
  } catch (e) {
    if (!(e instanceof Abort)) throw e;
  }
  if (diags.length === 0 && (typeof value !== 'object' || value === null || Array.isArray(value))) {
    const kind = isSeq(root) ? 'a list' : isAlias(root) ? 'an alias' : describeValue(value);
    at(root.range[0], '/', `the document must be a mapping of pipeline settings (got ${kind})`);
  }
  if (diags.length > 0) throw new SpecError(sortDiagnostics(diags));
  return { value: value as Record<string, unknown>, source: new SourceMap(file, lines, entries) };
}

export function sortDiagnostics(diags: SpecDiagnostic[]): SpecDiagnostic[] {
  const seen = new Set<string>();
  return diags
    .filter((d) => {
      const k = `${d.line}:${d.col}:${d.path}:${d.message}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    })
    .sort((a, b) => a.line - b.line || a.col - b.col || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0) ||
      (a.message < b.message ? -1 : a.message > b.message ? 1 : 0));
}

/** Turns the composed document into plain values, recording where each came from. */
class Walker {
  private aliases = 0;
  private values = 0;
  private readonly targets = new Map<Alias, Node | undefined>();
  private readonly expanding = new Set<Node>();

  constructor(
    doc: Document.Parsed<ParsedNode, true>,
    private readonly lines: LineCounter,
    private readonly file: string,
    private readonly entries: Map<string, Entry>,
    private readonly diags: SpecDiagnostic[],
  ) {
    // An alias refers to the last node with its anchor before it, in document order.
    const anchors = new Map<string, Node>();
    visit(doc, {
      Node: (_key, node) => {
        if (isAlias(node)) this.targets.set(node, anchors.get(node.source));
        else if (node.anchor) anchors.set(node.anchor, node);
      },
    });
  }

  private problem(node: Node | null | undefined, pointer: string, message: string): void {
    const { line, col } = node?.range ? this.lines.linePos(node.range[0]) : { line: 1, col: 1 };
    this.diags.push({ file: this.file, line, col, path: pointer === '' ? '/' : pointer, message });
  }

  private abort(node: Node, pointer: string, message: string): never {
    this.problem(node, pointer, message);
    throw new Abort();
  }

  walk(node: Node | null, pointer: string, depth: number): unknown {
    if (node === null) return null;
    if (++this.values > MAX_VALUES) {
      this.abort(node, pointer, `the document is too large: more than ${MAX_VALUES} values once aliases are expanded`);
    }

    if (isAlias(node)) {
      if (++this.aliases > MAX_ALIAS_EXPANSIONS) {
        this.abort(node, pointer,
          `more than ${MAX_ALIAS_EXPANSIONS} alias expansions: aliases are limited to guard against exponential expansion ("billion laughs")`);
      }
      const target = this.targets.get(node);
      if (target === undefined) {
        this.problem(node, pointer, `unknown alias '*${node.source}': the anchor '&${node.source}' must be defined before it`);
        return undefined;
      }
      if (this.expanding.has(target)) {
        this.problem(node, pointer, `alias '*${node.source}' refers to a collection that contains it`);
        return undefined;
      }
      this.expanding.add(target);
      try {
        return this.walk(target, pointer, depth);
      } finally {
        this.expanding.delete(target);
      }
    }

    if (isScalar(node)) {
      const v = node.value;
      if (typeof v === 'string') {
        if (v.length > MAX_STRING_LENGTH) {
          this.problem(node, pointer, `string is too long: ${v.length} characters (at most ${MAX_STRING_LENGTH})`);
          return undefined;
        }
        return v;
      }
      if (typeof v === 'number') {
        if (!Number.isFinite(v)) {
          this.problem(node, pointer, `must be a finite number (got ${node.source ?? String(v)})`);
          return undefined;
        }
        return v;
      }
      if (typeof v === 'boolean' || v === null) return v;
      this.problem(node, pointer, `unsupported value (${typeof v})`);
      return undefined;
    }

    if (depth + 1 > MAX_DEPTH) this.abort(node, pointer, `nesting is deeper than ${MAX_DEPTH} levels`);

    // Every collection being walked counts as expanding, so an alias to an ancestor is caught at once.
    this.expanding.add(node);
    try {
      return this.walkCollection(node, pointer, depth);
    } finally {
      this.expanding.delete(node);
    }
  }

  private walkCollection(node: Node, pointer: string, depth: number): unknown {
    if (isSeq(node)) {
      const out: unknown[] = [];
      node.items.forEach((item, i) => {
        const ptr = `${pointer}/${i}`;
        const child = item as Node | null;
        this.entries.set(ptr, { value: child });
        out.push(this.walk(child, ptr, depth + 1) ?? null);
      });
      return out;
    }

    if (isMap(node)) {
      const out: Record<string, unknown> = {};
      const seen = new Set<string>();
      for (const pair of node.items as Pair<Node | null, Node | null>[]) {
        const keyNode = pair.key;
        if (!isScalar(keyNode)) {
          this.problem(keyNode ?? pair.value, pointer, isAlias(keyNode)
            ? 'an alias cannot be used as a mapping key'
            : 'mapping keys must be plain strings');
          continue;
        }
        if (keyNode.value === null || keyNode.value === '') {
          this.problem(keyNode.range && keyNode.range[0] === keyNode.range[1] && pair.value ? pair.value : keyNode, pointer,
            'empty mapping key');
          continue;
        }
        const key = String(keyNode.value);
        const ptr = `${pointer}/${escapePointer(key)}`;
        if (key.length > MAX_STRING_LENGTH) {
          this.problem(keyNode, pointer, `key is too long: ${key.length} characters (at most ${MAX_STRING_LENGTH})`);
          continue;
        }
        if (key === '<<' && keyNode.type === 'PLAIN') {
          this.problem(keyNode, ptr, "YAML merge keys ('<<') are not supported: write the keys out");
          continue;
        }
        if (seen.has(key)) {
          this.problem(keyNode, ptr, `duplicate key ${describeValue(key)}`);
          continue;
        }
        seen.add(key);
        this.entries.set(ptr, { key: keyNode, value: pair.value });
        const v = this.walk(pair.value, ptr, depth + 1);
        if (v !== undefined) Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
    this.problem(node, pointer, 'unsupported YAML node');
    return undefined;
  }
}
