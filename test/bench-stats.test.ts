import assert from 'node:assert/strict';
import { pairedBootstrap, mean } from '../bench/stats';
import { qualitySummary } from '../bench/quality';

describe('bench statistics', () => {
  it('gives a degenerate interval when every run has the same difference, and is reproducible', () => {
    const runs = [1, 2, 3, 4].map((x) => ({ a: x + 0.5, b: x }));
    const ci = pairedBootstrap(runs, (s) => mean(s.map((r) => r.a - r.b)));
    assert.deepEqual(ci, { mean: 0.5, ci95: [0.5, 0.5] });
    assert.deepEqual(pairedBootstrap(runs, (s) => mean(s.map((r) => r.a))), pairedBootstrap(runs, (s) => mean(s.map((r) => r.a))));
  });

  it('keeps pairs together: a constant offset between paired runs has no spread, unpaired data does', () => {
    const runs = [0.80, 0.85, 0.90, 0.95, 0.70].map((x) => ({ base: x, plus: x + 0.01 }));
    const paired = pairedBootstrap(runs, (s) => mean(s.map((r) => r.plus - r.base)));
    assert.ok(Math.abs(paired.ci95[1] - paired.ci95[0]) < 1e-12);
    const spread = pairedBootstrap(runs, (s) => mean(s.map((r) => r.base)));
    assert.ok(spread.ci95[0] < spread.mean && spread.mean < spread.ci95[1]);
  });

  it('computes gain captured as a ratio of means, and every difference the quality bar reads', () => {
    const run = (tm: number, ens: number, zs: number) => ({
      'acc.teacher_mean': tm, 'acc.ensemble': ens, 'acc.student_zero_shot': zs, 'acc.avg_aligned': tm - 0.02,
      'acc.teacher_ablation': zs - 0.01, 'acc.data_only': tm, 'acc.student_finetuned': ens + 0.005,
      'acc.avg_aligned_finetuned': ens - 0.005, 'ratio.consolidate_over_kd_to_match': 0.05,
    });
    const summary = qualitySummary([run(0.85, 0.87, 0.865), run(0.86, 0.90, 0.89)]);
    // (mean zs − mean tm) / (mean ens − mean tm) = (0.8775 − 0.855) / (0.885 − 0.855) = 0.75
    assert.ok(Math.abs(summary['gain_captured.zero_shot']!.mean - 0.75) < 1e-12);
    assert.ok(Math.abs(summary['diff.zero_shot_minus_teacher_ablation']!.mean - 0.01) < 1e-12);
    assert.deepEqual(Object.keys(summary).sort(), [
      'diff.finetuned_minus_avg_aligned_finetuned', 'diff.finetuned_minus_ensemble', 'diff.zero_shot_minus_avg_aligned',
      'diff.zero_shot_minus_data_only', 'diff.zero_shot_minus_teacher_ablation', 'gain.ensemble_minus_teacher_mean',
      'gain_captured.zero_shot', 'ratio.consolidate_over_kd_to_match',
    ]);
  });
});
