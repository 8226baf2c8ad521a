import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { renderResultTable } from '../src/cli/table';
import { baselineRows, gainPoints, renderReport, sweepAccuracyPoints, writeReportFile, type ReportCell, type ReportInput } from '../src/report';
import { checkReportInChromium, findChromium, parseCharts } from '../src/report/browser-check';
import type { PipelineResult } from '../workflows/types';

// Results shaped as a finished quickstart run returns them (metric names as evaluate logs them).
const METRICS: Record<string, number> = {
  'acc.teacher_0': 0.861,
  'acc.teacher_1': 0.874,
  'acc.teacher_2': 0.858,
  'acc.teacher_mean': 0.8643,
  'acc.ensemble': 0.9021,
  'acc.avg_naive': 0.412,
  'acc.avg_aligned': 0.701,
  'acc.avg_aligned_finetuned': 0.881,
  'acc.kd': 0.879,
  'acc.data_only': 0.842,
  'acc.teacher_ablation': 0.795,
  'acc.student_zero_shot': 0.8712,
  'acc.student_finetuned': 0.8934,
  'gain_captured.zero_shot': 0.18,
  'gain_captured.finetuned': 0.77,
  'seconds.finetune': 3.2,
  'seconds.kd_to_match': 41.5,
  'kd_to_match.reached': 1,
};

const curve = (name: string, steps: number, start: number, end: number) => ({
  name,
  points: Array.from({ length: steps }, (_, i) => ({ step: i * 10, value: end + (start - end) * Math.exp((-4 * i) / steps) })),
});

function runInput(overrides: Partial<ReportInput> = {}): ReportInput {
  return {
    pipelineName: 'quickstart',
    specHash: 'ab'.repeat(32),
    workflowId: 'quickstart-abababababab',
    mlflowRunId: '0123456789abcdef',
    metrics: METRICS,
    tags: { 'weightformer.backend': 'wasm' },
    stages: { teachers: { state: 'completed', seconds: 12 }, zoo: { state: 'cached', cacheHit: true, seconds: 0.1 }, weightformer: { state: 'completed', seconds: 60 } },
    curves: {
      teachers: [curve('teacher_0.loss', 30, 2.3, 0.4), curve('teacher_1.loss', 30, 2.3, 0.35), curve('teacher_2.loss', 30, 2.2, 0.42)],
      weightformerLoss: [curve('weightformer.loss', 60, 2.5, 0.6)],
      weightformerValidation: [curve('weightformer.val_acc', 6, 0.3, 0.86)],
      finetune: [curve('finetune.loss', 20, 0.7, 0.3)],
      missing: {},
    },
    ...overrides,
  };
}

function sweepCells(): ReportCell[] {
  const cells: ReportCell[] = [];
  for (const t of [2, 4, 8]) {
    for (const seed of [1, 2, 3]) {
      const jitter = (seed - 2) * 0.004;
      cells.push({
        cell: { seed, 'teachers.count': t },
        workflowId: `sweep-cell-${cells.length}`,
        mlflowRunId: `run${cells.length}`,
        metrics: {
          ...METRICS,
          'acc.ensemble': 0.89 + t * 0.003 + jitter,
          'acc.student_zero_shot': 0.87 + jitter,
          'gain_captured.zero_shot': 0.4 - t * 0.03 + jitter,
          'gain_captured.finetuned': 0.8 - t * 0.02 + jitter * 2,
        },
      });
    }
  }
  return cells;
}

const CHART_IDS = ['accuracy', 'teacher-curves', 'weightformer-loss', 'weightformer-validation', 'finetune-curves'];

