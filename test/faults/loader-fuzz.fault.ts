import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { loadPipelineText } from '../../src/spec/load';
import { SpecError, formatDiagnostic } from '../../src/util/errors';
import { runCli } from '../helpers/cli';
import { recordFault } from './rows';

const PIPELINES = path.resolve(__dirname, '../../../pipelines');
const SOURCES = fs.readdirSync(PIPELINES).filter((f) => f.endsWith('.yaml')).sort().map((f) => ({ file: path.join(PIPELINES, f), text: fs.readFileSync(path.join(PIPELINES, f), 'utf8') }));

/** Bits of YAML and JSON that tend to break loaders: structure, tags, anchors, odd numbers, control bytes. */
const NASTY = [':', ': ', '- ', '-', '[', ']', '{', '}', ',', '&a ', '*a', '<<: *a', '!!js/function ', '!!binary ', '!tag ', '\t', '\n', '\r\n', '  ', '    ', '"', "'", '#', '|', '>', '~', 'null', '1e999', '-1', '0x10', '.nan', '.inf', '-.inf', '1e-400', '99999999999999999999', '""', '[]', '{}', '%YAML 1.1\n', '---\n', '...\n', '? ', '\u0000', '\uFEFF', '\u2028', '😀', '../../../../etc/passwd', 'ftp://x/y', 'file:///etc/passwd', 'true', 'no', 'on'];

type Mutation =
  | { kind: 'insert'; at: number; text: string }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'dropLine'; line: number }
  | { kind: 'duplicateLine'; line: number }
  | { kind: 'swapLines'; a: number; b: number }
  | { kind: 'indent'; line: number; delta: number }
  | { kind: 'replaceValue'; line: number; value: string }
  | { kind: 'truncate'; at: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), text: fc.oneof(fc.constantFrom(...NASTY), fc.string({ maxLength: 8 }), fc.string({ unit: 'grapheme', maxLength: 4 })) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ kind: fc.constant('dropLine' as const), line: fc.nat() }),
  fc.record({ kind: fc.constant('duplicateLine' as const), line: fc.nat() }),
  fc.record({ kind: fc.constant('swapLines' as const), a: fc.nat(), b: fc.nat() }),
  fc.record({ kind: fc.constant('indent' as const), line: fc.nat(), delta: fc.integer({ min: -4, max: 4 }) }),
  fc.record({
    kind: fc.constant('replaceValue' as const),
    line: fc.nat(),
    value: fc.oneof(fc.constantFrom(...NASTY), fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v) ?? 'null'), fc.double().map(String), fc.integer().map(String)),
  }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
);

function applyMutation(text: string, m: Mutation): string {
  const lines = text.split('\n');
  const pick = (n: number) => n % Math.max(1, lines.length);
  switch (m.kind) {
    case 'insert': { const at = m.at % (text.length + 1); return text.slice(0, at) + m.text + text.slice(at); }
    case 'delete': { const at = m.at % (text.length + 1); return text.slice(0, at) + text.slice(at + m.length); }
    case 'truncate': return text.slice(0, m.at % (text.length + 1));
    case 'dropLine': lines.splice(pick(m.line), 1); return lines.join('\n');
    case 'duplicateLine': { const i = pick(m.line); lines.splice(i, 0, lines[i] ?? ''); return lines.join('\n'); }
    case 'swapLines': { const a = pick(m.a); const b = pick(m.b); [lines[a], lines[b]] = [lines[b] ?? '', lines[a] ?? '']; return lines.join('\n'); }
    case 'indent': {
      const i = pick(m.line);
      const l = lines[i] ?? '';
      lines[i] = m.delta >= 0 ? ' '.repeat(m.delta) + l : l.replace(new RegExp(`^ {0,${-m.delta}}`), '');
      return lines.join('\n');
    }
    case 'replaceValue': {
      const i = pick(m.line);
      const l = lines[i] ?? '';
      const colon = l.indexOf(': ');
      lines[i] = colon >= 0 ? `${l.slice(0, colon + 2)}${m.value}` : `${l}${m.value}`;
      return lines.join('\n');
    }
  }
}

const caseArb = fc.record({ source: fc.nat({ max: SOURCES.length - 1 }), mutations: fc.array(mutationArb, { minLength: 1, maxLength: 4 }) });
const POSITIONED = /^(.+):(\d+):(\d+): \/\S* ?/;

