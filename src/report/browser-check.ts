import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * Opens a report in headless Chromium and measures whether its charts are drawn: from the DOM after load
 * (each chart's SVG, its marks and axes, and where it lies on the page) and from a screenshot of the whole
 * page (how many pixels inside each chart are not background). Used by test/report.test.ts and, on any
 * report file, by `node dist/src/report/browser-check.js FILE`.
 */

export interface ChartCheck {
  id: string;
  svgs: number;
  /** Vega mark groups holding data marks (`role-mark`): points, lines, rules, text. */
  markGroups: number;
  /** Drawn data-mark elements (paths, lines, texts) inside those groups. */
  markItems: number;
  axes: number;
  rect: { x: number; y: number; width: number; height: number };
  /** Pixels inside the chart's rectangle of the screenshot that are not near-white. */
  inkPixels: number;
  pixels: number;
}

export interface ReportBrowserCheck {
  chromium: string;
  pageHeight: number;
  screenshot: { width: number; height: number; file: string };
  charts: ChartCheck[];
}

const WIDTH = 1200;
const NEAR_WHITE = 235;

/** The Chromium binary on PATH, or null: the browser test is skipped (with that reason) when it is missing. */
export async function findChromium(): Promise<string | null> {
  for (const name of ['chromium', 'chromium-browser']) {
    for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
      const candidate = path.join(dir, name);
      try {
        await fs.access(candidate, fs.constants.X_OK);
        return candidate;
      } catch {
        // not here
      }
    }
  }
  return null;
}

// Records each chart's box and the page height as attributes, so --dump-dom reports the layout. Added to a
// copy of the report only; the report itself has no script.
const PROBE = `<script>
addEventListener('load', () => {
  for (const f of document.querySelectorAll('figure.chart')) {
    const svg = f.querySelector('svg');
    if (!svg) continue;
    const r = svg.getBoundingClientRect();
    f.setAttribute('data-rect', [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(','));
  }
  document.body.setAttribute('data-page-height', String(document.documentElement.scrollHeight));
});
</script>`;

export async function checkReportInChromium(file: string, chromium: string, workDir?: string): Promise<ReportBrowserCheck> {
  const html = await fs.readFile(file, 'utf8');
  const dir = workDir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'report-check-')));
  const probe = path.join(dir, 'probe.html');
  await fs.writeFile(probe, html.replace('</body>', `${PROBE}\n</body>`));
  const url = pathToFileURL(probe).href;
  const profile = path.join(dir, 'profile');
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--force-device-scale-factor=1', `--user-data-dir=${profile}`];

  const dom = await run(chromium, [...flags, `--window-size=${WIDTH},900`, '--dump-dom', url]);
  const pageHeight = Number(/data-page-height="(\d+)"/.exec(dom)?.[1]);
  if (!Number.isFinite(pageHeight) || pageHeight <= 0) throw new Error(`Chromium did not lay out ${file} (no page height in the DOM it dumped)`);
  const charts = parseCharts(dom);

  const shot = path.join(dir, 'screenshot.png');
  await run(chromium, [...flags, `--window-size=${WIDTH},${pageHeight}`, `--screenshot=${shot}`, url]);
  const { PNG } = await import('pngjs');
  const png = PNG.sync.read(await fs.readFile(shot));
  for (const chart of charts) {
    const { x, y, width, height } = chart.rect;
    let ink = 0;
    let pixels = 0;
    for (let row = Math.max(0, y); row < Math.min(png.height, y + height); row++) {
      for (let col = Math.max(0, x); col < Math.min(png.width, x + width); col++) {
        const i = (row * png.width + col) * 4;
        pixels++;
        if (png.data[i]! < NEAR_WHITE || png.data[i + 1]! < NEAR_WHITE || png.data[i + 2]! < NEAR_WHITE) ink++;
      }
    }
    chart.inkPixels = ink;
    chart.pixels = pixels;
  }
  return { chromium, pageHeight, screenshot: { width: png.width, height: png.height, file: shot }, charts };
}

/** Each `figure.chart` of the dumped DOM: what its SVG holds and where the probe found it. */
export function parseCharts(dom: string): ChartCheck[] {
  const charts: ChartCheck[] = [];
  const figures = dom.match(/<figure class="chart"[\s\S]*?<\/figure>/g) ?? [];
  for (const f of figures) {
    const id = /data-chart="([^"]*)"/.exec(f)?.[1] ?? '?';
    const rect = (/data-rect="([^"]*)"/.exec(f)?.[1] ?? '0,0,0,0').split(',').map(Number);
    // Data-mark groups: <g class="mark-<type> role-mark ..."> ... </g> (no nested groups inside them).
    const groups = f.match(/<g class="mark-[a-z]+ role-mark[^"]*"[^>]*>[\s\S]*?<\/g>/g) ?? [];
    const markItems = groups.reduce((n, g) => n + (g.match(/<(path|line|text|rect)\b/g)?.length ?? 0), 0);
    charts.push({
      id,
      svgs: f.match(/<svg\b/g)?.length ?? 0,
      markGroups: groups.length,
      markItems,
      axes: f.match(/class="mark-group role-axis"/g)?.length ?? 0,
      rect: { x: rect[0]!, y: rect[1]!, width: rect[2]!, height: rect[3]! },
      inkPixels: 0,
      pixels: 0,
    });
  }
  return charts;
}

function run(binary: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(binary, args, { timeout: 90_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path.basename(binary)} ${args.at(-1)} failed: ${err.message}\n${stderr.slice(-2000)}`));
      else resolve(stdout);
    });
  });
}

// `node dist/src/report/browser-check.js FILE`: prints the figures of one report as JSON.
if (require.main === module) {
  void (async () => {
    const file = process.argv[2];
    if (!file) throw new Error('usage: node dist/src/report/browser-check.js REPORT.html');
    const chromium = await findChromium();
    if (!chromium) throw new Error('chromium is not on PATH (scripts/setup-chromium.sh installs it as root)');
    const check = await checkReportInChromium(file, chromium);
    process.stdout.write(`${JSON.stringify(check, null, 2)}\n`);
  })().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