describe('HTML report (rendered from fixture results)', () => {
  it('holds every row of the CLI table and one SVG per chart, with one accuracy point per row', async () => {
    const html = await renderReport(runInput());
    const result: PipelineResult = { status: 'completed', workflowId: 'w', mlflowRunId: null, mlflowExperimentId: null, metrics: METRICS, tags: {}, stages: {}, artifacts: {} };
    // Every metric row the CLI prints (the table's first column) is a row of the report's table.
    const cliMetrics = renderResultTable(result).split('\n').map((l) => l.split(/\s+/)[0]!).filter((k) => /^(acc|gain_captured|seconds)\./.test(k));
    assert.equal(cliMetrics.length, 17);
    for (const key of cliMetrics) assert.match(html, new RegExp(`<td class="metric">${key.replace(/\./g, '\\.')}</td>`), key);
    assert.match(html, /<tr class="baseline"><td class="metric">acc\.teacher_ablation</);
    assert.match(html, /<tr class="teacher"><td class="metric">acc\.teacher_mean</);
    assert.match(html, /<tr class="student"><td class="metric">acc\.student_finetuned</);
    const charts = parseCharts(html);
    assert.deepEqual(charts.map((c) => c.id), CHART_IDS);
    for (const c of charts) {
      assert.equal(c.svgs, 1, c.id);
      assert.ok(c.axes >= 2, `${c.id}: an x and a y axis (and grids), got ${c.axes}`);
    }
    // The accuracy chart: one dot per table row (3 teachers + 10 models), in one symbol group.
    const symbols = /<g class="mark-symbol role-mark[^"]*"[^>]*>([\s\S]*?)<\/g>/.exec(html.slice(html.indexOf('data-chart="accuracy"')))![1]!;
    assert.equal(symbols.match(/<path\b/g)?.length, 13);
    // Three teacher curves: three line paths (Vega draws each series in its own group).
    const teacherFigure = html.slice(html.indexOf('data-chart="teacher-curves"'), html.indexOf('data-chart="weightformer-loss"'));
    const linePaths = [...teacherFigure.matchAll(/<g class="mark-line role-mark[^"]*"[^>]*>([\s\S]*?)<\/g>/g)].map((m) => m[1]!.match(/<path\b/g)?.length ?? 0);
    assert.deepEqual(linePaths, [1, 1, 1]);
  });

  it('lists the teachers in teacher order, as the CLI table does (teacher 10 after teacher 2)', () => {
    const metrics = { 'acc.teacher_10': 0.8, 'acc.teacher_2': 0.81, 'acc.teacher_1': 0.82, 'acc.ensemble': 0.9 };
    assert.deepEqual(baselineRows(metrics).map((r) => r.metric), ['acc.teacher_1', 'acc.teacher_2', 'acc.teacher_10', 'acc.ensemble']);
    const result: PipelineResult = { status: 'completed', workflowId: 'w', mlflowRunId: null, mlflowExperimentId: null, metrics, tags: {}, stages: {}, artifacts: {} };
    const cliRows = renderResultTable(result).split('\n').map((l) => l.split(/\s+/)[0]!).filter((k) => k.startsWith('acc.'));
    assert.deepEqual(cliRows, baselineRows(metrics).map((r) => r.metric));
  });

  it('is self-contained and reproducible: no script, nothing fetched, the same bytes for the same results', async () => {
    const html = await renderReport(runInput());
    assert.doesNotMatch(html, /<script|<link|<img|\bsrc=|url\(/i);
    assert.equal(await renderReport(runInput()), html);
  });

  it('says why a curve is missing instead of drawing an empty chart', async () => {
    const html = await renderReport(
      runInput({
        curves: { teachers: [], weightformerLoss: [], weightformerValidation: [], finetune: [], missing: { finetune: 'finetune.enabled is false', teachers: 'tracking is off' } },
      }),
    );
    assert.deepEqual(parseCharts(html).map((c) => c.id), ['accuracy']);
    assert.match(html, /finetune\.enabled is false/);
    assert.match(html, /tracking is off/);
    assert.match(html, /no curve was logged/);
  });

  it('for a sweep over teachers.count: intervals over cells and gain captured against T', async () => {
    const cells = sweepCells();
    const points = sweepAccuracyPoints(cells);
    const ensemble = points.find((p) => p.metric === 'acc.ensemble')!;
    assert.equal(ensemble.n, 9);
    assert.ok(ensemble.lo! < ensemble.accuracy && ensemble.accuracy < ensemble.hi!, JSON.stringify(ensemble));
    // Identical across cells: a degenerate interval.
    const kd = points.find((p) => p.metric === 'acc.kd')!;
    assert.equal(kd.lo, kd.hi);
    const gains = gainPoints(cells);
    assert.deepEqual(gains.map((g) => `${g.teachers}:${g.variant}`), ['2:student, zero-shot', '2:student, fine-tuned', '4:student, zero-shot', '4:student, fine-tuned', '8:student, zero-shot', '8:student, fine-tuned']);
    const t4 = gains.find((g) => g.teachers === 4 && g.variant === 'student, zero-shot')!;
    assert.ok(Math.abs(t4.gain - (0.4 - 4 * 0.03)) < 1e-12);
    assert.ok(t4.lo < t4.gain && t4.gain < t4.hi && t4.n === 3);

    const html = await renderReport({ ...runInput(), metrics: {}, stages: {}, curves: null, cells });
    assert.deepEqual(parseCharts(html).map((c) => c.id), ['accuracy', 'gain-vs-teachers']);
    const noT = await renderReport({ ...runInput(), metrics: {}, curves: null, cells: cells.filter((c) => c.cell['teachers.count'] === 4) });
    assert.deepEqual(parseCharts(noT).map((c) => c.id), ['accuracy']);
    assert.match(noT, /does not vary teachers\.count/);
  });

  it('is written atomically: no temporary file is left, and a second write replaces the first', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'report-write-'));
    const file = path.join(dir, 'reports', 'run.html');
    await writeReportFile(file, 'first');
    await writeReportFile(file, 'second');
    assert.equal(await fs.readFile(file, 'utf8'), 'second');
    assert.deepEqual(await fs.readdir(path.dirname(file)), ['run.html']);
    await fs.rm(dir, { recursive: true });
  });
});