/** Why a loader outcome breaks the contract, or null: success, or a SpecError whose every line is FILE:LINE:COL. */
function contractBreach(file: string, text: string, err: unknown): string | null {
  if (err === undefined) return null;
  if (!(err instanceof SpecError)) return `threw ${(err as Error)?.name ?? typeof err}: ${(err as Error)?.message ?? String(err)}`;
  if (err.diagnostics.length === 0) return 'SpecError without diagnostics';
  const lineCount = text.split(/\r\n|\r|\n|\u2028|\u2029/).length;
  for (const d of err.diagnostics) {
    const line = formatDiagnostic(d);
    const m = POSITIONED.exec(line);
    if (!m || m[1] !== file) return `not FILE:LINE:COL: ${JSON.stringify(line)}`;
    if (!(d.line >= 1 && d.col >= 1 && Number.isInteger(d.line) && Number.isInteger(d.col))) return `bad position ${d.line}:${d.col}`;
    if (d.line > lineCount + 1) return `line ${d.line} beyond the file's ${lineCount} lines: ${line}`;
    if (/\n\s+at /.test(d.message)) return `stack trace in message: ${line}`;
  }
  return null;
}

describe('fault: pipeline loader fuzzing', function () {
  this.timeout(600_000);
  // Fixed seed so a run is repeatable; WEIGHTFORMER_FUZZ_SEED / _RUNS explore further on demand.
  const RUNS = Number(process.env.WEIGHTFORMER_FUZZ_RUNS ?? 3000);
  const SEED = Number(process.env.WEIGHTFORMER_FUZZ_SEED ?? 20261201);

  it(`loads ${RUNS} random mutations of the valid pipelines/*.yaml: never crashes, every error FILE:LINE:COL`, () => {
    const cases = fc.sample(caseArb, { numRuns: RUNS, seed: SEED });
    const breaches: string[] = [];
    let rejected = 0;
    for (const c of cases) {
      const src = SOURCES[c.source]!;
      const text = c.mutations.reduce(applyMutation, src.text);
      let err: unknown;
      try {
        loadPipelineText(text, src.file);
      } catch (e) {
        err = e;
        rejected += 1;
      }
      const breach = contractBreach(src.file, text, err);
      if (breach) breaches.push(`${path.basename(src.file)} ${JSON.stringify(c.mutations)}: ${breach}`);
    }
    recordFault({
      scenario: 'loader fuzz: mutated pipeline files (in-process)',
      tried: cases.length,
      survived: cases.length - breaches.length,
      work_redone_steps: 0,
      checkpoint_interval_steps: 0,
      data_lost: 0,
      note: `${rejected} rejected with positioned errors, ${cases.length - rejected} still valid; fast-check seed ${SEED}`,
    });
    assert.deepEqual(breaches.slice(0, 10), [], `${breaches.length} of ${cases.length} mutations broke the contract`);
    assert.ok(rejected > cases.length / 4, `only ${rejected} mutations were rejected: the fuzzer is too gentle to mean anything`);
  });

  it('weightformer validate on mutated files prints positioned errors and no stack trace', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-fuzz-'));
    try {
      const cases = fc.sample(caseArb, { numRuns: 40, seed: 7 });
      const files = cases.map((c, i) => {
        const src = SOURCES[c.source]!;
        const file = path.join(dir, `m${i}-${path.basename(src.file)}`);
        fs.writeFileSync(file, c.mutations.reduce(applyMutation, src.text));
        return file;
      });
      // The temp folder is an allowed root so relative data paths resolve as they would beside the originals.
      const { code, stdout, stderr } = await runCli(['validate', ...files], { WEIGHTFORMER_ALLOWED_ROOTS: `${dir}${path.delimiter}${PIPELINES}` });
      const output = `${stdout}\n${stderr}`;
      const lines = output.split('\n').filter((l) => l.trim() !== '');
      const bad = lines.filter((l) => !(POSITIONED.test(l) || / ok \(hash /.test(l)));
      const stack = /\n\s+at .+:\d+:\d+\)?/.test(output);
      const survivedFiles = files.filter((f) => !bad.some((l) => l.startsWith(f))).length;
      recordFault({
        scenario: 'loader fuzz: weightformer validate (CLI output)',
        tried: files.length,
        survived: stack || (code !== 0 && code !== 2) ? 0 : survivedFiles,
        work_redone_steps: 0,
        checkpoint_interval_steps: 0,
        data_lost: 0,
        note: `exit ${code}; ${lines.length} output lines`,
      });
      assert.equal(stack, false, `stack trace printed:\n${output}`);
      assert.deepEqual(bad, [], output);
      // `validate` exits 2 on any invalid file (documented), 0 when all are valid; anything else is a crash.
      assert.ok(code === 0 || code === 2, `exit code ${code}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
