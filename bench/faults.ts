/**
 * `npm run test:faults`: runs the fault suites (dist/test/faults/*.fault.js; named so that
 * the plain `npm test` glob, *.test.js, leaves them out) against real servers and writes
 * bench/results/faults-<date>-<host>-<hhmm>.json (`rows[]`, one per scenario, each measured by its test)
 * and a Markdown table beside it. Exits non-zero when a test failed.
 *
 * Usage: node dist/bench/faults.js [--grep <pattern>] [--out <dir>]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Mocha from 'mocha';

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const outDir = path.resolve(arg('--out') ?? path.join(__dirname, '../../bench/results'));
  const grep = arg('--grep');
  const testDir = path.join(__dirname, '../test/faults');
  // The same module instance the suites record their rows into.
  const { faultRows } = await import('../test/faults/rows.js');
  const setup = await import('../test/setup.js');
  const mocha = new Mocha({ timeout: 600_000, rootHooks: setup.mochaHooks as Mocha.RootHookObject, ...(grep ? { grep } : {}) });
  for (const f of fs.readdirSync(testDir).filter((f) => f.endsWith('.fault.js')).sort()) mocha.addFile(path.join(testDir, f));
  const started = Date.now();
  const failures = await new Promise<number>((resolve) => mocha.run(resolve));
  const seconds = Math.round((Date.now() - started) / 1000);

  const rows = [...faultRows()] as unknown as Array<Record<string, unknown>>;
  const now = new Date();
  const pad = (n: number) => String(n).padStart(2, '0');
  const stamp = `${now.getUTCFullYear()}-${pad(now.getUTCMonth() + 1)}-${pad(now.getUTCDate())}-${os.hostname().split('.')[0]}-${pad(now.getUTCHours())}${pad(now.getUTCMinutes())}`;
  fs.mkdirSync(outDir, { recursive: true });
  const base = path.join(outDir, `faults-${stamp}`);
  const doc = { date: now.toISOString(), host: os.hostname(), cpus: os.cpus().length, seconds, failures, grep: grep ?? null, rows };
  fs.writeFileSync(`${base}.json`, `${JSON.stringify(doc, null, 2)}\n`);
  fs.writeFileSync(`${base}.md`, renderTable(doc));
  process.stdout.write(`\n${renderTable(doc)}\nwrote ${base}.json and ${base}.md\n`);
  return failures > 0 ? 1 : 0;
}

function renderTable(doc: { date: string; host: string; cpus: number; seconds: number; failures: number; rows: Array<Record<string, unknown>> }): string {
  const cols = ['scenario', 'tried', 'survived', 'work_redone_steps', 'checkpoint_interval_steps', 'data_lost', 'note'];
  const cell = (v: unknown) => (v === undefined ? '' : String(v).replace(/\|/g, '\\|'));
  return [
    `# Fault suite — ${doc.date} on ${doc.host} (${doc.cpus} CPUs), ${doc.seconds} s, ${doc.failures} failing test(s)`,
    '',
    `| ${cols.join(' | ')} |`,
    `|${cols.map(() => '---').join('|')}|`,
    ...doc.rows.map((r) => `| ${cols.map((c) => cell(r[c])).join(' | ')} |`),
    '',
  ].join('\n');
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
