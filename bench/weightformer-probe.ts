/**
 * The honest-regime WeightFormer measurement on wasm (see DESIGN.md "Calibration").
 *
 * Data: the 10,000 embedded MNIST digits split by `splitDataset` into test 2,000 (used for nothing but the
 * final numbers), validation 1,000 (checkpoint choice), consolidation 1,000 (the only data meta-training
 * reads) and 12 disjoint shards of 500 digits. Held-out teachers (never in the zoo) each train on one of
 * shards 6–11. The brief's 20 zoo teachers on their own disjoint 500-digit shards do not fit next to those
 * (10,000 digits in all), so the 20 zoo teachers each train on a seeded 500-digit sample of the 3,000-digit
 * pool of shards 0–5: they never see a held-out teacher's, the consolidation, validation or test digits,
 * but overlap each other by ~1/6. Teachers are 784-64-10 ReLU MLPs trained with `trainMlp`.
 * Held-out ensembles: all 15 T=4 subsets of the 6 held-out teachers (scored on the validation data to
 * choose the checkpoint, on the test data for the numbers).
 *
 * Usage (after `npx tsc -p .`):
 *   node dist/bench/weightformer-probe.js teachers                       # train + cache the 24 teachers
 *   node dist/bench/weightformer-probe.js run NAME VARIANT SEED STEPS [key=value…]   # one meta-training
 *   node dist/bench/weightformer-probe.js report GROUP…     # table + CIs over runs GROUP or GROUP-s<seed>
 * VARIANT: wf | ablation | mixing | probe | mixing-probe (config overrides as key=value, e.g. d=128 lr=3e-4).
 * Results go to bench/results/weightformer-probe/; teachers are cached in .weightformer/bench-cache/.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import type { ArchitectureSpec } from '../src/spec/types';
import {
  accuracyOfScores,
  alignToReference,
  alignedAverage,
  averageParams,
  deserializeParams,
  ensembleProbs,
  generateStudent,
  initBackend,
  initMlp,
  loadEmbeddedMnist,
  metaTrain,
  predictLogits,
  serializeParams,
  serializeWeightformer,
  selectExamples,
  splitDataset,
  trainMlp,
  weightformerConfig,
  deriveSeed,
  Rng,
} from '../src/ml';
import type { Dataset, DatasetSplit, MlpParams, WeightformerConfig } from '../src/ml';

const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' };
const ZOO = 20;
const HELD_OUT = 6;
const POOL_SHARDS = 6;
const T_EVAL = 4;
const SPLIT = { source: 'mnist-embedded' as const, shardSize: 500, consolidationSize: 1000, validationSize: 1000, testSize: 2000, splitSeed: 2024 };
const TEACHER_TRAIN = { epochs: 20, batchSize: 32, learningRate: 2e-3 };
const ROOT = path.resolve(__dirname, '..', '..');
const CACHE = path.join(ROOT, '.weightformer', 'bench-cache', 'weightformer-probe');
const RESULTS = path.join(ROOT, 'bench', 'results', 'weightformer-probe');

function split(): DatasetSplit {
  return splitDataset(loadEmbeddedMnist(), SPLIT, POOL_SHARDS + HELD_OUT);
}

async function teachers(s: DatasetSplit): Promise<MlpParams[]> {
  mkdirSync(CACHE, { recursive: true });
  const out: MlpParams[] = [];
  for (let i = 0; i < ZOO + HELD_OUT; i++) {
    const file = path.join(CACHE, `teacher-${i}.wfmp`);
    if (existsSync(file)) {
      out.push(deserializeParams(readFileSync(file)));
      continue;
    }
    const shard = i < ZOO ? zooShard(s, i) : (s.shards[POOL_SHARDS + i - ZOO] as Dataset);
    const r = await trainMlp({ arch: ARCH, init: initMlp(ARCH, deriveSeed(7, 'teacher-init', i)), train: shard, seed: deriveSeed(7, 'teacher', i), ...TEACHER_TRAIN });
    writeFileSync(file, serializeParams(r.params));
    out.push(r.params);
  }
  return out;
}

/** Zoo teacher i's data: a seeded sample of shardSize digits from the pool of shards 0..POOL_SHARDS-1. */
function zooShard(s: DatasetSplit, i: number): Dataset {
  const pool = s.shards.slice(0, POOL_SHARDS) as Dataset[];
  const d = 784;
  const n = pool.reduce((a, p) => a + p.n, 0);
  const x = new Float32Array(n * d);
  const y = new Int32Array(n);
  let at = 0;
  for (const p of pool) {
    x.set(p.x, at * d);
    y.set(p.y, at);
    at += p.n;
  }
  const order = new Rng(deriveSeed(7, 'zoo-sample', i)).permutation(n);
  return selectExamples({ x, y, n }, order.subarray(0, SPLIT.shardSize));
}

