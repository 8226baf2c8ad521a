/**
 * Teacher scaling: for T = 2, 4, 8, 16 held-out MLP teachers, the ensemble gain a WeightFormer student
 * captures (zero-shot and after the short fine-tune) and the seconds it takes to consolidate them, against
 * KD from scratch (seconds until it matches the fine-tuned student on validation data).
 *
 * Runs the ML library directly on the active backend (no Temporal: this measures consolidation, the
 * orchestration section measures Temporal's share). One WeightFormer is meta-trained on a zoo with teacher
 * subsets of tMin…tMax and serves every T; a T above tMax (or above the zoo size) is marked as
 * extrapolation in the results, never silently reported as covered.
 *
 * Data (embedded MNIST, split by `splitDataset`): test 2,000, validation 500, consolidation 500, then
 * `maxT` disjoint shards for the evaluated teachers (ensemble T = the first T of them: different teams'
 * data) and 4 pool shards from which each zoo teacher samples its own `shardSize` digits (the zoo never
 * sees an evaluated teacher's, the consolidation, validation or test digits).
 */
import type { ArchitectureSpec } from '../src/spec/types';
import { accuracy, ensembleProbs, initMlp, type MlpParams } from '../src/ml/mlp';
import { loadEmbeddedMnist, selectExamples, splitDataset, type Dataset } from '../src/ml/data';
import { Rng, deriveSeed } from '../src/ml/rng';
import { TrainingAbortedError, trainMlp } from '../src/ml/train';
import { accuracyOfScores } from '../src/ml/mlp';
import { weightformerConfig } from '../src/ml/weightformer/config';
import { generateStudent } from '../src/ml/weightformer/generate';
import { metaTrain } from '../src/ml/weightformer/meta-train';
import { zooReference } from '../src/ml/weightformer/reference';

export interface ScalingSetting {
  teacherCounts: number[];
  shardSize: number;
  zoo: number;
  teacherEpochs: number;
  metaSteps: number;
  metaBatch: number;
  tMin: number;
  tMax: number;
  finetuneEpochs: number;
  kdMaxEpochs: number;
  seed: number;
}

export const SCALING_FULL: ScalingSetting = {
  teacherCounts: [2, 4, 8, 16], shardSize: 250, zoo: 32, teacherEpochs: 5, metaSteps: 600, metaBatch: 128, tMin: 2, tMax: 16, finetuneEpochs: 2, kdMaxEpochs: 40, seed: 1,
};
/** --quick: the same T and zoo coverage (tMax 16, 16 zoo teachers) with far fewer meta-steps. */
export const SCALING_QUICK: ScalingSetting = {
  teacherCounts: [2, 4, 8, 16], shardSize: 250, zoo: 16, teacherEpochs: 3, metaSteps: 60, metaBatch: 64, tMin: 2, tMax: 16, finetuneEpochs: 1, kdMaxEpochs: 12, seed: 1,
};

const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' };
const POOL_SHARDS = 4;
const TEACHER_TRAIN = { batchSize: 32, learningRate: 2e-3 };
const FINETUNE = { batchSize: 32, learningRate: 5e-4, kd: 0.5, temperature: 2 };
const KD = { batchSize: 32, learningRate: 2e-3, kd: 0.5, temperature: 2 };

export interface ScalingPoint {
  T: number;
  /** T > tMax or T > zoo size: the WeightFormer never saw sets this large. */
  extrapolation: boolean;
  accTeacherMean: number;
  accEnsemble: number;
  accAvgAligned?: number;
  accZeroShot: number;
  accFinetuned: number;
  gainCapturedZeroShot: number;
  gainCapturedFinetuned: number;
  secondsGenerate: number;
  secondsFinetune: number;
  /** generate + fine-tune. */
  secondsConsolidate: number;
  /** KD from scratch until its validation accuracy reaches the fine-tuned student's, or its whole run if never. */
  secondsKdToMatch: number;
  kdReached: boolean;
  kdEpochs: number;
  ratioConsolidateOverKd: number;
}

export interface ScalingResult {
  setting: ScalingSetting;
  coverage: string;
  secondsTeachers: number;
  secondsMetaTrain: number;
  points: ScalingPoint[];
}

const gain = (acc: number, mean: number, ens: number): number => (acc - mean) / (ens - mean);

async function trainTeacher(data: Dataset, epochs: number, seed: number): Promise<MlpParams> {
  const r = await trainMlp({ arch: ARCH, init: initMlp(ARCH, deriveSeed(seed, 'init')), train: data, epochs, seed, ...TEACHER_TRAIN });
  return r.params;
}

