/**
 * `node dist/bench/align-activations.js [--seeds 7,8,9] [--backend auto]`: does activation matching make CNN
 * consolidation better than weight matching?
 *
 * The setting of pipelines/cnn.yaml: the embedded MNIST split (shards of 580, test 2000, validation 500),
 * four CNN teachers (conv 8 → conv 16, BN, max pool, linear head) trained 3 epochs each on their own shard
 * with the pipeline's seeds (deriveSeed(seed, 'teacher', i, 'init' | 'train')). One difference: 512
 * consolidation images instead of 500 (what matching and BN re-estimation see), which shifts the shards by
 * 12 digits. Per seed it reports, on the 2000 test digits: each teacher, the ensemble (mean softmax), and
 * the naive, weight-matched and activation-matched averages (teacher 0 the reference), each as averaged and
 * with BN running statistics recomputed on the consolidation set (batch 32, as the pipeline's bnBatch).
 *
 * Prints a table and writes bench/results/align-activations-<date>-vm.json.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../src/ml/backend';
import type { CnnArchitecture, CnnParams } from '../src/ml/cnn';
import { averageCnnParams, cnnParamArrays, cnnAccuracy, initCnn, matchCnnWeights, permuteCnnUnits, predictCnnLogits, recomputeBnStatistics, trainCnn } from '../src/ml/cnn';
import type { ConvActivationSite } from '../src/ml/cnn/align-activations';
import { matchCnnActivations } from '../src/ml/cnn/align-activations';
import type { Dataset } from '../src/ml/data';
import { loadEmbeddedMnist, splitDataset } from '../src/ml/data';
import { deriveSeed } from '../src/ml/rng';

const ARCH: CnnArchitecture = { family: 'cnn', inputShape: [28, 28, 1], channels: [8, 16], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [], outputSize: 10 };
const TEACHERS = 4;
const DATA = { shardSize: 580, consolidationSize: 512, validationSize: 500, testSize: 2000 };
const TRAIN = { epochs: 3, batchSize: 32, learningRate: 0.002 };
const BN_BATCH = 32;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

/** Top-1 accuracy of the mean softmax of the models' logits (summed in float64). */
async function ensembleAccuracy(models: CnnParams[], ds: Dataset): Promise<number> {
  const classes = ARCH.outputSize;
  const sum = new Float64Array(ds.n * classes);
  for (const m of models) {
    const logits = await predictCnnLogits(m, ds);
    for (let i = 0; i < ds.n; i++) {
      let max = -Infinity;
      for (let c = 0; c < classes; c++) max = Math.max(max, logits[i * classes + c] ?? 0);
      let z = 0;
      for (let c = 0; c < classes; c++) z += Math.exp((logits[i * classes + c] ?? 0) - max);
      for (let c = 0; c < classes; c++) sum[i * classes + c] = (sum[i * classes + c] ?? 0) + Math.exp((logits[i * classes + c] ?? 0) - max) / z;
    }
  }
  let correct = 0;
  for (let i = 0; i < ds.n; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if ((sum[i * classes + c] ?? 0) > (sum[i * classes + best] ?? 0)) best = c;
    if (best === ds.y[i]) correct++;
  }
  return correct / ds.n;
}

interface MethodResult {
  acc: number;
  accBnRecomputed: number;
  matchSeconds: number;
  /** Mean over teachers 1..3 of the L2 distance of their (aligned) parameters to the reference's, BN running statistics excluded. */
  distanceToReference: number;
}

/** L2 distance of two CNNs' trainable arrays (cnnParamArrays less the running statistics). */
function distance(a: CnnParams, b: CnnParams): number {
  const trainable = (p: CnnParams): Float32Array[] => {
    const running = new Set(p.convs.flatMap((c) => (c.bn ? [c.bn.runningMean, c.bn.runningVar] : [])));
    return cnnParamArrays(p).filter((x) => !running.has(x));
  };
  const xs = trainable(a);
  const ys = trainable(b);
  let s = 0;
  xs.forEach((x, k) => x.forEach((v, i) => (s += (v - (ys[k]?.[i] ?? 0)) ** 2)));
  return Math.sqrt(s);
}

interface SeedResult {
  seed: number;
  teacherSeconds: number[];
  teachers: number[];
  teacherMean: number;
  ensemble: number;
  methods: Record<string, MethodResult>;
  /** Per permutable layer, the fraction of units weight and activation matching (pooled) pair the same way, over teachers 1..3. */
  agreementWeightVsActivation: number[];
}

async function scoreAverage(list: CnnParams[], consolidation: Dataset, test: Dataset, matchSeconds: number): Promise<MethodResult> {
  const avg = averageCnnParams(list);
  const reference = list[0] as CnnParams;
  const distanceToReference = list.slice(1).reduce((sum, p) => sum + distance(reference, p), 0) / (list.length - 1);
  return { distanceToReference, acc: await cnnAccuracy(avg, test), accBnRecomputed: await cnnAccuracy(await recomputeBnStatistics(avg, consolidation, BN_BATCH), test), matchSeconds };
}