/** All k-subsets of 0..n-1 in lexicographic order. */
function subsets(n: number, k: number): number[][] {
  const out: number[][] = [];
  const rec = (start: number, acc: number[]): void => {
    if (acc.length === k) {
      out.push(acc.slice());
      return;
    }
    for (let i = start; i < n; i++) rec(i + 1, [...acc, i]);
  };
  rec(0, []);
  return out;
}

/** Per-example correctness (1/0) of argmax(scores) on `ds`. */
function correctness(scores: Float32Array, ds: Dataset): Uint8Array {
  const classes = scores.length / ds.n;
  const out = new Uint8Array(ds.n);
  for (let i = 0; i < ds.n; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if ((scores[i * classes + c] ?? 0) > (scores[i * classes + best] ?? 0)) best = c;
    out[i] = best === ds.y[i] ? 1 : 0;
  }
  return out;
}

const toB64 = (a: Uint8Array): string => Buffer.from(a).toString('base64');
const fromB64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));

interface RunRecord {
  name: string;
  variant: string;
  seed: number;
  steps: number;
  config: WeightformerConfig;
  hyper: Record<string, number>;
  msPerStep: number;
  metaTrainSeconds: number;
  bestStep: number;
  valCurve: Array<{ step: number; accuracy: number }>;
  curve: number[];
  /** Per test ensemble: base64 per-example correctness on the test set. */
  test: string[];
  testAccuracy: number[];
  generateMs: number;
}

const VARIANTS: Record<string, Partial<WeightformerConfig>> = {
  wf: {},
  ablation: { teacherInput: false },
  mixing: { mixing: true },
  probe: { probeTokens: true },
  'mixing-probe': { mixing: true, probeTokens: true },
  'mixing-ablation': { mixing: true, teacherInput: false },
};

async function run(name: string, variant: string, seed: number, steps: number, overrides: string[]): Promise<void> {
  const s = split();
  const all = await teachers(s);
  const zoo = all.slice(0, ZOO);
  const heldOut = all.slice(ZOO);
  const ensembles = subsets(HELD_OUT, T_EVAL).map((idx) => idx.map((i) => heldOut[i] as MlpParams));
  // consolidationN < 1000: meta-train on only the first consolidationN consolidation digits (a regime where
  // the consolidation data is scarcer relative to the teachers' own data).
  const hyper: Record<string, number> = { batchSize: 256, learningRate: 1e-3, tMin: 2, tMax: 6, temperature: 2, kdWeight: 0.5, evalEvery: 50, consolidationN: SPLIT.consolidationSize };
  const cfgOverrides: Record<string, number | boolean> = {};
  for (const kv of overrides) {
    const [k = '', v = ''] = kv.split('=');
    const value = v === 'true' ? true : v === 'false' ? false : Number(v);
    if (k in hyper) hyper[k] = value as number;
    else cfgOverrides[k] = value;
  }
  const base = VARIANTS[variant];
  if (!base) throw new Error(`unknown variant ${variant}`);
  const config = weightformerConfig({ ...base, ...cfgOverrides });
  const t0 = Date.now();
  const stepTimes: number[] = [];
  let last = performance.now();
  const result = await metaTrain(
    {
      arch: ARCH,
      config,
      zoo,
      reference: alignedAverage(zoo, 0),
      consolidation: selectExamples(s.consolidation, Array.from({ length: Math.min(s.consolidation.n, hyper['consolidationN'] ?? s.consolidation.n) }, (_, i) => i)),
      validation: { ensembles, data: s.validation },
      steps,
      batchSize: hyper['batchSize'] ?? 256,
      learningRate: hyper['learningRate'] ?? 1e-3,
      tMin: hyper['tMin'] ?? 2,
      tMax: hyper['tMax'] ?? 6,
      temperature: hyper['temperature'] ?? 2,
      kdWeight: hyper['kdWeight'] ?? 0.5,
      seed,
      checkpointEvery: 0,
      evalEvery: hyper['evalEvery'] ?? 50,
    },
    {
      onStep: (i) => {
        const now = performance.now();
        stepTimes.push(now - last);
        last = now;
        if (i.step % 50 === 0) process.stderr.write(`${name} step ${i.step} loss ${i.loss.toFixed(4)}\n`);
      },
    },
  );
  const seconds = (Date.now() - t0) / 1000;
  // Steps that ran a validation are slower; the median is the plain step.
  const sorted = stepTimes.slice().sort((a, b) => a - b);
  const msPerStep = sorted[Math.floor(sorted.length / 2)] ?? 0;
  const test: string[] = [];
  const testAccuracy: number[] = [];
  const g0 = performance.now();
  for (const e of ensembles) {
    const student = await generateStudent(result.model, e);
    const c = correctness(await predictLogits(student, s.test), s.test);
    test.push(toB64(c));
    testAccuracy.push(c.reduce((a, b) => a + b, 0) / c.length);
  }
  const generateMs = (performance.now() - g0) / ensembles.length;
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(path.join(RESULTS, `${name}.model.wfwf.bin`), serializeWeightformer(result.model));
  const rec: RunRecord = {
    name, variant, seed, steps, config, hyper, msPerStep, metaTrainSeconds: seconds, bestStep: result.bestStep,
    valCurve: result.valCurve, curve: result.curve.map((c) => Number(c.loss.toFixed(5))), test, testAccuracy, generateMs,
  };
  writeFileSync(path.join(RESULTS, `${name}.json`), JSON.stringify(rec));
  const mean = testAccuracy.reduce((a, b) => a + b, 0) / testAccuracy.length;
  process.stdout.write(`${name}: test ${(100 * mean).toFixed(2)}% bestStep ${result.bestStep} ms/step ${msPerStep.toFixed(0)} total ${seconds.toFixed(0)} s\n`);
}

