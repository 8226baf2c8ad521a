import { ACCURACY_ROWS, teacherAccuracyKeys } from '../cli/table';
import { mean, pairedBootstrap } from '../util/stats';
import { accuracyChartSpec, curvesChartSpec, gainChartSpec, renderSvg, type AccuracyPoint, type GainPoint } from './charts';
import type { Curve, ReportCell, ReportCurves, ReportInput } from './types';

/** The matrix key whose sweep gets the gain-against-T chart. */
export const TEACHER_COUNT_KEY = 'teachers.count';
const GAIN_VARIANTS: Array<[string, string]> = [
  ['gain_captured.zero_shot', 'student, zero-shot'],
  ['gain_captured.finetuned', 'student, fine-tuned'],
];
// Fewer resamples than bench/ uses: a report's intervals are for reading, and a sweep has few cells.
const BOOTSTRAP_RESAMPLES = 2000;

/** One row of the baseline table: the same rows, in the same order, as the CLI's table (src/cli/table.ts). */
export interface BaselineRow {
  metric: string;
  label: string;
  kind: AccuracyPoint['kind'];
  accuracy: number;
}

export function baselineRows(metrics: Record<string, number>): BaselineRow[] {
  const rows: BaselineRow[] = [];
  for (const key of teacherAccuracyKeys(metrics)) {
    rows.push({ metric: key, label: `teacher ${key.split('_')[1]}`, kind: 'teacher', accuracy: metrics[key]! });
  }
  for (const [key, label] of ACCURACY_ROWS) {
    if (metrics[key] !== undefined) rows.push({ metric: key, label, kind: kindOf(key), accuracy: metrics[key]! });
  }
  return rows;
}

function kindOf(metric: string): AccuracyPoint['kind'] {
  if (metric.startsWith('acc.student_')) return 'student';
  // Individual teachers and their mean; the teacher *ablation* is a baseline model.
  if (/^acc\.teacher_(\d+|mean)$/.test(metric)) return 'teacher';
  return 'baseline';
}

/** Points of the accuracy chart of one run: every table row, no interval (one run has one value each). */
export function runAccuracyPoints(metrics: Record<string, number>): AccuracyPoint[] {
  return baselineRows(metrics).map((r) => ({ label: r.label, metric: r.metric, kind: r.kind, accuracy: r.accuracy, n: 1 }));
}

/** Mean and 95% paired-bootstrap interval of values, one per run; a single value has no interval. */
export function interval(values: number[]): { mean: number; lo: number; hi: number } {
  if (values.length < 2) return { mean: values[0]!, lo: values[0]!, hi: values[0]! };
  const { mean: m, ci95 } = pairedBootstrap(values, mean, BOOTSTRAP_RESAMPLES);
  return { mean: m, lo: ci95[0], hi: ci95[1] };
}

/**
 * Points of a sweep's accuracy chart: each model's mean over the cells that report it, with a 95% bootstrap
 * interval over cells. Individual teachers are left out: teacher 0 of one cell is not teacher 0 of another.
 */
export function sweepAccuracyPoints(cells: ReportCell[]): AccuracyPoint[] {
  const points: AccuracyPoint[] = [];
  for (const [key, label] of ACCURACY_ROWS) {
    const values = cells.map((c) => c.metrics[key]).filter((v): v is number => v !== undefined && Number.isFinite(v));
    if (values.length === 0) continue;
    const { mean: m, lo, hi } = interval(values);
    points.push({ label, metric: key, kind: kindOf(key), accuracy: m, lo, hi, n: values.length });
  }
  return points;
}

/** Gain captured against T: cells grouped by their `teachers.count`, mean and interval over each group. */
export function gainPoints(cells: ReportCell[]): GainPoint[] {
  const byT = new Map<number, ReportCell[]>();
  for (const cell of cells) {
    const t = Number(cell.cell[TEACHER_COUNT_KEY]);
    if (!Number.isFinite(t)) continue;
    byT.set(t, [...(byT.get(t) ?? []), cell]);
  }
  const points: GainPoint[] = [];
  for (const t of [...byT.keys()].sort((a, b) => a - b)) {
    for (const [key, variant] of GAIN_VARIANTS) {
      const values = byT.get(t)!.map((c) => c.metrics[key]).filter((v): v is number => v !== undefined && Number.isFinite(v));
      if (values.length === 0) continue;
      const { mean: gain, lo, hi } = interval(values);
      points.push({ teachers: t, variant, gain, lo, hi, n: values.length });
    }
  }
  return points;
}

