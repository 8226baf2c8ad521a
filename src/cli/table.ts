import type { PipelineResult } from '../../workflows/types';

/** Rows of the baseline table, in reading order: what the student is compared against. */
export const ACCURACY_ROWS: Array<[string, string]> = [
  ['acc.teacher_mean', 'mean single teacher'],
  ['acc.ensemble', 'ensemble (averaged softmax)'],
  ['acc.avg_naive', 'naive weight average'],
  ['acc.avg_aligned', 'aligned weight average'],
  ['acc.avg_aligned_finetuned', 'aligned average + fine-tune'],
  ['acc.kd', 'KD from scratch'],
  ['acc.data_only', 'data-only (consolidation set)'],
  ['acc.teacher_ablation', 'teacher ablation (no teacher input)'],
  ['acc.student_zero_shot', 'student, zero-shot'],
  ['acc.student_finetuned', 'student, fine-tuned'],
];

/** The individual teachers' accuracy keys (`acc.teacher_<i>`) in teacher order: teacher_2 before teacher_10. */
export function teacherAccuracyKeys(metrics: Record<string, number>): string[] {
  const index = (key: string) => Number(key.slice('acc.teacher_'.length));
  return Object.keys(metrics).filter((k) => /^acc\.teacher_\d+$/.test(k)).sort((a, b) => index(a) - index(b));
}

/** The final table `weightformer run` prints: every baseline, the student, gain captured and times. */
export function renderResultTable(result: PipelineResult): string {
  if (result.cells) {
    const keys = ['acc.ensemble', 'acc.student_zero_shot', 'acc.student_finetuned', 'gain_captured.finetuned'];
    const lines = [`sweep: ${result.cells.length} cells`, ['cell', ...keys].join(' | ')];
    for (const c of result.cells) lines.push([JSON.stringify(c.cell), ...keys.map((k) => fmt(c.metrics[k]))].join(' | '));
    return lines.join('\n');
  }
  const m = result.metrics;
  const lines: string[] = [];
  const row = (metric: string, label: string, value: string) => lines.push(`${metric.padEnd(30)} ${label.padEnd(36)} ${value}`);
  row('metric', 'model', 'test accuracy');
  row('-'.repeat(30), '-'.repeat(36), '-------------');
  for (const key of teacherAccuracyKeys(m)) row(key, `teacher ${key.split('_')[1]}`, pct(m[key]));
  for (const [key, label] of ACCURACY_ROWS) if (m[key] !== undefined) row(key, label, pct(m[key]));
  lines.push('');
  for (const key of ['gain_captured.zero_shot', 'gain_captured.finetuned', 'ratio.consolidate_over_kd_to_match']) if (m[key] !== undefined) row(key, '', fmt(m[key]));
  for (const key of Object.keys(m).filter((k) => k.startsWith('seconds.')).sort()) {
    const unreached = key === 'seconds.kd_to_match' && m['kd_to_match.reached'] === 0 ? ' (not reached: a lower bound)' : '';
    row(key, '', `${fmt(m[key])} s${unreached}`);
  }
  lines.push('');
  if (result.tags['weightformer.backend']) lines.push(`backend: ${result.tags['weightformer.backend']}`);
  lines.push('stages: ' + Object.entries(result.stages).map(([name, s]) => `${name}=${s.state}`).join(' '));
  return lines.join('\n');
}

function pct(v: number | undefined): string {
  return v === undefined ? '-' : `${(v * 100).toFixed(2)}%`;
}
function fmt(v: number | undefined): string {
  return v === undefined ? '-' : Number.isInteger(v) ? String(v) : v.toFixed(3);
}