interface Baselines {
  single: string[][];
  ensemble: string[];
  alignedAverage: string[];
  alignedAverageOwn: string[];
  alignedAverageZoo0: string[];
  dataOnly: string;
}

/** Baselines on the test set (cached). */
async function baselines(): Promise<Baselines> {
  const file = path.join(RESULTS, 'baselines.json');
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as Baselines;
  const s = split();
  const all = await teachers(s);
  const zoo = all.slice(0, ZOO);
  const heldOut = all.slice(ZOO);
  const idx = subsets(HELD_OUT, T_EVAL);
  const singleC = await Promise.all(heldOut.map(async (t) => toB64(correctness(await predictLogits(t, s.test), s.test))));
  const ref = alignedAverage(zoo, 0);
  const zoo0 = zoo[0] as MlpParams;
  const out: Baselines = { single: [], ensemble: [], alignedAverage: [], alignedAverageOwn: [], alignedAverageZoo0: [], dataOnly: '' };
  for (const ix of idx) {
    const e = ix.map((i) => heldOut[i] as MlpParams);
    out.single.push(ix.map((i) => singleC[i] as string));
    out.ensemble.push(toB64(correctness(await ensembleProbs(e, s.test), s.test)));
    out.alignedAverage.push(toB64(correctness(await predictLogits(averageParams(e.map((t) => alignToReference(ref, t))), s.test), s.test)));
    out.alignedAverageZoo0.push(toB64(correctness(await predictLogits(averageParams(e.map((t) => alignToReference(zoo0, t))), s.test), s.test)));
    const own = e[0] as MlpParams;
    out.alignedAverageOwn.push(toB64(correctness(await predictLogits(averageParams(e.map((t) => alignToReference(own, t))), s.test), s.test)));
  }
  // Data-only: a 784-64-10 net trained on the consolidation set alone, epochs chosen on validation.
  let best = { acc: -1, params: undefined as MlpParams | undefined };
  for (const epochs of [10, 20, 40]) {
    const r = await trainMlp({ arch: ARCH, init: initMlp(ARCH, 5), train: s.consolidation, epochs, batchSize: 32, learningRate: 2e-3, seed: 5 });
    const acc = accuracyOfScores(await predictLogits(r.params, s.validation), s.validation.y);
    if (acc > best.acc) best = { acc, params: r.params };
  }
  out.dataOnly = toB64(correctness(await predictLogits(best.params as MlpParams, s.test), s.test));
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(file, JSON.stringify(out));
  return out;
}