export async function runScaling(s: ScalingSetting, log: (line: string) => void = () => undefined): Promise<ScalingResult> {
  const maxT = Math.max(...s.teacherCounts);
  const split = splitDataset(loadEmbeddedMnist(), { shardSize: s.shardSize, consolidationSize: 500, validationSize: 500, testSize: 2000, splitSeed: 2024 }, maxT + POOL_SHARDS);
  const t0 = performance.now();
  const evaluated: MlpParams[] = [];
  for (let i = 0; i < maxT; i++) evaluated.push(await trainTeacher(split.shards[i] as Dataset, s.teacherEpochs, deriveSeed(s.seed, 'scaling-teacher', i)));
  const pool = split.shards.slice(maxT) as Dataset[];
  const poolX = new Float32Array(pool.reduce((a, p) => a + p.x.length, 0));
  const poolY = new Int32Array(pool.reduce((a, p) => a + p.n, 0));
  let at = 0;
  for (const p of pool) {
    poolX.set(p.x, at * 784);
    poolY.set(p.y, at);
    at += p.n;
  }
  const zoo: MlpParams[] = [];
  for (let i = 0; i < s.zoo; i++) {
    const order = new Rng(deriveSeed(s.seed, 'scaling-zoo-sample', i)).permutation(poolY.length);
    zoo.push(await trainTeacher(selectExamples({ x: poolX, y: poolY, n: poolY.length }, order.subarray(0, s.shardSize)), s.teacherEpochs, deriveSeed(s.seed, 'scaling-zoo', i)));
  }
  const secondsTeachers = (performance.now() - t0) / 1000;
  log(`scaling: ${maxT} evaluated + ${s.zoo} zoo teachers in ${secondsTeachers.toFixed(1)} s`);

  const tMax = Math.min(s.tMax, s.zoo);
  const m0 = performance.now();
  const meta = await metaTrain(
    {
      arch: ARCH, config: weightformerConfig(), zoo, reference: zooReference(zoo), consolidation: split.consolidation,
      validation: { ensembles: [], data: split.validation }, steps: s.metaSteps, batchSize: s.metaBatch, learningRate: 1e-3,
      tMin: s.tMin, tMax, temperature: 2, kdWeight: 0.5, seed: s.seed, checkpointEvery: 0, evalEvery: 0,
    },
    { onStep: (i) => { if (i.step % 20 === 0) log(`scaling: meta-step ${i.step}/${i.totalSteps} loss ${i.loss.toFixed(4)}`); } },
  );
  const secondsMetaTrain = (performance.now() - m0) / 1000;

  const points: ScalingPoint[] = [];
  for (const T of s.teacherCounts) {
    const ensemble = evaluated.slice(0, T);
    let sum = 0;
    for (const t of ensemble) sum += await accuracy(t, split.test);
    const accTeacherMean = sum / T;
    const accEnsemble = accuracyOfScores(await ensembleProbs(ensemble, split.test), split.test.y);
    const g0 = performance.now();
    const student = await generateStudent(meta.model, ensemble);
    const secondsGenerate = (performance.now() - g0) / 1000;
    const accZeroShot = await accuracy(student, split.test);
    const consolidationProbs = await ensembleProbs(ensemble, split.consolidation, FINETUNE.temperature);
    const f0 = performance.now();
    const ft = await trainMlp({
      arch: ARCH, init: student, train: split.consolidation, epochs: s.finetuneEpochs, batchSize: FINETUNE.batchSize, learningRate: FINETUNE.learningRate,
      seed: deriveSeed(s.seed, 'scaling-finetune', T), kd: { teacherProbs: consolidationProbs, weight: FINETUNE.kd, temperature: FINETUNE.temperature },
    });
    const secondsFinetune = (performance.now() - f0) / 1000;
    const accFinetuned = await accuracy(ft.params, split.test);
    const target = await accuracy(ft.params, split.validation);
    // KD from scratch as one continuous run (one Adam state and one shuffle stream, like the pipeline's KD
    // baseline; restarting the trainer every epoch would reset Adam and measure another procedure), stopped
    // after the first epoch whose validation accuracy reaches the fine-tuned student's. Only training is
    // timed, as for the fine-tune: the clock is paused while an epoch is scored.
    let kdSeconds = 0;
    let kdReached = false;
    let kdEpochs = 0;
    let segment = performance.now();
    try {
      await trainMlp(
        {
          arch: ARCH, init: initMlp(ARCH, deriveSeed(s.seed, 'scaling-kd-init', T)), train: split.consolidation, epochs: s.kdMaxEpochs, batchSize: KD.batchSize,
          learningRate: KD.learningRate, seed: deriveSeed(s.seed, 'scaling-kd', T), kd: { teacherProbs: consolidationProbs, weight: KD.kd, temperature: KD.temperature },
        },
        {
          onEpochEnd: async (_point, params) => {
            kdSeconds += (performance.now() - segment) / 1000;
            kdEpochs++;
            if ((await accuracy(await params(), split.validation)) >= target) kdReached = true;
            segment = performance.now();
          },
          shouldAbort: () => kdReached,
        },
      );
    } catch (e) {
      if (!(e instanceof TrainingAbortedError && kdReached)) throw e;
    }
    const secondsConsolidate = secondsGenerate + secondsFinetune;
    const p: ScalingPoint = {
      T, extrapolation: T > tMax || T > s.zoo, accTeacherMean, accEnsemble, accZeroShot, accFinetuned,
      gainCapturedZeroShot: gain(accZeroShot, accTeacherMean, accEnsemble), gainCapturedFinetuned: gain(accFinetuned, accTeacherMean, accEnsemble),
      secondsGenerate, secondsFinetune, secondsConsolidate, secondsKdToMatch: kdSeconds, kdReached, kdEpochs, ratioConsolidateOverKd: secondsConsolidate / kdSeconds,
    };
    log(`scaling: T=${T} ensemble ${(100 * accEnsemble).toFixed(1)}% mean ${(100 * accTeacherMean).toFixed(1)}% zero-shot ${(100 * accZeroShot).toFixed(1)}% fine-tuned ${(100 * accFinetuned).toFixed(1)}% consolidate ${secondsConsolidate.toFixed(2)} s vs KD ${kdSeconds.toFixed(2)} s${kdReached ? '' : ' (not reached)'}`);
    points.push(p);
  }
  const coverage =
    tMax >= maxT
      ? `meta-training drew teacher subsets of ${s.tMin}…${tMax} from a zoo of ${s.zoo}: every T evaluated is covered`
      : `meta-training covered subsets up to ${tMax} (zoo ${s.zoo}); larger T are extrapolation`;
  return { setting: s, coverage, secondsTeachers, secondsMetaTrain, points };
}