export function sweepsTeacherCount(cells: ReportCell[] | undefined): boolean {
  return !!cells && new Set(cells.map((c) => c.cell[TEACHER_COUNT_KEY]).filter((v) => v !== undefined)).size > 1;
}

/** The whole report: one self-contained HTML file (inline CSS and SVG, no script, nothing fetched). */
export async function renderReport(input: ReportInput): Promise<string> {
  const sections = input.cells ? await sweepSections(input, input.cells) : await runSections(input);
  const backend = input.tags['weightformer.backend'];
  const facts: Array<[string, string | null]> = [
    ['pipeline', input.pipelineName],
    ['workflow', input.workflowId],
    ['MLflow run', input.mlflowRunId],
    ['spec hash', input.specHash],
    ['backend', backend ?? null],
  ];
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(input.pipelineName)} — WeightFormer pipeline report</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 980px; padding: 0 16px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; font-family: ui-monospace, monospace; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; text-align: left; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.metric { font-family: ui-monospace, monospace; color: #555; }
tr.student td { font-weight: 600; }
figure.chart { margin: 12px 0 20px; } figure.chart figcaption { color: #444; margin-bottom: 4px; }
p.missing { color: #8a6d3b; background: #fcf8e3; padding: 6px 10px; }
</style>
</head>
<body>
<h1>${esc(input.pipelineName)}${input.cells ? ` — sweep of ${input.cells.length} cells` : ''}</h1>
<dl class="facts">
${facts.filter(([, v]) => v).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v!)}</dd>`).join('\n')}
</dl>
${sections.join('\n')}
</body>
</html>
`;
}

async function runSections(input: ReportInput): Promise<string[]> {
  const m = input.metrics;
  const rows = baselineRows(m);
  const out: string[] = ['<h2>Baselines</h2>', baselineTable(rows, m)];
  out.push('<h2>Student against each baseline</h2>');
  out.push(
    rows.length > 0
      ? await figure('accuracy', 'Test accuracy of each model on the same test split (one run: no interval; a sweep over seeds gives 95% intervals).', accuracyChartSpec(runAccuracyPoints(m)))
      : missing('no accuracy was evaluated'),
  );
  out.push('<h2>Training curves</h2>');
  const curves: ReportCurves = input.curves ?? { teachers: [], weightformerLoss: [], weightformerValidation: [], finetune: [], missing: {} };
  out.push(await curveFigure('teacher-curves', 'Teachers: training loss per step.', curves.teachers, 'loss', curves.missing.teachers));
  out.push(await curveFigure('weightformer-loss', 'WeightFormer meta-training: CE + KD loss of the generated students on the consolidation set, per step.', curves.weightformerLoss, 'meta-loss', curves.missing.weightformerLoss));
  out.push(await curveFigure('weightformer-validation', 'WeightFormer meta-training: accuracy of students generated for the validation ensembles (checkpoint choice).', curves.weightformerValidation, 'validation accuracy', curves.missing.weightformerValidation));
  out.push(await curveFigure('finetune-curves', 'Fine-tune of the generated student: CE + KD loss per step.', curves.finetune, 'loss', curves.missing.finetune));
  out.push('<h2>Stages</h2>', stagesTable(input.stages));
  return out;
}

async function sweepSections(input: ReportInput, cells: ReportCell[]): Promise<string[]> {
  const out: string[] = ['<h2>Cells</h2>', cellsTable(cells)];
  out.push('<h2>Student against each baseline</h2>');
  const points = sweepAccuracyPoints(cells);
  out.push(
    points.length > 0
      ? await figure('accuracy', `Test accuracy, mean over the ${cells.length} cells with its 95% paired-bootstrap interval over cells.`, accuracyChartSpec(points))
      : missing('no cell reported an accuracy'),
  );
  out.push('<h2>Gain captured against the number of teachers</h2>');
  if (sweepsTeacherCount(cells)) {
    out.push(await figure('gain-vs-teachers', 'Gain captured ((student − mean teacher) / (ensemble − mean teacher)) against T, mean over the cells of each T with its 95% bootstrap interval; dashed: the ensemble.', gainChartSpec(gainPoints(cells))));
  } else {
    out.push(missing(`this sweep does not vary ${TEACHER_COUNT_KEY}`));
  }
  out.push(`<p>Each cell's own report (baselines and training curves) is the <code>report/report.html</code> artifact of its MLflow run.</p>`);
  if (Object.keys(input.stages).length > 0) out.push('<h2>Stages</h2>', stagesTable(input.stages));
  return out;
}

async function curveFigure(id: string, caption: string, curves: Curve[], yTitle: string, why: string | undefined): Promise<string> {
  const drawn = curves.filter((c) => c.points.length > 0);
  if (drawn.length === 0) return `<h3>${esc(caption.split(':')[0]!)}</h3>${missing(why ?? 'no curve was logged')}`;
  return figure(id, caption, curvesChartSpec(drawn, yTitle));
}

async function figure(id: string, caption: string, spec: Record<string, unknown>): Promise<string> {
  return `<figure class="chart" data-chart="${esc(id)}" id="chart-${esc(id)}">\n<figcaption>${esc(caption)}</figcaption>\n${await renderSvg(spec)}\n</figure>`;
}

function missing(why: string): string {
  return `<p class="missing">${esc(why)}</p>`;
}

function baselineTable(rows: BaselineRow[], m: Record<string, number>): string {
  const lines = ['<table class="baselines">', '<thead><tr><th>metric</th><th>model</th><th>test accuracy</th></tr></thead>', '<tbody>'];
  for (const r of rows) lines.push(`<tr class="${r.kind}"><td class="metric">${esc(r.metric)}</td><td>${esc(r.label)}</td><td class="num">${pct(r.accuracy)}</td></tr>`);
  for (const key of ['gain_captured.zero_shot', 'gain_captured.finetuned', 'ratio.consolidate_over_kd_to_match']) {
    if (m[key] !== undefined) lines.push(`<tr><td class="metric">${esc(key)}</td><td></td><td class="num">${fmt(m[key])}</td></tr>`);
  }
  for (const key of Object.keys(m).filter((k) => k.startsWith('seconds.')).sort()) {
    const unreached = key === 'seconds.kd_to_match' && m['kd_to_match.reached'] === 0 ? ' (not reached: a lower bound)' : '';
    lines.push(`<tr><td class="metric">${esc(key)}</td><td>${esc(unreached)}</td><td class="num">${fmt(m[key])} s</td></tr>`);
  }
  lines.push('</tbody>', '</table>');
  return lines.join('\n');
}

function cellsTable(cells: ReportCell[]): string {
  const keys = ['acc.ensemble', 'acc.student_zero_shot', 'acc.student_finetuned', 'gain_captured.zero_shot', 'gain_captured.finetuned'];
  const lines = ['<table class="cells">', `<thead><tr><th>cell</th>${keys.map((k) => `<th>${esc(k)}</th>`).join('')}<th>MLflow run</th></tr></thead>`, '<tbody>'];
  for (const c of cells) {
    const values = keys.map((k) => `<td class="num">${k.startsWith('acc.') ? pct(c.metrics[k]) : fmt(c.metrics[k])}</td>`).join('');
    lines.push(`<tr><td class="metric">${esc(JSON.stringify(c.cell))}</td>${values}<td class="metric">${esc(c.mlflowRunId ?? '-')}</td></tr>`);
  }
  lines.push('</tbody>', '</table>');
  return lines.join('\n');
}

function stagesTable(stages: ReportInput['stages']): string {
  const lines = ['<table class="stages">', '<thead><tr><th>stage</th><th>state</th><th>seconds</th><th>note</th></tr></thead>', '<tbody>'];
  for (const [name, s] of Object.entries(stages)) {
    lines.push(`<tr><td>${esc(name)}</td><td>${esc(s.state)}</td><td class="num">${fmt(s.seconds)}</td><td>${esc(s.note ?? '')}</td></tr>`);
  }
  lines.push('</tbody>', '</table>');
  return lines.join('\n');
}

function esc(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}
function pct(v: number | undefined): string {
  return v === undefined ? '-' : `${(v * 100).toFixed(2)}%`;
}
function fmt(v: number | undefined): string {
  return v === undefined ? '-' : Number.isInteger(v) ? String(v) : v.toFixed(3);
}