describe('HTML report in headless Chromium', function () {
  let chromium: string | null = null;
  before(async () => {
    chromium = await findChromium();
  });

  it('draws every chart: SVG marks and axes in the DOM, ink in each chart area of the screenshot', async function () {
    if (!chromium) {
      // Skipped, not passed: says why in the title mocha prints.
      this.test!.title += ' — SKIPPED: chromium is not on PATH (scripts/setup-chromium.sh installs it as root)';
      this.skip();
    }
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'report-chromium-'));
    try {
      const file = await writeReportFile(path.join(dir, 'report.html'), await renderReport(runInput()));
      const check = await checkReportInChromium(file, chromium!, dir);
      assert.deepEqual(check.charts.map((c) => c.id), CHART_IDS);
      assert.equal(check.screenshot.height, check.pageHeight);
      for (const c of check.charts) {
        assert.equal(c.svgs, 1, c.id);
        assert.ok(c.axes >= 2, `${c.id}: ${c.axes} axis groups`);
        assert.ok(c.markGroups >= 1 && c.markItems >= 1, `${c.id}: ${c.markGroups} mark groups, ${c.markItems} marks`);
        assert.ok(c.rect.width > 300 && c.rect.height > 100, `${c.id} laid out at ${JSON.stringify(c.rect)}`);
        // Not blank: axes, lines and labels cover a few percent of a chart; an undrawn one is all white.
        assert.ok(c.pixels > 0 && c.inkPixels / c.pixels > 0.01, `${c.id}: ${c.inkPixels} of ${c.pixels} pixels drawn`);
      }
      // The page outside the charts is background: the count is not just the screenshot being dark.
      assert.ok(check.charts.every((c) => c.inkPixels / c.pixels < 0.6));
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('tells an undrawn chart apart: the same page with one chart emptied has no marks and no ink there', async function () {
    if (!chromium) {
      this.test!.title += ' — SKIPPED: chromium is not on PATH (scripts/setup-chromium.sh installs it as root)';
      this.skip();
    }
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'report-chromium-blank-'));
    try {
      const html = await renderReport(runInput());
      // Keep the accuracy chart's <svg> element and size, drop everything drawn inside it.
      const start = html.indexOf('<svg', html.indexOf('data-chart="accuracy"'));
      const openEnd = html.indexOf('>', start) + 1;
      const end = html.indexOf('</svg>', start);
      const emptied = html.slice(0, openEnd) + html.slice(end);
      const file = await writeReportFile(path.join(dir, 'report.html'), emptied);
      const check = await checkReportInChromium(file, chromium!, dir);
      const accuracy = check.charts.find((c) => c.id === 'accuracy')!;
      assert.equal(accuracy.markGroups, 0);
      assert.ok(accuracy.pixels > 0 && accuracy.inkPixels / accuracy.pixels < 0.001, `${accuracy.inkPixels} of ${accuracy.pixels}`);
      const teachers = check.charts.find((c) => c.id === 'teacher-curves')!;
      assert.ok(teachers.inkPixels / teachers.pixels > 0.01);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
