import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadPipelineFile, expandMatrix } from '../src/spec/load';
import { InputError } from '../src/util/errors';
import { initBackend } from '../src/ml/backend';
import { freshQualityYaml, parseSuiteArgs, quickQualityYaml, renderMarkdown, resultStem, SECTIONS, type SuiteResult } from '../bench/suite';
import { runCompute } from '../bench/compute';
import { runScaling } from '../bench/scaling';
import { runOrchestration } from '../bench/orchestration';

const root = path.resolve(__dirname, '../..');

describe('bench suite', function () {
  this.timeout(600_000);

  describe('arguments and file names', () => {
    it('defaults to every section, full mode, bench/results', () => {
      const o = parseSuiteArgs([]);
      assert.equal(o.quick, false);
      assert.deepEqual(o.sections, [...SECTIONS]);
      assert.equal(o.outDir, path.join(root, 'bench/results'));
    });

    it('reads --quick, --only and --out', () => {
      const o = parseSuiteArgs(['--quick', '--only', 'compute,orchestration', '--out', '/tmp/x']);
      assert.equal(o.quick, true);
      assert.deepEqual(o.sections, ['compute', 'orchestration']);
      assert.equal(o.outDir, '/tmp/x');
    });

    it('refuses unknown options and sections with an InputError naming them', () => {
      assert.throws(() => parseSuiteArgs(['--fast']), (e: unknown) => e instanceof InputError && /--fast/.test(e.message));
      assert.throws(() => parseSuiteArgs(['--only', 'compute,gpu']), (e: unknown) => e instanceof InputError && /unknown section gpu/.test(e.message));
      assert.throws(() => parseSuiteArgs(['--only']), (e: unknown) => e instanceof InputError && /needs a value/.test(e.message));
    });

    it('names results bench-<date>-<host>-<hhmm> in UTC', () => {
      assert.equal(resultStem(new Date('2026-12-01T01:07:30Z'), 'box'), 'bench-2026-12-01-box-0107');
    });
  });

  describe('the quick quality pipelines', () => {
    for (const file of ['pipelines/bench-quality.yaml', 'pipelines/bench-quality-cnn.yaml']) {
      it(`derives a valid one-cell pipeline from ${file}, named and tracked apart from the full bench`, () => {
        const dir = mkdtempSync(path.join(os.tmpdir(), 'wf-bench-test-'));
        try {
          const quick = path.join(dir, 'quick.yaml');
          writeFileSync(quick, freshQualityYaml(quickQualityYaml(readFileSync(path.join(root, file), 'utf8')), 'abc123'));
          const full = loadPipelineFile(path.join(root, file)).spec;
          const { spec } = loadPipelineFile(quick);
          assert.equal(spec.name, `${full.name}-quick-abc123`);
          assert.notEqual(spec.tracking.experiment, full.tracking.experiment);
          assert.equal(expandMatrix(spec).length, 1);
          assert.ok(spec.zoo.count < full.zoo.count);
          assert.ok(spec.weightformer.train.steps < full.weightformer.train.steps);
          assert.ok(spec.weightformer.train.tMax <= spec.zoo.count);
          assert.deepEqual(spec.architecture, full.architecture);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      });
    }
  });

  it('renames a full bench pipeline per run (new workflow ids: --no-cache recomputes) and keeps its experiment and setting', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'wf-bench-test-'));
    try {
      const file = path.join(root, 'pipelines/bench-quality.yaml');
      const copy = path.join(dir, 'full.yaml');
      writeFileSync(copy, freshQualityYaml(readFileSync(file, 'utf8'), 'run1'));
      const full = loadPipelineFile(file).spec;
      const { spec } = loadPipelineFile(copy);
      assert.equal(spec.name, `${full.name}-run1`);
      assert.equal(spec.tracking.experiment, full.tracking.experiment);
      assert.deepEqual({ ...spec, name: full.name }, full);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('the Markdown table', () => {
    const result: SuiteResult = {
      suite: 'weightformer-bench/1',
      mode: 'quick',
      startedAt: '2026-12-01T01:00:00.000Z',
      wallSeconds: 12,
      backend: 'wasm',
      machine: { host: 'box', cpuModel: 'Test CPU', cores: 2, memoryGiB: 8, platform: 'linux', gpuAdapter: null },
      versions: { node: 'v20', '@tensorflow/tfjs-core': '4.22.0' },
      sections: {
        compute: {
          status: 'ok', seconds: 1,
          result: [
            { backend: 'wasm', status: 'measured', metaStepMs: 100, studentStepMs: 5, metaStepRatioToWasm: 1, studentStepRatioToWasm: 1, kernels: { batched: { total: 10, computing: 6, byName: {} }, plainPort: { total: 60, computing: 40, byName: {} }, ratio: 6, ratioComputing: 40 / 6 } },
            { backend: 'webgpu', status: 'skipped', reason: 'no WebGPU adapter on this machine' },
          ],
        },
        scaling: {
          status: 'ok', seconds: 1,
          result: {
            setting: { teacherCounts: [2, 16], shardSize: 10, zoo: 8, teacherEpochs: 1, metaSteps: 1, metaBatch: 4, tMin: 2, tMax: 8, finetuneEpochs: 1, kdMaxEpochs: 1, seed: 1 },
            coverage: 'meta-training covered subsets up to 8 (zoo 8); larger T are extrapolation', secondsTeachers: 1, secondsMetaTrain: 1,
            points: [
              { T: 2, extrapolation: false, accTeacherMean: 0.8, accEnsemble: 0.85, accZeroShot: 0.84, accFinetuned: 0.86, gainCapturedZeroShot: 0.8, gainCapturedFinetuned: 1.2, secondsGenerate: 0.1, secondsFinetune: 0.2, secondsConsolidate: 0.3, secondsKdToMatch: 1, kdReached: true, kdEpochs: 2, ratioConsolidateOverKd: 0.3 },
              { T: 16, extrapolation: true, accTeacherMean: 0.8, accEnsemble: 0.87, accZeroShot: 0.83, accFinetuned: 0.85, gainCapturedZeroShot: 0.43, gainCapturedFinetuned: 0.71, secondsGenerate: 0.4, secondsFinetune: 0.2, secondsConsolidate: 0.6, secondsKdToMatch: 2, kdReached: false, kdEpochs: 3, ratioConsolidateOverKd: 0.3 },
            ],
          },
        },
        orchestration: { status: 'failed', seconds: 2, error: 'the dev server did not start' },
      },
    };
    const md = renderMarkdown(result);

    it('marks extrapolated T, unreached KD and the quick mode', () => {
      const row16 = md.split('\n').find((l) => l.startsWith('| 16 |')) ?? '';
      assert.match(row16, /\*\*extrapolation\*\*/);
      assert.match(row16, /not reached in 3 epochs: lower bound/);
      const row2 = md.split('\n').find((l) => l.startsWith('| 2 |')) ?? '';
      assert.doesNotMatch(row2, /extrapolation/);
      assert.match(md, /\*\*Quick mode\*\*/);
    });

    it('says why a backend was skipped and which section failed, and that a section did not run', () => {
      assert.match(md, /\| webgpu \|.*skipped: no WebGPU adapter on this machine/);
      assert.match(md, /\*\*orchestration failed\*\* after 2 s: the dev server did not start/);
      assert.match(md, /quality: not run/);
      assert.match(md, /\| wasm \| 100\.0 \| 1\.00 \|/);
    });
  });

  describe('sections on small settings (real runs)', () => {
    it('compute: measures cpu, records webgpu as measured or skipped with the reason, ratios only against a measured wasm', async () => {
      const out = await runCompute({ shape: { teachers: 2, batchSize: 8, hidden: [8], config: { d: 8, heads: 2 }, seed: 1 }, studentBatch: 8, warmup: 1, reps: 1, cpuReps: 1, backends: ['cpu', 'webgpu'] });
      const cpu = out.find((t) => t.backend === 'cpu');
      assert.equal(cpu?.status, 'measured');
      assert.ok((cpu?.metaStepMs ?? 0) > 0 && (cpu?.studentStepMs ?? 0) > 0);
      assert.ok((cpu?.kernels?.ratio ?? 0) > 1, 'the plain port should dispatch more kernels');
      assert.equal(cpu?.metaStepRatioToWasm, undefined, 'no wasm in this run: no ratio');
      const gpu = out.find((t) => t.backend === 'webgpu');
      assert.ok(gpu?.status === 'measured' || (gpu?.status === 'skipped' && (gpu.reason ?? '').length > 0), JSON.stringify(gpu));
    });

    it('scaling: marks T above the meta-trained subset sizes as extrapolation and reports both timings', async () => {
      await initBackend('wasm');
      const r = await runScaling({ teacherCounts: [2, 4], shardSize: 40, zoo: 3, teacherEpochs: 1, metaSteps: 2, metaBatch: 16, tMin: 2, tMax: 3, finetuneEpochs: 1, kdMaxEpochs: 1, seed: 1 });
      assert.deepEqual(r.points.map((p) => [p.T, p.extrapolation]), [[2, false], [4, true]]);
      assert.match(r.coverage, /up to 3.*extrapolation/);
      for (const p of r.points) {
        assert.ok(p.secondsConsolidate > 0 && p.secondsKdToMatch > 0 && Number.isFinite(p.ratioConsolidateOverKd));
        assert.ok(p.accEnsemble >= 0 && p.accEnsemble <= 1 && p.kdEpochs === 1);
      }
    });

    it('orchestration: runs trivial stages through a real Temporal dev server and directly', async () => {
      const r = await runOrchestration(3, 1);
      assert.equal(r.stages, 3);
      assert.ok(r.msPerStageTemporal > 0 && Number.isFinite(r.msPerStageTemporal));
      assert.ok(r.msPerStageDirect >= 0 && Number.isFinite(r.overheadMsPerStage));
    });
  });
});
