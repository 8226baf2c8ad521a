// Used by the HTML report (shipped in the worker images) and by bench/ (re-exported from bench/stats.ts).
import { Rng } from '../ml/rng';

export interface Interval {
  mean: number;
  ci95: [number, number];
}

/**
 * Paired bootstrap: resamples whole runs (seed × held-out ensemble) with replacement, so every statistic
 * of a resample is computed from the same runs — differences keep their pairing. Percentile interval.
 */
export function pairedBootstrap<T>(runs: T[], statistic: (sample: T[]) => number, resamples = 10_000, seed = 12345): Interval {
  if (runs.length === 0) throw new Error('no runs to bootstrap');
  const rng = new Rng(seed);
  const values: number[] = [];
  for (let r = 0; r < resamples; r++) {
    const sample = Array.from({ length: runs.length }, () => runs[rng.nextInt(runs.length)]!);
    const v = statistic(sample);
    if (Number.isFinite(v)) values.push(v);
  }
  values.sort((a, b) => a - b);
  const at = (q: number) => values[Math.min(values.length - 1, Math.max(0, Math.floor(q * values.length)))] ?? NaN;
  return { mean: statistic(runs), ci95: [at(0.025), at(0.975)] };
}

export const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
