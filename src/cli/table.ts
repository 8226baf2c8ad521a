import type { PipelineResult } from '../../workflows/types';

/** Rows of the baseline table, in reading order: what the student is compared against. */
const ACCURACY_ROWS: Array<[string, string]> = [
  ['acc.teacher_mean', 'mean single teacher'],
  ['acc.ensemble', 'ensemble (averaged softmax)'],
  ['acc.avg_naive', 'naive weight average'],
  ['acc.avg_aligned', 'aligned weight average'],
  ['acc.student_zero_shot', 'student, zero-shot'],
  ['acc.student_finetuned', 'student, fine-tuned'],
];

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
  const width = 34;
  lines.push(`${'model'.padEnd(width)} test accuracy`);
  lines.push(`${'-'.repeat(width)} -------------`);
  for (const key of Object.keys(m).filter((k) => /^acc\.teacher_\d+$/.test(k)).sort()) {
    lines.push(`${`teacher ${key.split('_')[1]}`.padEnd(width)} ${pct(m[key])}`);
  }
  for (const [key, label] of ACCURACY_ROWS) if (m[key] !== undefined) lines.push(`${label.padEnd(width)} ${pct(m[key])}`);
  lines.push('');
  for (const key of ['gain_captured.zero_shot', 'gain_captured.finetuned']) if (m[key] !== undefined) lines.push(`${key.padEnd(width)} ${fmt(m[key])}`);
  for (const key of Object.keys(m).filter((k) => k.startsWith('seconds.')).sort()) lines.push(`${key.padEnd(width)} ${fmt(m[key])} s`);
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
