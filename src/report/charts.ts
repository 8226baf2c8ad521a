import type { Curve } from './types';

/**
 * Charts as SVG strings, drawn without a browser: a Vega-Lite spec is compiled to Vega and rendered by a
 * headless Vega View (renderer 'none', then toSVG()). No canvas is needed: without the optional `canvas`
 * package Vega estimates text widths, which only affects label layout by a pixel or two.
 */

type VegaModule = typeof import('vega', { with: { 'resolution-mode': 'import' } });
type VegaLiteModule = typeof import('vega-lite', { with: { 'resolution-mode': 'import' } });
// Both packages are ES modules; this project compiles to CommonJS, so they are loaded with import() once.
let modules: Promise<{ vega: VegaModule; vl: VegaLiteModule }> | null = null;
function loadVega() {
  modules ??= Promise.all([import('vega'), import('vega-lite')]).then(([vega, vl]) => ({ vega, vl }));
  return modules;
}

// Vega-Lite's TopLevelSpec is a deep union; the specs below are plain JSON checked by compile() itself.
type VegaLiteSpec = Record<string, unknown>;

export async function renderSvg(spec: VegaLiteSpec): Promise<string> {
  const { vega, vl } = await loadVega();
  const compiled = vl.compile({ $schema: 'https://vega.github.io/schema/vega-lite/v6.json', ...spec } as never).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const WIDTH = 560;
const FONT = 'system-ui, sans-serif';
const CONFIG = { font: FONT, view: { stroke: '#ddd' }, axis: { labelFontSize: 11, titleFontSize: 12 }, legend: { labelFontSize: 11 } };
export const KIND_COLOURS = { teacher: '#9aa5b1', baseline: '#4c78a8', student: '#e45756' };

export interface AccuracyPoint {
  label: string;
  metric: string;
  kind: keyof typeof KIND_COLOURS;
  accuracy: number;
  /** 95% interval over seeds/cells, when there are several. */
  lo?: number;
  hi?: number;
  n: number;
}

/**
 * The student against every baseline: one dot per model, its 95% interval as a bar through it when there
 * are several seeds/cells. Dots on a zoomed axis rather than bars from zero: the differences that matter
 * are a few points of accuracy.
 */
export function accuracyChartSpec(points: AccuracyPoint[]): VegaLiteSpec {
  const values = points.map((p) => ({ ...p, lo: p.lo ?? p.accuracy, hi: p.hi ?? p.accuracy, text: `${(p.accuracy * 100).toFixed(2)}%` }));
  const low = Math.min(...values.map((v) => v.lo));
  const high = Math.max(...values.map((v) => v.hi));
  const pad = Math.max(0.005, (high - low) * 0.08);
  const domain = [Math.max(0, low - pad), Math.min(1, high + pad * 3)];
  const x = { field: 'accuracy', type: 'quantitative', title: 'test accuracy', scale: { domain, zero: false }, axis: { format: '.1%' } };
  const y = { field: 'label', type: 'nominal', title: null, sort: null, axis: { labelLimit: 400 } };
  return {
    width: WIDTH,
    height: { step: 24 },
    config: CONFIG,
    data: { values },
    encoding: { y },
    layer: [
      { mark: { type: 'rule', strokeWidth: 2 }, encoding: { x: { ...x, field: 'lo' }, x2: { field: 'hi' }, color: colour() } },
      { mark: { type: 'point', filled: true, size: 90, opacity: 1 }, encoding: { x, color: colour(), tooltip: [{ field: 'metric' }, { field: 'text' }, { field: 'n' }] } },
      { mark: { type: 'text', align: 'left', dx: 8, fontSize: 11 }, encoding: { x: { ...x, field: 'hi' }, text: { field: 'text' } } },
    ],
  };
}

function colour() {
  return {
    field: 'kind',
    type: 'nominal',
    title: null,
    scale: { domain: Object.keys(KIND_COLOURS), range: Object.values(KIND_COLOURS) },
    legend: { orient: 'bottom' },
  };
}

/** Lines of a metric against the training step, one per curve. */
export function curvesChartSpec(curves: Curve[], yTitle: string, xTitle = 'step'): VegaLiteSpec {
  const values = curves.flatMap((c) => c.points.map((p) => ({ curve: c.name, step: p.step, value: p.value })));
  return {
    width: WIDTH,
    height: 220,
    config: CONFIG,
    data: { values },
    mark: { type: 'line', strokeWidth: 1.5, point: curves.every((c) => c.points.length <= 40) },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: xTitle },
      y: { field: 'value', type: 'quantitative', title: yTitle, scale: { zero: false } },
      color: { field: 'curve', type: 'nominal', title: null, legend: curves.length > 1 ? { orient: 'right' } : null },
    },
  };
}

export interface GainPoint {
  teachers: number;
  variant: string;
  gain: number;
  lo: number;
  hi: number;
  n: number;
}

/** Gain captured against the number of teachers T, mean over the cells of each T with its 95% interval. */
export function gainChartSpec(points: GainPoint[]): VegaLiteSpec {
  const x = { field: 'teachers', type: 'quantitative', title: 'number of teachers T', axis: { values: [...new Set(points.map((p) => p.teachers))], format: 'd' } };
  const colourBy = { field: 'variant', type: 'nominal', title: null, legend: { orient: 'bottom' } };
  return {
    width: WIDTH,
    height: 240,
    config: CONFIG,
    data: { values: points },
    layer: [
      { mark: { type: 'rule', strokeDash: [4, 4], color: '#888' }, data: { values: [{ y: 1 }] }, encoding: { y: { field: 'y', type: 'quantitative' } } },
      { mark: { type: 'rule', strokeWidth: 2 }, encoding: { x, y: { field: 'lo', type: 'quantitative' }, y2: { field: 'hi' }, color: colourBy } },
      {
        mark: { type: 'line', point: { filled: true, size: 60 } },
        encoding: { x, y: { field: 'gain', type: 'quantitative', title: 'gain captured (1 = ensemble)' }, color: colourBy, tooltip: [{ field: 'teachers' }, { field: 'gain', format: '.3f' }, { field: 'n' }] },
      },
    ],
  };
}
