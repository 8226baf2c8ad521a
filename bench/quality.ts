/**
 * `npm run bench:quality`: runs pipelines/bench-quality.yaml, bench-quality-cnn.yaml and bench-quality-cnn-activations.yaml (seeds × held-out ensembles) through the
 * embedded stack and writes bench/results/quality-[<family>-][activations-]<date>-<host>-<hhmm>.json (no family for the MLP) with every run's metrics and
 * paired-bootstrap confidence intervals.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadPipelineFile } from '../src/spec/load';
import { mean, pairedBootstrap, type Interval } from './stats';
import { writeFileAtomic } from '../src/store/store';

type Metrics = Record<string, number>;
interface Cell {
  cell: Record<string, unknown>;
  workflowId: string;
  metrics: Metrics;
}

const root = path.resolve(__dirname, '../..');

/** `env`: extra environment of the CLI (e.g. TEMPORAL_ADDRESS of a stack the caller started and serves). */
function runPipeline(file: string, extraArgs: string[], env: Record<string, string> = {}): Promise<{ cells: Cell[]; backend: string | undefined }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(root, 'bin/weightformer.js'), 'run', file, '--json', ...extraArgs], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`pipeline run exited with ${code}`));
      const parsed = JSON.parse(out.trim().split('\n').at(-1)!) as { cells?: Cell[]; backend?: string };
      if (!parsed.cells) return reject(new Error('the bench pipeline must be a sweep (matrix)'));
      resolve({ cells: parsed.cells, backend: parsed.backend });
    });
  });
}

/** The summary the quality bar is read from; each a paired bootstrap over runs. */
export function qualitySummary(runs: Metrics[]): Record<string, Interval> {
  const m = (key: string) => (r: Metrics) => {
    const v = r[key];
    if (v === undefined) throw new Error(`a run lacks metric ${key}`);
    return v;
  };
  const diff = (a: string, b: string) => (sample: Metrics[]) => mean(sample.map((r) => m(a)(r) - m(b)(r)));
  const has = (key: string) => runs.every((r) => r[key] !== undefined);
  const summary: Record<string, Interval> = {};
  summary['gain.ensemble_minus_teacher_mean'] = pairedBootstrap(runs, diff('acc.ensemble', 'acc.teacher_mean'));
  // A ratio of means, not a mean of ratios: per-run ratios explode when a run's ensemble gain is tiny.
  summary['gain_captured.zero_shot'] = pairedBootstrap(runs, (s) => {
    const tm = mean(s.map(m('acc.teacher_mean')));
    return (mean(s.map(m('acc.student_zero_shot'))) - tm) / (mean(s.map(m('acc.ensemble'))) - tm);
  });
  const diffs: Array<[string, string, string]> = [
    ['diff.zero_shot_minus_avg_aligned', 'acc.student_zero_shot', 'acc.avg_aligned'],
    ['diff.zero_shot_minus_teacher_ablation', 'acc.student_zero_shot', 'acc.teacher_ablation'],
    ['diff.zero_shot_minus_data_only', 'acc.student_zero_shot', 'acc.data_only'],
    ['diff.finetuned_minus_ensemble', 'acc.student_finetuned', 'acc.ensemble'],
    ['diff.finetuned_minus_avg_aligned_finetuned', 'acc.student_finetuned', 'acc.avg_aligned_finetuned'],
  ];
  for (const [name, a, b] of diffs) if (has(a) && has(b)) summary[name] = pairedBootstrap(runs, diff(a, b));
  if (has('ratio.consolidate_over_kd_to_match')) {
    summary['ratio.consolidate_over_kd_to_match'] = pairedBootstrap(runs, (s) => mean(s.map(m('ratio.consolidate_over_kd_to_match'))));
  }
  return summary;
}

/** One bench pipeline run through the CLI and summarised: the setting, the machine, every run's metrics, the summary. */
export async function measureQuality(file: string, runArgs: string[], env: Record<string, string> = {}) {
  const loaded = loadPipelineFile(file);
  const started = Date.now();
  const { cells, backend } = await runPipeline(file, runArgs, env);
  const runs = cells.map((c) => ({ seed: c.cell.seed ?? loaded.spec.seed, ensemble: c.cell['teachers.ensembleIndex'] ?? 0, cell: c.cell, workflowId: c.workflowId, metrics: c.metrics }));
  const { spec } = loaded;
  const result = {
    pipeline: path.relative(root, file),
    specHash: loaded.hash,
    setting: {
      architecture: spec.architecture,
      teachersPerEnsemble: spec.teachers.count,
      teacherTraining: spec.teachers.train,
      shards: `each evaluated teacher trains on its own disjoint shard of ${spec.data.shardSize} embedded-MNIST digits; held-out ensemble e uses shard group e`,
      data: spec.data,
      zoo: { count: spec.zoo.count, data: `each zoo teacher: its own random ${spec.data.shardSize} digits of the teacher pool` },
      weightformer: spec.weightformer,
      finetune: spec.finetune,
      baselines: spec.baselines,
      matrix: spec.matrix,
    },
    machine: {
      host: os.hostname(),
      cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
      memoryGiB: Math.round(os.totalmem() / 2 ** 30),
      node: process.version,
      platform: `${os.platform()} ${os.release()}`,
    },
    backend: backend ?? 'unknown',
    wallSeconds: (Date.now() - started) / 1000,
    runs,
    summary: qualitySummary(runs.map((r) => r.metrics)),
  };
  return result;
}

/** One bench pipeline: run it, summarise it, write its results file; returns the file's path. */
async function benchOne(file: string, runArgs: string[]): Promise<string> {
  const result = await measureQuality(file, runArgs);
  const { spec } = loadPipelineFile(file);
  const now = new Date();
  const stamp = `${now.toISOString().slice(0, 10)}-${os.hostname()}-${now.toISOString().slice(11, 16).replace(':', '')}`;
  // The MLP family keeps the plain name; other families name themselves, and so does activation alignment.
  const family = `${spec.architecture.family === 'mlp' ? '' : `${spec.architecture.family}-`}${spec.alignment?.method === 'activations' ? 'activations-' : ''}`;
  const out = path.join(root, 'bench/results', `quality-${family}${stamp}.json`);
  await fs.mkdir(path.dirname(out), { recursive: true });
  await writeFileAtomic(out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(result.summary, null, 2)}\nwrote ${path.relative(root, out)}\n`);
  return out;
}

/**
 * Arguments: the bench pipeline files (`.yaml`), run one after the other (default: the MLP bench), then any
 * options for `weightformer run` (e.g. `--no-cache`).
 */
async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const files = args.filter((a) => a.endsWith('.yaml') || a.endsWith('.yml'));
  const runArgs = args.filter((a) => !files.includes(a));
  for (const file of files.length > 0 ? files : [path.join(root, 'pipelines/bench-quality.yaml')]) {
    await benchOne(path.resolve(file), runArgs);
  }
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bench:quality failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
