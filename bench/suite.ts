/**
 * `npm run bench` / `weightformer bench [--quick]`: the fixed benchmark suite. Writes
 * bench/results/bench-<date>-<host>-<hhmm>.json and a Markdown table beside it (.md), each with the
 * backend, the machine (CPU, cores, memory, GPU adapter) and the versions (node, tfjs, this package).
 *
 * Sections (each runs even if another failed; a failure is recorded with its message):
 *   quality        bench:quality's MLP and CNN pipelines run fresh through the embedded stack (--quick: one
 *                  cell each with a reduced zoo, fewer steps and epochs, and the output says so)
 *   scaling        T = 2, 4, 8, 16: gain captured and seconds to consolidate, WeightFormer vs KD from scratch
 *   compute        ms per meta-step and per student step on cpu, wasm, webgpu, as ratios to wasm; kernels
 *                  per meta-step, batched vs the plain port
 *   orchestration  trivial stages through Temporal vs called directly, ms per stage
 *
 * Options: --quick, --only a,b (a subset of the sections), --out DIR (default bench/results).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { InputError } from '../src/util/errors';
import { writeFileAtomic } from '../src/store/store';
import { initBackend, probeWebgpuAdapter } from '../src/ml/backend';
import { tf } from '../src/ml/tf';
import { COMPUTE_FULL, COMPUTE_QUICK, runCompute, type BackendTiming } from './compute';
import { runOrchestration, type OrchestrationResult } from './orchestration';
import { measureQuality } from './quality';
import { startEmbeddedStack } from '../src/stack/embedded';
import { createPipelineWorker } from '../src/worker/worker';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { SCALING_FULL, SCALING_QUICK, runScaling, type ScalingResult } from './scaling';
import type { Interval } from './stats';

export const SECTIONS = ['quality', 'scaling', 'compute', 'orchestration'] as const;
export type Section = (typeof SECTIONS)[number];

export interface SuiteOptions {
  quick: boolean;
  sections: Section[];
  outDir: string;
}

const root = path.resolve(__dirname, '../..');

/** Parses the suite's arguments; InputError on anything unknown. */
export function parseSuiteArgs(argv: string[]): SuiteOptions {
  const o: SuiteOptions = { quick: false, sections: [...SECTIONS], outDir: path.join(root, 'bench/results') };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') o.quick = true;
    else if (a === '--only' || a === '--out') {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new InputError(`${a} needs a value`);
      if (a === '--out') o.outDir = path.resolve(v);
      else {
        const wanted = v.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
        const unknown = wanted.filter((x) => !(SECTIONS as readonly string[]).includes(x));
        if (unknown.length > 0 || wanted.length === 0) throw new InputError(`--only: unknown section ${unknown.join(', ') || '(none)'}; sections are ${SECTIONS.join(', ')}`);
        o.sections = wanted as Section[];
      }
    } else throw new InputError(`unknown bench option ${String(a)} (options: --quick, --only ${SECTIONS.join(',')}, --out DIR)`);
  }
  return o;
}

interface QualityFamilyResult {
  family: string;
  pipeline: string;
  reduced: string | null;
  wallSeconds: number;
  backend: string;
  runs: number;
  summary: Record<string, Interval>;
  means: Record<string, number>;
}

type SectionOutcome<T> = { status: 'ok'; seconds: number; result: T } | { status: 'failed'; seconds: number; error: string } | { status: 'skipped'; reason: string };

export interface SuiteResult {
  suite: 'weightformer-bench/1';
  mode: 'quick' | 'full';
  startedAt: string;
  wallSeconds: number;
  backend: string;
  machine: { host: string; cpuModel: string; cores: number; memoryGiB: number; platform: string; gpuAdapter: string | null; loadAverage1m?: { start: number; end: number } };
  versions: Record<string, string>;
  sections: {
    quality?: SectionOutcome<QualityFamilyResult[]>;
    scaling?: SectionOutcome<ScalingResult>;
    compute?: SectionOutcome<BackendTiming[]>;
    orchestration?: SectionOutcome<OrchestrationResult>;
  };
}

