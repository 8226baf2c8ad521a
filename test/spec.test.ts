import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ARCHITECTURE_DEFAULTS, applyDefaults, architectureSettings, type RawPipeline } from '../src/spec/defaults';
import { canonicalJson, specHash } from '../src/spec/hash';
import { expandMatrix, loadPipelineFile, loadPipelineText, validateFiles } from '../src/spec/load';
import { suggest } from '../src/spec/messages';
import { PIPELINE_SCHEMA, schemaErrors, type SchemaNode } from '../src/spec/schema';
import type { ModelArchitecture, PipelineSpec, StageOptions } from '../src/spec/types';
import { SpecError, formatDiagnostic } from '../src/util/errors';

const ROOT = path.resolve(__dirname, '../..');
const FIXTURES = path.join(ROOT, 'test/fixtures/spec');
const GOOD = path.join(FIXTURES, 'good');
const BAD = path.join(FIXTURES, 'bad');
const PIPELINES = path.join(ROOT, 'pipelines');
const SCHEMA_FILE = path.join(ROOT, 'schemas/pipeline.schema.json');

function yamlFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => path.join(dir, f));
}

/** The SpecError a call throws (fails the test if it returns or throws anything else). */
function specError(fn: () => unknown): SpecError {
  try {
    fn();
  } catch (e) {
    if (e instanceof SpecError) return e;
    throw e;
  }
  assert.fail('expected a SpecError');
}

/** `BASENAME:LINE:COL: PATH: MESSAGE` of every diagnostic. */
function lines(err: SpecError): string[] {
  return err.diagnostics.map((d) => formatDiagnostic({ ...d, file: path.basename(d.file) }));
}

/** Checks the `# yaml-language-server: $schema=` first line and that it points at the schema. */
function assertSchemaComment(file: string): void {
  const first = fs.readFileSync(file, 'utf8').split('\n')[0] ?? '';
  const m = /^# yaml-language-server: \$schema=(\S+)$/.exec(first);
  assert.ok(m, `${file}: the first line must be '# yaml-language-server: $schema=...'`);
  assert.equal(path.resolve(path.dirname(file), m[1]!), SCHEMA_FILE, `${file}: $schema must point at ${SCHEMA_FILE}`);
}