const meanOf = (a: number[]): number => a.reduce((x, y) => x + y, 0) / Math.max(1, a.length);

/**
 * 95% paired-bootstrap interval of mean_e acc(A_e) − mean_e acc(B_e) over test examples (the same resampled
 * examples for every ensemble and both methods); the ensemble set itself is fixed.
 */
function pairedCi(a: Uint8Array[], b: Uint8Array[], seed = 1, reps = 2000): [number, number] {
  const n = a[0]?.length ?? 0;
  const E = a.length;
  const diff = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let e = 0; e < E; e++) s += (a[e]?.[i] ?? 0) - (b[e]?.[i] ?? 0);
    diff[i] = s / E;
  }
  const rng = new Rng(seed);
  const stats: number[] = [];
  for (let r = 0; r < reps; r++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += diff[rng.nextInt(n)] ?? 0;
    stats.push(s / n);
  }
  stats.sort((x, y) => x - y);
  return [stats[Math.floor(0.025 * reps)] ?? 0, stats[Math.floor(0.975 * reps)] ?? 0];
}

/** Runs of a group: `NAME.json`, or `NAME-s<seed>.json` for every seed run. */
function loadGroup(group: string): RunRecord[] {
  const exact = path.join(RESULTS, `${group}.json`);
  if (existsSync(exact)) return [JSON.parse(readFileSync(exact, 'utf8')) as RunRecord];
  const files = readdirSync(RESULTS).filter((f) => f.startsWith(`${group}-s`) && /^\d+\.json$/.test(f.slice(group.length + 2)));
  if (files.length === 0) throw new Error(`no runs for ${group}`);
  return files.sort().map((f) => JSON.parse(readFileSync(path.join(RESULTS, f), 'utf8')) as RunRecord);
}

const sd = (a: number[]): number => {
  const m = meanOf(a);
  return a.length > 1 ? Math.sqrt(a.reduce((s, x) => s + (x - m) ** 2, 0) / (a.length - 1)) : 0;
};

/**
 * The table and the comparisons for groups of runs (each group: one variant over meta-training seeds).
 * Intervals: 95% paired bootstrap over test digits of the difference averaged over seeds and ensembles.
 */