async function runSeed(seed: number): Promise<SeedResult> {
  const split = splitDataset(loadEmbeddedMnist(), { ...DATA, splitSeed: seed }, TEACHERS);
  const teachers: CnnParams[] = [];
  const teacherSeconds: number[] = [];
  for (let i = 0; i < TEACHERS; i++) {
    const shard = split.shards[i];
    if (!shard) throw new Error(`no shard ${i}`);
    const t0 = performance.now();
    const r = await trainCnn({ arch: ARCH, init: initCnn(ARCH, deriveSeed(seed, 'teacher', i, 'init')), train: shard, ...TRAIN, seed: deriveSeed(seed, 'teacher', i, 'train') });
    teacherSeconds.push((performance.now() - t0) / 1000);
    teachers.push(r.params);
  }
  const { consolidation, test } = split;
  const teacherAcc: number[] = [];
  for (const t of teachers) teacherAcc.push(await cnnAccuracy(t, test));
  const reference = teachers[0] as CnnParams;
  const methods: Record<string, MethodResult> = {};
  // Naive: channel i with channel i (naiveAverageCnn); weight matching as alignedAverageCnn does it, timed apart.
  methods['naive'] = await scoreAverage(teachers, consolidation, test, 0);

  let t0 = performance.now();
  const weightPerms = teachers.map((t, i) => (i === 0 ? undefined : matchCnnWeights(reference, t)));
  const weightSeconds = (performance.now() - t0) / 1000;
  methods['weight_matched'] = await scoreAverage(teachers.map((t, i) => (weightPerms[i] ? permuteCnnUnits(t, weightPerms[i]) : t)), consolidation, test, weightSeconds);

  let pooledPerms: Array<Int32Array[] | undefined> = [];
  for (const site of ['pooled', 'prepool'] as ConvActivationSite[]) {
    t0 = performance.now();
    const perms: Array<Int32Array[] | undefined> = [];
    for (const [i, t] of teachers.entries()) perms.push(i === 0 ? undefined : await matchCnnActivations(reference, t, consolidation, { convSite: site }));
    const seconds = (performance.now() - t0) / 1000;
    if (site === 'pooled') pooledPerms = perms;
    methods[`activation_matched_${site}`] = await scoreAverage(teachers.map((t, i) => (perms[i] ? permuteCnnUnits(t, perms[i]) : t)), consolidation, test, seconds);
  }

  const layers = ARCH.channels.length + ARCH.hidden.length;
  const agreement = Array.from({ length: layers }, (_, g) => {
    let same = 0;
    let total = 0;
    for (let i = 1; i < TEACHERS; i++) {
      const w = weightPerms[i]?.[g];
      const a = pooledPerms[i]?.[g];
      if (!w || !a) continue;
      w.forEach((v, u) => {
        total++;
        if (a[u] === v) same++;
      });
    }
    return total ? same / total : 0;
  });

  return {
    seed,
    teacherSeconds,
    teachers: teacherAcc,
    teacherMean: teacherAcc.reduce((s, a) => s + a, 0) / teacherAcc.length,
    ensemble: await ensembleAccuracy(teachers, test),
    methods,
    agreementWeightVsActivation: agreement,
  };
}

const pct = (a: number): string => `${(a * 100).toFixed(1)}%`;

function printSeed(r: SeedResult): void {
  console.log(`\nseed ${r.seed}: teachers ${r.teachers.map(pct).join(' ')} (mean ${pct(r.teacherMean)}), ensemble ${pct(r.ensemble)}`);
  console.log('  method                        as averaged   BN recomputed   matching s   L2 to ref');
  for (const [name, m] of Object.entries(r.methods)) {
    console.log(`  ${name.padEnd(30)}${pct(m.acc).padStart(10)}${pct(m.accBnRecomputed).padStart(16)}${m.matchSeconds.toFixed(2).padStart(13)}${m.distanceToReference.toFixed(2).padStart(12)}`);
  }
  console.log(`  units paired alike by weight and activation matching, per layer: ${r.agreementWeightVsActivation.map(pct).join(' ')}`);
}

async function main(): Promise<void> {
  const started = performance.now();
  const seeds = arg('seeds', '7').split(',').map(Number);
  const { backend, reason } = await initBackend(arg('backend', 'auto') as Parameters<typeof initBackend>[0]);
  console.log(`backend ${backend} (${reason}); seeds ${seeds.join(', ')}`);
  const results: SeedResult[] = [];
  for (const seed of seeds) {
    const r = await runSeed(seed);
    printSeed(r);
    results.push(r);
  }
  if (results.length > 1) {
    const mean = (f: (r: SeedResult) => number): number => results.reduce((s, r) => s + f(r), 0) / results.length;
    console.log(`\nmean over ${results.length} seeds: teacher mean ${pct(mean((r) => r.teacherMean))}, ensemble ${pct(mean((r) => r.ensemble))}`);
    for (const name of Object.keys(results[0]?.methods ?? {})) {
      console.log(`  ${name.padEnd(30)}${pct(mean((r) => r.methods[name]?.acc ?? 0)).padStart(10)}${pct(mean((r) => r.methods[name]?.accBnRecomputed ?? 0)).padStart(16)}`);
    }
  }
  const wallSeconds = (performance.now() - started) / 1000;
  console.log(`\nwall ${wallSeconds.toFixed(0)} s`);
  const cpus = os.cpus();
  const out = {
    bench: 'align-activations',
    date: new Date().toISOString(),
    machine: { platform: `${os.platform()} ${os.release()}`, cpuModel: cpus[0]?.model ?? 'unknown', cpuCount: cpus.length, node: process.version },
    backend,
    settings: {
      arch: ARCH,
      teachers: TEACHERS,
      data: { source: 'mnist-embedded', ...DATA, note: 'as pipelines/cnn.yaml except consolidationSize 512 (500 there); splitSeed = seed' },
      train: TRAIN,
      seeds,
      reference: 0,
      bnRecompute: { data: 'consolidation', batchSize: BN_BATCH },
      activationMatching: { images: DATA.consolidationSize, mode: 'eval', similarity: 'Pearson correlation, float64', sites: ['pooled (post-ReLU, after pool)', 'prepool (post-ReLU, before pool)'] },
    },
    wallSeconds,
    results,
  };
  const dir = path.resolve(__dirname, '../../bench/results');
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, `align-activations-${out.date.slice(0, 10)}-vm.json`);
  await fs.writeFile(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