const STAGE_DEFAULTS: StageOptions = {
  retry: { maximumAttempts: 3, initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s' },
  startToCloseTimeout: '2h',
  heartbeatTimeout: '30s',
  scheduleToStartTimeout: '10m',
  resources: { gpu: false },
};

/** test/fixtures/spec/good/minimal.yaml after defaulting; typed, so it lists every field of types.ts. */
const MINIMAL_DEFAULTED: PipelineSpec = {
  version: 1,
  name: 'minimal',
  seed: 0,
  data: {
    source: 'mnist-embedded', cifar100Labels: 'fine', shardSize: 500, consolidationSize: 1000, validationSize: 1000, testSize: 2000, splitSeed: 0,
  },
  architecture: { family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' },
  teachers: { count: 4, source: 'train', ensembleIndex: 0, train: { epochs: 3, batchSize: 64, learningRate: 0.001, checkpointEvery: 20 } },
  zoo: { count: 0, train: { epochs: 3, batchSize: 64, learningRate: 0.001, checkpointEvery: 20 } },
  weightformer: {
    mode: 'none', validationTeachers: 4, validationEnsembles: 3,
    model: { d: 64, heads: 4, blocks: 2, mlpRatio: 2, mixing: true, probeTokens: false, agreementStats: true, contentGate: true },
    train: { steps: 300, batchSize: 128, learningRate: 0.001, tMin: 2, tMax: 6, temperature: 2, kdWeight: 0.5, checkpointEvery: 25, evalEvery: 50 },
  },
  generate: { method: 'aligned-average' },
  finetune: {
    enabled: true, epochs: 1, batchSize: 64, learningRate: 0.0005, kdWeight: 0.5, temperature: 2, checkpointEvery: 20,
  },
  baselines: {
    include: ['teachers', 'ensemble', 'avg_naive', 'avg_aligned', 'avg_aligned_finetuned', 'kd', 'data_only', 'teacher_ablation'],
    kd: { epochs: 30, batchSize: 32, learningRate: 0.002, kdWeight: 0.5, temperature: 2, checkpointEvery: 100 },
    dataOnly: { batchSize: 32, learningRate: 0.002, checkpointEvery: 100 },
  },
  evaluate: { split: 'test' },
  tracking: { enabled: true, experiment: 'minimal', registerModel: '' },
  compute: { backend: 'auto' },
  stages: {
    teachers: STAGE_DEFAULTS, zoo: STAGE_DEFAULTS, weightformer: STAGE_DEFAULTS, generate: STAGE_DEFAULTS,
    finetune: STAGE_DEFAULTS, baselines: STAGE_DEFAULTS, evaluate: STAGE_DEFAULTS, track: STAGE_DEFAULTS,
  },
  matrix: {},
};

describe('pipeline spec', () => {
  describe('schema', () => {
    it('has exactly the top-level keys of the file format, version and name required', () => {
      assert.deepEqual(Object.keys(PIPELINE_SCHEMA.properties ?? {}), [
        'version', 'name', 'seed', 'data', 'architecture', 'teachers', 'zoo', 'weightformer', 'generate', 'alignment', 'finetune',
        'baselines', 'evaluate', 'tracking', 'compute', 'stages', 'matrix', 'trigger',
      ]);
      assert.deepEqual(PIPELINE_SCHEMA.required, ['version', 'name']);
      assert.ok(typeof PIPELINE_SCHEMA['$id'] === 'string' && typeof PIPELINE_SCHEMA['title'] === 'string');
    });

    it('describes every field and closes every mapping (additionalProperties: false)', () => {
      const walk = (s: SchemaNode, where: string): void => {
        if (s.properties) {
          assert.equal(s.additionalProperties, false, `${where}: additionalProperties must be false`);
          for (const [k, sub] of Object.entries(s.properties)) {
            assert.ok(typeof sub.description === 'string' && sub.description.length > 0, `${where}/${k}: no description`);
            walk(sub, `${where}/${k}`);
          }
        }
      };
      walk(PIPELINE_SCHEMA, '');
      for (const [name, def] of Object.entries(PIPELINE_SCHEMA.definitions ?? {})) walk(def, `#/definitions/${name}`);
    });

    it('accepts every defaulted spec it produces (schema and types.ts agree)', () => {
      for (const file of [...yamlFiles(GOOD), ...yamlFiles(PIPELINES)]) {
        const { spec } = loadPipelineFile(file);
        assert.deepEqual(schemaErrors(spec), [], file);
        for (const cell of expandMatrix(spec)) assert.deepEqual(schemaErrors(cell.spec), [], `${file} cell`);
      }
    });
  });

  describe('valid files', () => {
    const good = yamlFiles(GOOD);
    it('has good fixtures', () => assert.ok(good.length >= 4));
    for (const file of good) {
      it(`loads ${path.relative(ROOT, file)}`, () => {
        assertSchemaComment(file);
        const loaded = loadPipelineFile(file);
        assert.equal(loaded.file, file);
        assert.match(loaded.hash, /^[0-9a-f]{64}$/);
        assert.equal(loaded.hash, specHash(loaded.spec));
      });
    }

    const pipelines = yamlFiles(PIPELINES);
    if (pipelines.length === 0) {
      it('validates every pipelines/*.yaml (none yet)', function () {
        this.skip();
      });
    }
    for (const file of pipelines) {
      it(`validates ${path.relative(ROOT, file)}`, () => {
        assertSchemaComment(file);
        const loaded = loadPipelineFile(file);
        assert.ok(expandMatrix(loaded.spec).length >= 1);
        const { ok, output } = validateFiles([file]);
        assert.equal(output, `${file}: ok (hash ${loaded.hash.slice(0, 12)}…${
          Object.keys(loaded.spec.matrix).length ? `, ${expandMatrix(loaded.spec).length} matrix cells` : ''})`);
        assert.equal(ok, true);
      });
    }
  });

  describe('defaults', () => {
    it('fills every field of a minimal file', () => {
      assert.deepEqual(loadPipelineFile(path.join(GOOD, 'minimal.yaml')).spec, MINIMAL_DEFAULTED);
    });

    it('derives data.splitSeed from seed and tracking.experiment from name unless set', () => {
      const { spec } = loadPipelineText('version: 1\nname: seeded\nseed: 42\n', 'seeded.yaml');
      assert.equal(spec.data.splitSeed, 42);
      assert.equal(spec.tracking.experiment, 'seeded');
      const full = loadPipelineFile(path.join(GOOD, 'full.yaml')).spec;
      assert.equal(full.data.splitSeed, 11);
      assert.equal(full.tracking.experiment, 'consolidation-study');
    });

    it('merges stages.default under each stage, then the schema defaults', () => {
      const { stages } = loadPipelineFile(path.join(GOOD, 'full.yaml')).spec;
      assert.deepEqual(Object.keys(stages), [
        'teachers', 'zoo', 'weightformer', 'generate', 'finetune', 'baselines', 'evaluate', 'track',
      ]);
      assert.deepEqual(stages.teachers, {
        retry: { maximumAttempts: 5, initialInterval: '500ms', backoffCoefficient: 1.5, maximumInterval: '30s' },
        startToCloseTimeout: '1.5h', heartbeatTimeout: '1m', scheduleToStartTimeout: '10m', resources: { gpu: true },
      });
      assert.deepEqual(stages.track.retry, {
        maximumAttempts: 1, initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '30s',
      });
      assert.deepEqual(stages.zoo, {
        ...STAGE_DEFAULTS, heartbeatTimeout: '1m',
        retry: { ...STAGE_DEFAULTS.retry, maximumAttempts: 5, initialInterval: '500ms' },
      });
    });

    it('resolves aliases like the values they point at', () => {
      const { spec } = loadPipelineFile(path.join(GOOD, 'anchors.yaml'));
      assert.deepEqual(spec.zoo.train, { epochs: 1, batchSize: 128, learningRate: 0.001, checkpointEvery: 20 });
      assert.deepEqual(spec.stages.finetune.resources, { gpu: true });
      assert.deepEqual(spec.stages.generate.resources, { gpu: false });
    });

    it('is idempotent', () => {
      for (const file of yamlFiles(GOOD)) {
        const { spec } = loadPipelineFile(file);
        assert.deepEqual(applyDefaults(spec as unknown as RawPipeline), spec, file);
      }
    });
  });

  describe('hash', () => {
    const hashOf = (text: string): string => loadPipelineText(text, 'h.yaml').hash;

    it('ignores key order, comments and YAML style', () => {
      assert.equal(loadPipelineFile(path.join(GOOD, 'reordered.yaml')).hash, loadPipelineFile(path.join(GOOD, 'full.yaml')).hash);
      const a = hashOf('version: 1\nname: h\nteachers:\n  count: 3\n  train: {epochs: 2}\n');
      assert.equal(hashOf('# a comment\nteachers: {train: {epochs: 2}, count: 3}  # another\nname: "h"\nversion: 1\n'), a);
    });

    it('does not depend on whether a default is written out', () => {
      assert.equal(hashOf('version: 1\nname: h\n'), hashOf('version: 1\nname: h\nseed: 0\nteachers: {count: 4}\n'));
    });

    it('changes when a value changes', () => {
      const base = hashOf('version: 1\nname: h\nteachers: {count: 3}\n');
      assert.notEqual(hashOf('version: 1\nname: h\nteachers: {count: 5}\n'), base);
      assert.notEqual(hashOf('version: 1\nname: h2\nteachers: {count: 3}\n'), base);
      assert.notEqual(hashOf('version: 1\nname: h\nteachers: {count: 3}\nstages: {track: {resources: {gpu: true}}}\n'), base);
    });

    it('is the sha256 of the canonical JSON (sorted keys)', () => {
      assert.equal(canonicalJson({ b: 1, a: [{ d: true, c: null }, 'x'] }), '{"a":[{"c":null,"d":true},"x"],"b":1}');
      assert.equal(specHash({ a: 1 }), '015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862');
    });
  });

  describe('matrix', () => {
    it('expands the cartesian product in a deterministic order (sorted keys, last varies fastest)', () => {
      const { spec } = loadPipelineFile(path.join(GOOD, 'matrix.yaml'));
      const cells = expandMatrix(spec);
      assert.deepEqual(cells.map((c) => c.cell), [
        { 'finetune.kdWeight': 0, 'teachers.count': 2 },
        { 'finetune.kdWeight': 0, 'teachers.count': 4 },
        { 'finetune.kdWeight': 0, 'teachers.count': 8 },
        { 'finetune.kdWeight': 0.5, 'teachers.count': 2 },
        { 'finetune.kdWeight': 0.5, 'teachers.count': 4 },
        { 'finetune.kdWeight': 0.5, 'teachers.count': 8 },
      ]);
      for (const c of cells) {
        assert.deepEqual(c.spec.matrix, {});
        assert.equal(c.spec.finetune.kdWeight, c.cell['finetune.kdWeight']);
        assert.equal(c.spec.teachers.count, c.cell['teachers.count']);
        assert.equal(c.hash, specHash(c.spec));
        assert.deepEqual(schemaErrors(c.spec), []);
      }
      assert.equal(new Set(cells.map((c) => c.hash)).size, 6);
      // The same with the matrix keys written the other way round, and on a copy of the spec.
      const swapped = loadPipelineText(
        'version: 1\nname: sweep\nteachers: {count: 2}\nmatrix:\n  finetune.kdWeight: [0, 0.5]\n  teachers.count: [2, 4, 8]\n',
        'swapped.yaml',
      );
      assert.deepEqual(expandMatrix(swapped.spec).map((c) => c.hash), cells.map((c) => c.hash));
      assert.deepEqual(expandMatrix(structuredClone(spec)).map((c) => c.hash), cells.map((c) => c.hash));
    });

    it('gives one cell for a spec without a matrix', () => {
      const { spec, hash } = loadPipelineFile(path.join(GOOD, 'minimal.yaml'));
      const cells = expandMatrix(spec);
      assert.equal(cells.length, 1);
      assert.deepEqual(cells[0]!.cell, {});
      assert.deepEqual(cells[0]!.spec, spec);
      assert.equal(cells[0]!.hash, hash);
    });

    it('keeps derived defaults of the file (a seed sweep keeps the split)', () => {
      const { spec } = loadPipelineText('version: 1\nname: seeds\nseed: 3\nmatrix: {seed: [1, 2]}\n', 'seeds.yaml');
      assert.deepEqual(expandMatrix(spec).map((c) => [c.spec.seed, c.spec.data.splitSeed]), [[1, 3], [2, 3]]);
    });

    it('rejects a bad path of a spec built in code, without a file position', () => {
      const spec = structuredClone(loadPipelineFile(path.join(GOOD, 'minimal.yaml')).spec);
      spec.matrix = { 'teachers.cuont': [1, 2] };
      assert.deepEqual(lines(specError(() => expandMatrix(spec))), [
        "<pipeline minimal>:1:1: /matrix/teachers.cuont: unknown field 'teachers.cuont', did you mean 'teachers.count'?",
      ]);
    });
  });

  describe('invalid files', () => {
    const EXPECTED: Record<string, string[]> = {
      'alias-bomb.yaml': [
        'alias-bomb.yaml:5:8: /d/0/0: more than 100 alias expansions: aliases are limited to guard against exponential expansion ("billion laughs")',
      ],
      'comments-only.yaml': ["comments-only.yaml:1:1: /: the file is empty: a pipeline needs at least 'version: 1' and 'name'"],
      'complex-key.yaml': ['complex-key.yaml:3:3: /: mapping keys must be plain strings'],
      'cross-field.yaml': [
        "cross-field.yaml:4:14: /architecture/inputSize: must be 784 (28 × 28 pixels) for data.source 'mnist-embedded' (got 100)",
        "cross-field.yaml:6:11: /generate/method: 'weightformer' needs weightformer.mode 'train' or 'reuse' (got 'none')",
      ],
      'data-budget.yaml': [
        'data-budget.yaml:5:1: /data: the data split needs 11200 digits but the embedded MNIST has 10000: (ensembleIndex 0 + 1) × 12 teachers × 600 shardSize + 1000 consolidationSize + 1000 validationSize + 2000 testSize',
      ],
      'deep-block.yaml': [`deep-block.yaml:5:129: /matrix/seed${'/0'.repeat(62)}: nesting is deeper than 64 levels`],
      'deep-flow.yaml': [`deep-flow.yaml:3:72: /matrix${'/0'.repeat(63)}: nesting is deeper than 64 levels`],
      'deep-indent.yaml': [
        `deep-indent.yaml:67:129: /matrix/${Array.from({ length: 63 }, (_, i) => `k${i}`).join('/')}: nesting is deeper than 64 levels`,
      ],
      'duplicate-key.yaml': ["duplicate-key.yaml:5:3: /teachers/count: duplicate key 'count'"],
      'empty.yaml': ["empty.yaml:1:1: /: the file is empty: a pipeline needs at least 'version: 1' and 'name'"],
      'long-string.yaml': ['long-string.yaml:2:7: /name: string is too long: 2000 characters (at most 1024)'],
      'matrix-bad-cell.yaml': [
        'matrix-bad-cell.yaml:4:31: /matrix/finetune.kdWeight/2: must be ≤ 1 (got 2)',
        'matrix-bad-cell.yaml:5:23: /matrix/teachers.count/1: in the matrix cell {teachers.count: 16}: /data: the data split needs 12000 digits but the embedded MNIST has 10000: (ensembleIndex 0 + 1) × 16 teachers × 500 shardSize + 1000 consolidationSize + 1000 validationSize + 2000 testSize',
      ],
      'matrix-bad-keys.yaml': [
        "matrix-bad-keys.yaml:4:3: /matrix/name: the matrix cannot vary 'name'",
        "matrix-bad-keys.yaml:5:3: /matrix/teachers count: matrix key 'teachers count' must be a dotted path of field names, e.g. teachers.count",
        'matrix-bad-keys.yaml:6:3: /matrix/seed: must have at least 1 item (got 0)',
        'matrix-bad-keys.yaml:7:18: /matrix/zoo.count/1: 1 is listed more than once',
      ],
      'matrix-bad-path.yaml': [
        "matrix-bad-path.yaml:4:3: /matrix/teachers.cuont: unknown field 'teachers.cuont', did you mean 'teachers.count'?",
      ],
      'matrix-too-many-cells.yaml': [
        'matrix-too-many-cells.yaml:3:1: /matrix: the matrix has 320 cells (5 × 8 × 8); at most 256 are allowed',
      ],
      'merge-key.yaml': ["merge-key.yaml:7:5: /teachers/train/<<: YAML merge keys ('<<') are not supported: write the keys out"],
      'missing-required.yaml': [
        "missing-required.yaml:2:1: /: missing required key 'name'",
        "missing-required.yaml:2:1: /: missing required key 'version'",
      ],
      'multi-document.yaml': [
        'multi-document.yaml:3:1: /: a pipeline file must hold exactly one YAML document (another one starts here)',
      ],
      'non-finite.yaml': ['non-finite.yaml:4:17: /finetune/learningRate: must be a finite number (got .inf)'],
      'non-utf8.yaml': ['non-utf8.yaml:3:6: /: the file is not valid UTF-8 (byte 0xe9)'],
      'nul-byte.yaml': ['nul-byte.yaml:2:10: /: NUL character (U+0000) is not allowed in a pipeline file'],
      'root-list.yaml': ['root-list.yaml:1:1: /: the document must be a mapping of pipeline settings (got a list)'],
      'root-scalar.yaml': [
        "root-scalar.yaml:1:1: /: the document must be a mapping of pipeline settings (got 'just a string')",
      ],
      'schema-errors.yaml': [
        'schema-errors.yaml:2:10: /version: must be 1 (got 2)',
        "schema-errors.yaml:3:7: /name: must be 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit (got 'Not A Valid Name')",
        'schema-errors.yaml:4:7: /seed: must be ≥ 0 (got -1)',
        'schema-errors.yaml:6:10: /teachers/count: must be ≥ 1 (got 0)',
        'schema-errors.yaml:8:13: /teachers/train/epochs: must be ≤ 1000 (got 1001)',
        'schema-errors.yaml:9:19: /teachers/train/learningRate: must be > 0 (got 0)',
        'schema-errors.yaml:11:3: /architecture/hidden: must have at most 8 items (got 9)',
        'schema-errors.yaml:11:16: /architecture/hidden/1: must be ≥ 1 (got 0)',
        'schema-errors.yaml:13:13: /finetune/kdWeight: must be ≤ 1 (got 1.5)',
        'schema-errors.yaml:14:16: /finetune/temperature: must be > 0 (got 0)',
        "schema-errors.yaml:15:12: /finetune/enabled: must be true or false (got 'yes')",
        "schema-errors.yaml:17:12: /compute/backend: must be one of: auto, webgpu, wasm, cpu, tensorflow (got 'gpu', did you mean 'cpu'?)",
        "schema-errors.yaml:19:33: /baselines/include/2: 'teachers' is listed more than once",
        "schema-errors.yaml:22:23: /stages/default/heartbeatTimeout: must be a duration such as 500ms, 30s, 10m or 2h (got '30 seconds')",
        'schema-errors.yaml:25:24: /stages/teachers/retry/maximumAttempts: must be ≥ 1 (got 0)',
        'schema-errors.yaml:26:1: /tracking: must be a mapping (got null)',
      ],
      'self-alias.yaml': ["self-alias.yaml:4:13: /matrix/seed/1: alias '*m' refers to a collection that contains it"],
      'syntax-indent.yaml': ['syntax-indent.yaml:5:1: /: invalid YAML: all mapping items must start at the same column'],
      'syntax-unclosed-flow.yaml': [
        'syntax-unclosed-flow.yaml:4:1: /: invalid YAML: flow map in block collection must be sufficiently indented and end with a }',
      ],
      'tab-indent.yaml': ['tab-indent.yaml:4:1: /: invalid YAML: tabs are not allowed as indentation'],
      'tag-custom.yaml': [
        "tag-custom.yaml:4:15: /tracking/experiment: tag '!secret' is not allowed: a pipeline file holds plain values only",
        "tag-custom.yaml:5:18: /tracking/registerModel: tag '!!binary' is not allowed: a pipeline file holds plain values only",
      ],
      'tag-js-function.yaml': [
        "tag-js-function.yaml:4:10: /teachers/count: tag '!!js/function' is not allowed: a pipeline file holds plain values only",
      ],
      'unknown-alias.yaml': [
        "unknown-alias.yaml:4:10: /teachers/count: unknown alias '*missing': the anchor '&missing' must be defined before it",
      ],
      'unknown-keys.yaml': [
        "unknown-keys.yaml:4:3: /teachers/cuont: unknown key 'cuont', did you mean 'count'?",
        "unknown-keys.yaml:6:5: /teachers/train/learning_rate: unknown key 'learning_rate', did you mean 'learningRate'?",
        "unknown-keys.yaml:9:3: /compute/foo: unknown key 'foo'; expected one of: backend",
        "unknown-keys.yaml:10:1: /Finetune: unknown key 'Finetune', did you mean 'finetune'?",
      ],
      'yaml11-bool.yaml': ["yaml11-bool.yaml:6:12: /finetune/enabled: must be true or false (got 'yes')"],
    };

    it('has an expectation for every bad fixture', () => {
      assert.deepEqual(yamlFiles(BAD).map((f) => path.basename(f)), Object.keys(EXPECTED).sort());
    });

    for (const [name, expected] of Object.entries(EXPECTED)) {
      it(`rejects ${name}`, () => {
        const file = path.join(BAD, name);
        const err = specError(() => loadPipelineFile(file));
        assert.deepEqual(lines(err), expected);
        for (const d of err.diagnostics) assert.equal(d.file, file);
        assert.equal(err.message, err.diagnostics.map(formatDiagnostic).join('\n'));
        assert.equal(err.name, 'SpecError');
      });
    }
  });

  describe('hostile input', () => {
    let tmp: string;
    before(() => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'spec-test-'));
    });
    after(() => fs.rmSync(tmp, { recursive: true, force: true }));

    const big = `version: 1\nname: big\n#${'x'.repeat(1024 * 1024)}\n`;

    it('refuses a file over 1 MiB before reading it', () => {
      const file = path.join(tmp, 'big.yaml');
      fs.writeFileSync(file, big);
      assert.deepEqual(lines(specError(() => loadPipelineFile(file))), [
        `big.yaml:1:1: /: file is too large: ${big.length} bytes (at most 1048576)`,
      ]);
    });

    it('refuses text over 1 MiB', () => {
      assert.deepEqual(lines(specError(() => loadPipelineText(big, 'big.yaml'))), [
        `big.yaml:1:1: /: file is too large: ${big.length} bytes (at most 1048576)`,
      ]);
    });

    it('refuses a megabyte of nesting before composing it (at the 129th level, no path)', () => {
      const flow = `version: 1\nname: deep\nmatrix: ${'['.repeat(500_000)}\n`;
      assert.deepEqual(lines(specError(() => loadPipelineText(flow, 'flow.yaml'))), [
        'flow.yaml:3:137: /: nesting is deeper than 64 levels',
      ]);
      const block = `version: 1\nname: deep\nmatrix:\n${'- '.repeat(500_000)}x\n`;
      assert.deepEqual(lines(specError(() => loadPipelineText(block, 'block.yaml'))), [
        'block.yaml:4:257: /: nesting is deeper than 64 levels',
      ]);
      let indented = 'version: 1\nname: deep\nmatrix:\n';
      for (let i = 1; i <= 1400; i++) indented += `${' '.repeat(i)}k:\n`;
      assert.deepEqual(lines(specError(() => loadPipelineText(indented, 'indent.yaml'))), [
        'indent.yaml:131:129: /: nesting is deeper than 64 levels',
      ]);
    });

    it('refuses more than 100000 tokens before composing them', () => {
      const docs = `version: 1\nname: docs\n${'---\n'.repeat(60_000)}`;
      assert.deepEqual(lines(specError(() => loadPipelineText(docs, 'docs.yaml'))), [
        'docs.yaml:49996:1: /: the document is too large: more than 100000 YAML tokens',
      ]);
    });

    it('reports at most 20 YAML errors, then how many more there were', () => {
      const err = specError(() => loadPipelineText(`version: 1\nname: tabs\n${'x:\n\ty: 1\n'.repeat(30)}`, 'many.yaml'));
      assert.equal(err.diagnostics.length, 21);
      assert.deepEqual(lines(err).slice(-2), [
        'many.yaml:42:1: /: invalid YAML: tabs are not allowed as indentation',
        'many.yaml:44:1: /: 10 more YAML errors not shown',
      ]);
    });

    it('refuses documents with more than 10000 keys and values', () => {
      let text = 'version: 1\nname: many\n';
      for (let i = 0; i < 6000; i++) text += `k${i}: ${i}\n`;
      assert.deepEqual(lines(specError(() => loadPipelineText(text, 'many.yaml'))), [
        'many.yaml:5001:1: /: the document is too large: more than 10000 keys and values',
      ]);
    });

    it('refuses control characters and unpaired surrogates in text', () => {
      assert.deepEqual(lines(specError(() => loadPipelineText('version: 1\nname: a\u0007b\n', 'c.yaml'))), [
        'c.yaml:2:8: /: control character U+0007 is not allowed in a pipeline file',
      ]);
      assert.deepEqual(lines(specError(() => loadPipelineText('version: 1\nname: "\ud800"\n', 's.yaml'))), [
        's.yaml:2:8: /: unpaired surrogate U+D800 is not allowed in a pipeline file',
      ]);
    });

    it('refuses __proto__ and other unknown keys without touching prototypes', () => {
      const err = specError(() => loadPipelineText('version: 1\nname: p\n__proto__: {polluted: true}\n', 'p.yaml'));
      assert.deepEqual(lines(err), [
        "p.yaml:3:1: /__proto__: unknown key '__proto__'; expected one of: version, name, seed, data, architecture, teachers, zoo, weightformer, generate, alignment, finetune, baselines, evaluate, tracking, compute, stages, matrix, trigger",
      ]);
      assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
    });

    it('reports a missing or unreadable file as a positioned error', () => {
      assert.deepEqual(lines(specError(() => loadPipelineFile(path.join(tmp, 'nope.yaml')))), ['nope.yaml:1:1: /: no such file']);
      assert.deepEqual(lines(specError(() => loadPipelineFile(tmp))), [`${path.basename(tmp)}:1:1: /: not a regular file`]);
    });

    it('accepts a UTF-8 byte order mark and CRLF line ends', () => {
      const { spec } = loadPipelineText('\ufeffversion: 1\r\nname: crlf\r\nseed: 2\r\n', 'crlf.yaml');
      assert.equal(spec.seed, 2);
      assert.deepEqual(lines(specError(() => loadPipelineText('\ufeffversion: 1\r\nname: crlf\r\nseed: x\r\n', 'crlf.yaml'))), [
        "crlf.yaml:3:7: /seed: must be an integer (got 'x')",
      ]);
    });
  });

  describe('validateFiles', () => {
    it('prints ok lines for valid files and diagnostics for the others', () => {
      const minimal = path.join(GOOD, 'minimal.yaml');
      const matrix = path.join(GOOD, 'matrix.yaml');
      const dup = path.join(BAD, 'duplicate-key.yaml');
      const missing = path.join(BAD, 'missing-required.yaml');
      const res = validateFiles([minimal, dup, matrix, missing]);
      assert.equal(res.ok, false);
      assert.deepEqual(res.output.split('\n'), [
        `${minimal}: ok (hash ${loadPipelineFile(minimal).hash.slice(0, 12)}…)`,
        `${dup}:5:3: /teachers/count: duplicate key 'count'`,
        `${matrix}: ok (hash ${loadPipelineFile(matrix).hash.slice(0, 12)}…, 6 matrix cells)`,
        `${missing}:2:1: /: missing required key 'name'`,
        `${missing}:2:1: /: missing required key 'version'`,
      ]);
      assert.equal(validateFiles([minimal, matrix]).ok, true);
    });
  });

  describe('architecture families', () => {
    /** `BASENAME:LINE:COL: PATH: MESSAGE` of every problem of a pipeline whose body follows version and name. */
    const problems = (body: string): string[] => lines(specError(() => loadPipelineText(`version: 1\nname: arch\n${body}\n`, 'arch.yaml')));
    const load = (body: string) => loadPipelineText(`version: 1\nname: arch\n${body}\n`, 'arch.yaml');
    const MLP_SETTINGS = '(mlp settings: inputSize, hidden, outputSize, activation)';
    const CNN_SETTINGS = '(cnn settings: inputShape, channels, kernelSize, batchNorm, pool, hidden, outputSize)';
    const VIT_SETTINGS = '(vit settings: inputShape, patchSize, dim, heads, depth, mlpRatio, outputSize)';

    it('lists the four families, mlp by default, and leaves the family settings without schema defaults', () => {
      const arch = PIPELINE_SCHEMA.properties!['architecture']!;
      assert.deepEqual(arch.properties!['family']!.enum, ['mlp', 'cnn', 'resnet', 'vit']);
      assert.equal(arch.properties!['family']!.default, 'mlp');
      for (const [key, sub] of Object.entries(arch.properties!)) {
        if (key !== 'family') assert.equal(sub.default, undefined, `architecture.${key} has a schema default`);
      }
      // Every setting of every family is a property of the schema (so the file can set it).
      for (const family of ['mlp', 'cnn', 'resnet', 'vit'] as const) {
        for (const key of architectureSettings(family)) assert.ok(arch.properties![key], `${family}: ${key} is not in the schema`);
      }
    });

    it('fills each family with its own defaults and no other family\'s settings', () => {
      const expected: Record<string, ModelArchitecture> = {
        mlp: { family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' },
        cnn: { family: 'cnn', inputShape: [28, 28, 1], channels: [16, 32], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [], outputSize: 10 },
        resnet: { family: 'resnet', inputShape: [28, 28, 1], width: 16, stages: 3, blocksPerStage: 1, kernelSize: 3, outputSize: 10 },
        vit: { family: 'vit', inputShape: [28, 28, 1], patchSize: 7, dim: 32, heads: 4, depth: 2, mlpRatio: 2, outputSize: 10 },
      };
      for (const [family, arch] of Object.entries(expected)) {
        const { spec } = load(`architecture: {family: ${family}}`);
        assert.deepEqual(spec.architecture, arch, family);
        assert.deepEqual(schemaErrors(spec), [], family);
        assert.deepEqual(applyDefaults(spec as unknown as RawPipeline), spec, `${family}: idempotent`);
        assert.deepEqual({ family, ...ARCHITECTURE_DEFAULTS[family as keyof typeof ARCHITECTURE_DEFAULTS] }, arch, `${family}: the table`);
      }
      assert.deepEqual(load('seed: 1').spec.architecture, expected['mlp']);
      // Written settings win; the rest still come from the family's row.
      assert.deepEqual(load('architecture: {family: cnn, channels: [8], hidden: [32]}').spec.architecture, {
        family: 'cnn', inputShape: [28, 28, 1], channels: [8], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [32], outputSize: 10,
      });
    });

    it('keeps the mlp architecture (and so the hash of mlp pipelines) as it was before families', () => {
      assert.equal(canonicalJson(load('seed: 1').spec.architecture), '{"activation":"relu","family":"mlp","hidden":[64],"inputSize":784,"outputSize":10}');
      assert.equal(load('seed: 1').hash, load('seed: 1\narchitecture: {family: mlp, inputSize: 784, hidden: [64], outputSize: 10, activation: relu}').hash);
      assert.notEqual(load('architecture: {family: cnn}').hash, load('architecture: {family: resnet}').hash);
    });

    it('loads the example pipeline of each family', () => {
      for (const family of ['cnn', 'resnet', 'vit']) {
        const { spec } = loadPipelineFile(path.join(PIPELINES, `${family}.yaml`));
        assert.equal(spec.architecture.family, family);
        assert.equal(spec.data.source, 'mnist-embedded');
      }
    });

    it('suggests the written family\'s settings for a misspelt key', () => {
      assert.deepEqual(problems('architecture:\n  family: cnn\n  chanels: [8]'), [
        "arch.yaml:5:3: /architecture/chanels: unknown key 'chanels', did you mean 'channels'?",
      ]);
      // inputSize (mlp) is as close as inputShape: the cnn's own setting wins.
      assert.deepEqual(problems('architecture:\n  family: cnn\n  inputSise: [28, 28, 1]'), [
        "arch.yaml:5:3: /architecture/inputSise: unknown key 'inputSise', did you mean 'inputShape'?",
      ]);
      assert.deepEqual(problems('architecture:\n  inputSise: 784'), [
        "arch.yaml:4:3: /architecture/inputSise: unknown key 'inputSise', did you mean 'inputSize'?",
      ]);
      assert.deepEqual(problems('architecture:\n  family: vit\n  mlpRatoi: 4\n  nonsense: 1'), [
        "arch.yaml:5:3: /architecture/mlpRatoi: unknown key 'mlpRatoi', did you mean 'mlpRatio'?",
        "arch.yaml:6:3: /architecture/nonsense: unknown key 'nonsense'; expected one of: family, inputShape, patchSize, dim, heads, depth, mlpRatio, outputSize",
      ]);
      // A close setting of another family is still suggested (the next message says whose it is).
      assert.deepEqual(problems('architecture:\n  chanels: [8]'), [
        "arch.yaml:4:3: /architecture/chanels: unknown key 'chanels', did you mean 'channels'?",
      ]);
      assert.deepEqual(problems('architecture: {family: cnns}'), [
        "arch.yaml:3:24: /architecture/family: must be one of: mlp, cnn, resnet, vit (got 'cnns', did you mean 'cnn'?)",
      ]);
    });

    it('refuses a setting of another family at its key', () => {
      assert.deepEqual(problems('architecture:\n  hidden: [32]\n  channels: [8, 16]'), [
        `arch.yaml:5:3: /architecture/channels: is a setting of the cnn family, not of mlp ${MLP_SETTINGS}`,
      ]);
      assert.deepEqual(problems('architecture:\n  family: cnn\n  inputSize: 784\n  activation: tanh\n  width: 8'), [
        `arch.yaml:5:3: /architecture/inputSize: is a setting of the mlp family, not of cnn ${CNN_SETTINGS}`,
        `arch.yaml:6:3: /architecture/activation: is a setting of the mlp family, not of cnn ${CNN_SETTINGS}`,
        `arch.yaml:7:3: /architecture/width: is a setting of the resnet family, not of cnn ${CNN_SETTINGS}`,
      ]);
      assert.deepEqual(problems('architecture:\n  family: vit\n  hidden: [64]\n  kernelSize: 3'), [
        `arch.yaml:5:3: /architecture/hidden: is a setting of the mlp and cnn families, not of vit ${VIT_SETTINGS}`,
        `arch.yaml:6:3: /architecture/kernelSize: is a setting of the cnn and resnet families, not of vit ${VIT_SETTINGS}`,
      ]);
      assert.deepEqual(problems('architecture:\n  inputShape: [28, 28, 1]'), [
        `arch.yaml:4:3: /architecture/inputShape: is a setting of the cnn, resnet and vit families, not of mlp ${MLP_SETTINGS}`,
      ]);
    });

    it('checks the family constraints the schema cannot express', () => {
      assert.deepEqual(problems('architecture: {hidden: []}'), [
        'arch.yaml:3:16: /architecture/hidden: must have at least 1 item for the mlp family (got 0)',
      ]);
      assert.deepEqual(problems('architecture:\n  family: cnn\n  kernelSize: 4'), [
        "arch.yaml:5:15: /architecture/kernelSize: must be odd: 'same' padding keeps the height and width through each conv (got 4)",
      ]);
      assert.deepEqual(problems('architecture:\n  family: resnet\n  kernelSize: 2'), [
        "arch.yaml:5:15: /architecture/kernelSize: must be odd: 'same' padding keeps the height and width through each conv (got 2)",
      ]);
      // 2×2 pools floor the size ('valid'): 28 → 14 → 7 → 3 → 1 fits four blocks, not five.
      assert.equal(load('architecture: {family: cnn, channels: [4, 4, 4, 4]}').spec.architecture.family, 'cnn');
      assert.deepEqual(problems('architecture:\n  family: cnn\n  channels: [4, 4, 4, 4, 4]'), [
        'arch.yaml:5:3: /architecture/channels: 5 conv blocks need an input of at least 32 × 32: each halves the height and width (2×2 pool), and 28 × 28 fits at most 4',
      ]);
      assert.equal(load('architecture: {family: resnet, stages: 5}').spec.architecture.family, 'resnet');
      assert.deepEqual(problems('architecture:\n  family: resnet\n  stages: 6'), [
        'arch.yaml:5:11: /architecture/stages: 6 stages need an input of at least 32 × 32: each stage after the first halves the height and width (2×2 max pool), and 28 × 28 fits at most 5',
      ]);
      assert.deepEqual(problems('architecture:\n  family: vit\n  patchSize: 5\n  dim: 30\n  heads: 4\n  mlpRatio: 1.25'), [
        'arch.yaml:5:14: /architecture/patchSize: must divide the input height and width (28 × 28 is not cut into 5 × 5 patches)',
        'arch.yaml:7:10: /architecture/heads: must divide architecture.dim (30 is not a multiple of 4)',
        "arch.yaml:8:13: /architecture/mlpRatio: mlpRatio × dim must be a whole number, the width of each block's MLP (got 1.25 × 30 = 37.5)",
      ]);
      // 1.3 × 30 is 39 up to rounding: accepted, as checkVitArchitecture accepts it.
      assert.equal(load('architecture: {family: vit, dim: 30, heads: 3, mlpRatio: 1.3}').spec.architecture.family, 'vit');
    });

    it('checks the input each data source fixes: inputShape for the image families', () => {
      assert.deepEqual(problems('architecture:\n  family: cnn\n  inputShape: [32, 32, 3]'), [
        "arch.yaml:5:3: /architecture/inputShape: must be [28, 28, 1] (28 × 28 pixels) for data.source 'mnist-embedded' (got [32, 32, 3])",
      ]);
      assert.deepEqual(problems('data: {source: mnist-idx, path: digits}\narchitecture:\n  family: resnet\n  inputShape: [28, 28, 3]'), [
        "arch.yaml:6:3: /architecture/inputShape: must be [28, 28, 1] (28 × 28 pixels) for data.source 'mnist-idx' (got [28, 28, 3])",
      ]);
      assert.deepEqual(problems('data: {source: cifar10, path: cifar}\narchitecture:\n  family: vit\n  patchSize: 8\n  outputSize: 100'), [
        "arch.yaml:3:16: /architecture/inputShape: must be [32, 32, 3] (32 × 32 × 3 pixels) for data.source 'cifar10' (got [28, 28, 1])",
        'arch.yaml:6:14: /architecture/patchSize: must divide the input height and width (28 × 28 is not cut into 8 × 8 patches)',
        "arch.yaml:7:15: /architecture/outputSize: must be 10 (one per class) for data.source 'cifar10' (got 100)",
      ]);
      assert.deepEqual(problems('data: {source: cifar100, path: cifar, cifar100Labels: coarse}\narchitecture:\n  family: cnn\n  inputShape: [32, 32, 3]'), [
        "arch.yaml:3:16: /architecture/outputSize: must be 20 (one per class) for data.source 'cifar100' with coarse labels (got 10)",
      ]);
      // The mlp is still checked on inputSize, and not for mnist-idx (the files carry their own size).
      assert.deepEqual(problems('data: {source: cifar10, path: cifar}\narchitecture: {hidden: [8]}'), [
        "arch.yaml:3:16: /architecture/inputSize: must be 3072 (32 × 32 × 3 pixels) for data.source 'cifar10' (got 784)",
      ]);
    });

    it('refuses WeightFormer settings only the mlp family supports', () => {
      assert.deepEqual(problems('architecture: {family: cnn}\nweightformer: {model: {probeTokens: true}}'), [
        "arch.yaml:4:37: /weightformer/model/probeTokens: probe tokens are defined only for the mlp family (architecture.family is 'cnn')",
      ]);
      assert.equal(load('weightformer: {model: {probeTokens: true}}').spec.weightformer.model.probeTokens, true);
    });

    it('sweeps a family setting but not the family', () => {
      const { spec } = load('architecture: {family: cnn}\nmatrix: {architecture.kernelSize: [3, 5]}');
      assert.deepEqual(expandMatrix(spec).map((c) => c.spec.architecture), [
        { ...ARCHITECTURE_DEFAULTS.cnn, family: 'cnn', kernelSize: 3 },
        { ...ARCHITECTURE_DEFAULTS.cnn, family: 'cnn', kernelSize: 5 },
      ]);
      assert.deepEqual(problems('architecture: {family: cnn}\nmatrix: {architecture.kernelSize: [3, 4]}'), [
        "arch.yaml:4:39: /matrix/architecture.kernelSize/1: must be odd: 'same' padding keeps the height and width through each conv (got 4)",
      ]);
      assert.deepEqual(problems('matrix: {architecture.family: [mlp, cnn]}'), [
        'arch.yaml:3:10: /matrix/architecture.family: the matrix cannot vary architecture.family: each family has its own settings (write one pipeline file per family)',
      ]);
    });
  });

  describe('did-you-mean', () => {
    it('suggests only close matches', () => {
      const keys = ['count', 'source', 'train'];
      assert.equal(suggest('cuont', keys), 'count');
      assert.equal(suggest('Count', keys), 'count');
      assert.equal(suggest('trian', keys), 'train');
      assert.equal(suggest('foo', keys), undefined);
      assert.equal(suggest('x', ['a', 'zoo']), undefined);
      assert.equal(suggest('batch_size', ['batchSize', 'epochs']), 'batchSize');
    });
  });
});