async function report(groups: string[]): Promise<void> {
  const b = await baselines();
  const dec = (list: string[]): Uint8Array[] => list.map(fromB64);
  const acc = (c: Uint8Array): number => c.reduce((x, y) => x + y, 0) / c.length;
  const ens = dec(b.ensemble);
  const single = meanOf(b.single.map((list) => meanOf(list.map((s) => acc(fromB64(s))))));
  const ensembleAcc = meanOf(ens.map(acc));
  const gain = (x: number): string => `${(((x - single) / (ensembleAcc - single)) * 100).toFixed(0)}%`;
  const lines: string[] = [];
  lines.push(`| model | test accuracy, mean over ${ens.length} held-out T=${T_EVAL} ensembles (± sd over meta-training seeds) | gain captured | best step | ms/step | meta-training s |`);
  lines.push('|---|---|---|---|---|---|');
  const base = (label: string, a: number): void => void lines.push(`| ${label} | ${(100 * a).toFixed(2)}% | ${gain(a)} | | | |`);
  base('mean single teacher', single);
  base(`ensemble (T=${T_EVAL}, averaged softmax)`, ensembleAcc);
  base('aligned average to the WF reference (zoo barycenter)', meanOf(dec(b.alignedAverage).map(acc)));
  base('aligned average to one zoo teacher', meanOf(dec(b.alignedAverageZoo0).map(acc)));
  base("aligned average to the ensemble's first teacher", meanOf(dec(b.alignedAverageOwn).map(acc)));
  base('data-only (784-64-10 on the consolidation set, epochs chosen on validation)', acc(fromB64(b.dataOnly)));
  const runs = new Map<string, RunRecord[]>(groups.map((g) => [g, loadGroup(g)]));
  for (const [g, rs] of runs) {
    const accs = rs.map((r) => meanOf(r.testAccuracy));
    lines.push(
      `| ${g} (${rs.length} seed${rs.length > 1 ? 's' : ''}) | ${(100 * meanOf(accs)).toFixed(2)}% ± ${(100 * sd(accs)).toFixed(2)} | ${gain(meanOf(accs))} | ` +
        `${rs.map((r) => r.bestStep).join(', ')} | ${meanOf(rs.map((r) => r.msPerStep)).toFixed(0)} | ${meanOf(rs.map((r) => r.metaTrainSeconds)).toFixed(0)} |`,
    );
  }
  lines.push('');
  // Per-example correctness averaged over seeds and ensembles, for paired comparisons.
  const pooled = (rs: RunRecord[]): Uint8Array[] => rs.flatMap((r) => dec(r.test));
  const ablationGroup = groups.find((g) => (runs.get(g)?.[0]?.config.teacherInput ?? true) === false);
  for (const [g, rs] of runs) {
    const mine = pooled(rs);
    const seeds = rs.length;
    const others: Array<[string, Uint8Array[]]> = [];
    if (ablationGroup && ablationGroup !== g) {
      const abl = runs.get(ablationGroup) ?? [];
      // Pair seed with seed (same subsets and batches), so the comparison isolates the teacher input.
      const bySeed = new Map(abl.map((r) => [r.seed, r]));
      const paired = rs.filter((r) => bySeed.has(r.seed));
      if (paired.length > 0) {
        others.push([`${ablationGroup} (paired seeds)`, paired.flatMap((r) => dec((bySeed.get(r.seed) as RunRecord).test))]);
      }
    }
    const repeat = (xs: Uint8Array[]): Uint8Array[] => Array.from({ length: seeds }, () => xs).flat();
    others.push(['ensemble', repeat(ens)], ['aligned average (WF reference)', repeat(dec(b.alignedAverage))], ['data-only', repeat(ens.map(() => fromB64(b.dataOnly)))]);
    for (const [label, other] of others) {
      const a = label.includes('paired seeds') ? pooled(rs.filter((r) => (runs.get(ablationGroup ?? '') ?? []).some((x) => x.seed === r.seed))) : mine;
      const d = meanOf(a.map(acc)) - meanOf(other.map(acc));
      const [lo, hi] = pairedCi(a, other);
      lines.push(`- ${g} − ${label}: ${d >= 0 ? '+' : ''}${(100 * d).toFixed(2)} points, 95% CI [${(100 * lo).toFixed(2)}, ${(100 * hi).toFixed(2)}]`);
    }
  }
  lines.push('');
  // Does the student follow teacher quality? Correlation over ensembles of student vs ensemble accuracy.
  const x = ens.map(acc);
  for (const [g, rs] of runs) {
    const y = x.map((_, e) => meanOf(rs.map((r) => r.testAccuracy[e] ?? 0)));
    const mx = meanOf(x);
    const my = meanOf(y);
    let sxy = 0;
    let sxx = 0;
    let syy = 0;
    x.forEach((xi, i) => {
      sxy += (xi - mx) * ((y[i] ?? 0) - my);
      sxx += (xi - mx) ** 2;
      syy += ((y[i] ?? 0) - my) ** 2;
    });
    lines.push(
      `- ${g}: corr(student, ensemble) over the ${x.length} ensembles = ${(sxy / Math.sqrt(sxx * syy)).toFixed(2)}; ` +
        `students ${(100 * Math.min(...y)).toFixed(1)}–${(100 * Math.max(...y)).toFixed(1)}% for ensembles ${(100 * Math.min(...x)).toFixed(1)}–${(100 * Math.max(...x)).toFixed(1)}%`,
    );
  }
  const text = lines.join('\n');
  process.stdout.write(`${text}\n`);
  writeFileSync(path.join(RESULTS, 'report.md'), `${text}\n`);
}

async function main(): Promise<void> {
  const [cmd, ...args] = process.argv.slice(2);
  const backend = await initBackend('wasm');
  process.stderr.write(`backend ${backend.backend}\n`);
  if (cmd === 'teachers') {
    const s = split();
    const all = await teachers(s);
    const accs = await Promise.all(all.map(async (t) => accuracyOfScores(await predictLogits(t, s.test), s.test.y)));
    process.stdout.write(`teacher test accuracy: ${accs.map((a) => (100 * a).toFixed(1)).join(' ')}\n`);
    await baselines();
  } else if (cmd === 'run') {
    const [name = 'run', variant = 'wf', seed = '1', steps = '600', ...rest] = args;
    await run(name, variant, Number(seed), Number(steps), rest);
  } else if (cmd === 'report') {
    await report(args);
  } else {
    throw new Error('usage: weightformer-probe teachers | run NAME VARIANT SEED STEPS [k=v…] | report [NAME…]');
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  process.exit(1);
});