function packageVersion(name: string): string {
  try {
    return (JSON.parse(readFileSync(require.resolve(`${name}/package.json`), 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

/** What --quick changes in the quality bench pipelines, per family (the rest of each file is kept). */
const QUICK_QUALITY: Record<string, { zoo: number; epochs: number; steps: number; batch: number; kdEpochs: number }> = {
  mlp: { zoo: 6, epochs: 2, steps: 20, batch: 64, kdEpochs: 6 },
  cnn: { zoo: 5, epochs: 1, steps: 10, batch: 32, kdEpochs: 2 },
};

/**
 * A bench run's copy of a quality pipeline: named `<name>-<runTag>` so that its workflow ids are new and
 * `--no-cache` really recomputes (a no-cache run reuses what an earlier run of the same workflow id
 * computed: its cache is scoped by workflow id). The MLflow experiment is kept.
 */
export function freshQualityYaml(text: string, runTag: string): string {
  const doc = parseYaml(text) as Record<string, any>;
  doc.tracking = { ...doc.tracking, experiment: String(doc.tracking?.experiment ?? doc.name) };
  doc.name = `${String(doc.name)}-${runTag}`.slice(0, 63);
  return `# Generated by bench/suite.ts from the bench pipeline of the same name, renamed for a fresh run.\n${stringifyYaml(doc)}`;
}

/** The quick variant of a quality bench pipeline: one cell, a small zoo, few steps (named *-quick). */
export function quickQualityYaml(text: string): string {
  const doc = parseYaml(text) as Record<string, any>;
  const family = String(doc.architecture?.family ?? 'mlp');
  const q = QUICK_QUALITY[family] ?? QUICK_QUALITY['cnn']!;
  doc.name = `${String(doc.name)}-quick`;
  doc.matrix = { seed: [1] };
  doc.zoo = { ...doc.zoo, count: q.zoo, train: { ...doc.zoo.train, epochs: q.epochs } };
  doc.teachers = { ...doc.teachers, train: { ...doc.teachers.train, epochs: q.epochs } };
  doc.weightformer = { ...doc.weightformer, validationTeachers: 2, validationEnsembles: 1, train: { ...doc.weightformer.train, steps: q.steps, batchSize: q.batch, tMax: 4, evalEvery: q.steps / 2 } };
  doc.finetune = { ...doc.finetune, epochs: 1 };
  doc.baselines = { ...doc.baselines, kd: { ...doc.baselines.kd, epochs: q.kdEpochs } };
  doc.tracking = { ...doc.tracking, experiment: `${String(doc.tracking?.experiment ?? doc.name)}-quick` };
  return `# yaml-language-server: $schema=../schemas/pipeline.schema.json\n# Generated by bench/suite.ts --quick from the full bench pipeline: a reduced setting, not the quality bar.\n${stringifyYaml(doc)}`;
}

function quickNote(family: string): string {
  const q = QUICK_QUALITY[family] ?? QUICK_QUALITY['cnn']!;
  return `reduced (--quick): one seed and one held-out ensemble of 4, zoo ${q.zoo} (subsets 2…4), teachers ${q.epochs} epoch${q.epochs === 1 ? '' : 's'}, ${q.steps} meta-steps × ${q.batch}, 1 fine-tune epoch, KD ${q.kdEpochs} epochs; a smoke-level figure with no confidence interval, not the quality bar`;
}

/**
 * Both quality pipelines at once on one local stack (Temporal dev server + MLflow, as `weightformer run`
 * starts them) served by one in-process worker (two activities at a time), each submitted by
 * `weightformer run --wait` with TEMPORAL_ADDRESS set: one stack start instead of two, and the second
 * pipeline's stages fill the time the first one's serial stages leave free.
 */
async function qualitySection(quick: boolean, log: (l: string) => void): Promise<QualityFamilyResult[]> {
  const files = ['pipelines/bench-quality.yaml', 'pipelines/bench-quality-cnn.yaml'].map((f) => path.join(root, f));
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'wf-bench-quality-'));
  const runTag = Date.now().toString(36);
  const state = path.resolve(process.env['WEIGHTFORMER_STATE_DIR'] ?? path.join(root, '.weightformer'));
  const stack = await startEmbeddedStack({ stateDir: state, mlflowUrl: process.env['MLFLOW_TRACKING_URI'] || undefined, log });
  const queuePrefix = `bench-${process.pid}`;
  let worker: Awaited<ReturnType<typeof createPipelineWorker>> | null = null;
  let running: Promise<void> | null = null;
  try {
    worker = await createPipelineWorker({
      temporalAddress: stack.temporalAddress, taskQueue: 'cpu', queuePrefix,
      storeRoot: path.resolve(process.env['WEIGHTFORMER_STORE'] ?? path.join(state, 'store')), mlflowUrl: stack.mlflowUrl,
    });
    running = worker.run();
    const env = { TEMPORAL_ADDRESS: stack.temporalAddress, MLFLOW_TRACKING_URI: stack.mlflowUrl, WEIGHTFORMER_QUEUE_PREFIX: queuePrefix };
    return await Promise.all(
      files.map(async (file) => {
        const runFile = path.join(tmp, path.basename(file));
        const original = readFileSync(file, 'utf8');
        writeFileSync(runFile, freshQualityYaml(quick ? quickQualityYaml(original) : original, runTag));
        log(`quality: running ${path.relative(root, file)}${quick ? ' (quick)' : ''}`);
        const r = await measureQuality(runFile, ['--no-cache', '--wait'], env);
        const means: Record<string, number> = {};
        const keys = new Set(r.runs.flatMap((x) => Object.keys(x.metrics)));
        for (const k of keys) {
          if (!/^(acc|gain_captured|seconds|ratio)\./.test(k)) continue;
          const vals = r.runs.map((x) => x.metrics[k]).filter((v): v is number => typeof v === 'number');
          if (vals.length === r.runs.length) means[k] = vals.reduce((a, b) => a + b, 0) / vals.length;
        }
        return {
          family: String(r.setting.architecture.family),
          pipeline: path.relative(root, file),
          reduced: quick ? quickNote(String(r.setting.architecture.family)) : null,
          wallSeconds: r.wallSeconds,
          backend: r.backend,
          runs: r.runs.length,
          summary: r.summary,
          means,
        };
      }),
    );
  } finally {
    if (worker) {
      worker.shutdown();
      await running?.catch(() => undefined);
    }
    await stack.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function timed<T>(name: string, f: () => Promise<T>, log: (l: string) => void): Promise<SectionOutcome<T>> {
  const t0 = performance.now();
  try {
    const result = await f();
    return { status: 'ok', seconds: (performance.now() - t0) / 1000, result };
  } catch (e) {
    const error = e instanceof Error ? e.message : String(e);
    log(`${name} failed: ${error}`);
    return { status: 'failed', seconds: (performance.now() - t0) / 1000, error };
  }
}

export async function runSuite(o: SuiteOptions, log: (l: string) => void): Promise<{ result: SuiteResult; json: string; md: string }> {
  const started = new Date();
  const t0 = performance.now();
  const { backend } = await initBackend('wasm');
  const adapter = await probeWebgpuAdapter().catch(() => null);
  const cpus = os.cpus();
  const result: SuiteResult = {
    suite: 'weightformer-bench/1',
    mode: o.quick ? 'quick' : 'full',
    startedAt: started.toISOString(),
    wallSeconds: 0,
    backend: `${backend} (the default for the quality and scaling sections; compute covers every backend)`,
    machine: {
      host: os.hostname(),
      cpuModel: cpus[0]?.model ?? 'unknown',
      cores: cpus.length,
      memoryGiB: Math.round(os.totalmem() / 2 ** 30),
      platform: `${os.platform()} ${os.release()} ${os.arch()}`,
      gpuAdapter: adapter ? `${adapter.description}${adapter.isFallbackAdapter ? ' (fallback adapter)' : ''}` : null,
      // Timings on a shared machine are only as good as its idleness: recorded so a reader can judge.
      loadAverage1m: { start: os.loadavg()[0] ?? NaN, end: NaN },
    },
    versions: {
      node: process.version,
      'weightformer-pipelines': (JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version,
      '@tensorflow/tfjs-core': tf.version_core,
      '@tensorflow/tfjs-backend-wasm': packageVersion('@tensorflow/tfjs-backend-wasm'),
      '@tensorflow/tfjs-backend-webgpu': packageVersion('@tensorflow/tfjs-backend-webgpu'),
      webgpu: packageVersion('webgpu'),
      '@temporalio/worker': packageVersion('@temporalio/worker'),
    },
    sections: {},
  };
  const want = (s: Section): boolean => o.sections.includes(s);
  if (want('compute')) result.sections.compute = await timed('compute', () => runCompute(o.quick ? COMPUTE_QUICK : COMPUTE_FULL, log), log);
  if (want('orchestration')) result.sections.orchestration = await timed('orchestration', () => runOrchestration(o.quick ? 5 : 8, o.quick ? 3 : 10, log), log);
  if (want('scaling')) result.sections.scaling = await timed('scaling', () => runScaling(o.quick ? SCALING_QUICK : SCALING_FULL, log), log);
  if (want('quality')) result.sections.quality = await timed('quality', () => qualitySection(o.quick, log), log);
  result.wallSeconds = (performance.now() - t0) / 1000;
  if (result.machine.loadAverage1m) result.machine.loadAverage1m.end = os.loadavg()[0] ?? NaN;
  const json = `${JSON.stringify(result, null, 2)}\n`;
  return { result, json, md: renderMarkdown(result) };
}

const pct = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? '—' : `${(100 * x).toFixed(1)}%`);
const num = (x: number | undefined, digits = 2): string => (x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(digits));

/** The Markdown table file: the same figures as the JSON, for reading. */
export function renderMarkdown(r: SuiteResult): string {
  const L: string[] = [];
  L.push(`# WeightFormer bench (${r.mode}) — ${r.startedAt.slice(0, 16).replace('T', ' ')} UTC, ${r.machine.host}`);
  L.push('');
  L.push(`- Machine: ${r.machine.cores} × ${r.machine.cpuModel}, ${r.machine.memoryGiB} GiB, ${r.machine.platform}; GPU adapter: ${r.machine.gpuAdapter ?? 'none'}`);
  L.push(`- Backend: ${r.backend}`);
  L.push(`- Versions: ${Object.entries(r.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  const load = r.machine.loadAverage1m;
  L.push(`- Wall time: ${num(r.wallSeconds, 0)} s${load ? ` (1-minute load average ${num(load.start, 1)} at the start, ${num(load.end, 1)} at the end, on ${r.machine.cores} cores)` : ''}`);
  if (r.mode === 'quick') L.push('- **Quick mode**: reduced settings throughout (see each section); not the quality bar.');
  const failed = (name: string, s: SectionOutcome<unknown> | undefined): boolean => {
    if (!s) {
      L.push(`${name}: not run (not in --only)`, '');
      return true;
    }
    if (s.status === 'failed') L.push(`**${name} failed** after ${num(s.seconds, 0)} s: ${s.error}`, '');
    if (s.status === 'skipped') L.push(`${name} skipped: ${s.reason}`, '');
    return s.status !== 'ok';
  };

  L.push('', '## Compute (ms per step; ratio to wasm in this run)', '');
  if (!failed('compute', r.sections.compute) && r.sections.compute?.status === 'ok') {
    L.push('| backend | meta-step ms | ÷ wasm | plain-port meta-step ms | student step ms | ÷ wasm | kernels/meta-step (batched) | plain port | fewer × | note |');
    L.push('|---|---|---|---|---|---|---|---|---|---|');
    for (const t of r.sections.compute.result) {
      if (t.status !== 'measured') {
        L.push(`| ${t.backend} | — | — | — | — | — | — | — | — | ${t.status}: ${t.reason ?? ''} |`);
        continue;
      }
      const k = t.kernels;
      L.push(
        `| ${t.backend} | ${num(t.metaStepMs, 1)} | ${num(t.metaStepRatioToWasm)} | ${num(t.plainPortMetaStepMs, 1)} | ${num(t.studentStepMs, 2)} | ${num(t.studentStepRatioToWasm)} | ${k ? `${k.batched.total} (${k.batched.computing} computing)` : '—'} | ${k ? `${k.plainPort.total} (${k.plainPort.computing})` : '—'} | ${k ? `${num(k.ratio, 1)} (${num(k.ratioComputing, 1)})` : '—'} | ${t.adapter ?? ''} |`,
      );
    }
    L.push('', 'Kernels are `tf.profile` kernels.length for one meta-step (T = 4 teachers × 74 rows, d = 64, 256 digits); "computing" leaves out Reshape, Identity and Cast, which dispatch no work on a GPU. The plain port (bench/plain-port.ts) computes the same function with the prototype\'s per-teacher / per-layer / per-head loops and per-tensor Adam.');
  }

  L.push('', '## Teacher scaling (MLP 784-64-10, embedded MNIST)', '');
  if (!failed('scaling', r.sections.scaling) && r.sections.scaling?.status === 'ok') {
    const s = r.sections.scaling.result;
    L.push(`Setting: zoo ${s.setting.zoo}, meta-steps ${s.setting.metaSteps} × ${s.setting.metaBatch} digits, subsets T ${s.setting.tMin}…${s.setting.tMax}, teachers ${s.setting.teacherEpochs} epochs on disjoint ${s.setting.shardSize}-digit shards; ${s.coverage}. Teachers took ${num(s.secondsTeachers, 0)} s, meta-training ${num(s.secondsMetaTrain, 0)} s (once, for every T).`);
    L.push('');
    L.push('| T | teacher mean | ensemble | zero-shot | fine-tuned | gain captured zero-shot | fine-tuned | s consolidate (generate + fine-tune) | s KD to match | consolidate ÷ KD | |');
    L.push('|---|---|---|---|---|---|---|---|---|---|---|');
    for (const p of s.points) {
      L.push(
        `| ${p.T} | ${pct(p.accTeacherMean)} | ${pct(p.accEnsemble)} | ${pct(p.accZeroShot)} | ${pct(p.accFinetuned)} | ${num(p.gainCapturedZeroShot)} | ${num(p.gainCapturedFinetuned)} | ${num(p.secondsConsolidate)} (${num(p.secondsGenerate, 3)} + ${num(p.secondsFinetune)}) | ${num(p.secondsKdToMatch)}${p.kdReached ? '' : ' (not reached in ' + p.kdEpochs + ' epochs: lower bound)'} | ${num(p.ratioConsolidateOverKd)} | ${p.extrapolation ? '**extrapolation**' : ''} |`,
      );
    }
  }

  L.push('', '## Orchestration overhead', '');
  if (!failed('orchestration', r.sections.orchestration) && r.sections.orchestration?.status === 'ok') {
    const o = r.sections.orchestration.result;
    L.push(`| stages × runs | ms/stage through Temporal | ms/stage direct | overhead ms/stage | one-off setup s |`);
    L.push('|---|---|---|---|---|');
    L.push(`| ${o.stages} × ${o.runs} | ${num(o.msPerStageTemporal, 1)} | ${num(o.msPerStageDirect, 4)} | ${num(o.overheadMsPerStage, 1)} | ${num(o.secondsSetup, 1)} |`);
    L.push('', 'Real Temporal dev server (started by the suite as `weightformer run` starts it) and an in-process worker; one untimed warm-up run.');
  }

  L.push('', '## Quality', '');
  if (!failed('quality', r.sections.quality) && r.sections.quality?.status === 'ok') {
    if (r.sections.quality.result.length > 1) {
      L.push('The pipelines ran at the same time on one worker (two stages at once): their `seconds.*` and `ratio.*` figures and wall times include contention with each other; the accuracies do not depend on it.', '');
    }
    for (const q of r.sections.quality.result) {
      L.push(`### ${q.family} (${q.pipeline}, ${q.runs} run${q.runs === 1 ? '' : 's'}, ${q.backend}, ${num(q.wallSeconds, 0)} s)`, '');
      if (q.reduced) L.push(`Setting: ${q.reduced}.`, '');
      L.push('| figure | mean [95% CI] |', '|---|---|');
      for (const [k, v] of Object.entries(q.summary)) L.push(`| ${k} | ${num(v.mean, 3)} [${num(v.ci95[0], 3)}, ${num(v.ci95[1], 3)}] |`);
      L.push('', '| metric (mean over runs) | value |', '|---|---|');
      for (const [k, v] of Object.entries(q.means).sort(([a], [b]) => a.localeCompare(b))) L.push(`| ${k} | ${k.startsWith('acc.') ? pct(v) : num(v, 3)} |`);
      L.push('');
    }
  }
  return `${L.join('\n')}\n`;
}

/** bench-<date>-<host>-<hhmm> (UTC). */
export function resultStem(at: Date, host = os.hostname()): string {
  const iso = at.toISOString();
  return `bench-${iso.slice(0, 10)}-${host}-${iso.slice(11, 16).replace(':', '')}`;
}

export async function benchMain(argv: string[]): Promise<number> {
  const o = parseSuiteArgs(argv);
  const log = (l: string): void => void process.stderr.write(`${l}\n`);
  const { result, json, md } = await runSuite(o, log);
  await fs.mkdir(o.outDir, { recursive: true });
  const stem = path.join(o.outDir, resultStem(new Date(result.startedAt)));
  await writeFileAtomic(`${stem}.json`, json);
  await writeFileAtomic(`${stem}.md`, md);
  process.stdout.write(md);
  process.stdout.write(`\nwrote ${path.relative(process.cwd(), stem)}.json and .md (${num(result.wallSeconds, 0)} s)\n`);
  const anyFailed = Object.values(result.sections).some((s) => s?.status === 'failed');
  return anyFailed ? 1 : 0;
}

if (require.main === module) {
  // Run directly (not through the CLI, which installs its own): keep the SDK's per-task logging quiet.
  Runtime.install({ logger: new DefaultLogger('WARN') });
  benchMain(process.argv.slice(2))
    .then((code) => process.exit(code))
    .catch((err) => {
      process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(err instanceof InputError ? 2 : 1);
    });
}
