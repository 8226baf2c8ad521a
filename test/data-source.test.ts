import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { loadPipelineFile } from '../src/spec/load';
import { pipelineSplit } from '../src/runner/data-source';
import { JOBS, type DatasetDescription, type JobContext } from '../src/runner/jobs';
import { InputError, SpecError } from '../src/util/errors';
import { cifarBatch, idxBytes, mnistImages, writeMnist } from './helpers/data-files';

const SMALL_SPLIT = 'shardSize: 20, consolidationSize: 30, validationSize: 20, testSize: 30';

describe('data sources: MNIST IDX and CIFAR folders named by a pipeline file', () => {
  let dir: string;
  let n = 0;
  /** Writes a pipeline file into the test folder and loads it. */
  const pipeline = (body: string): ReturnType<typeof loadPipelineFile> => {
    const file = path.join(dir, `p${++n}.yaml`);
    writeFileSync(file, `version: 1\nname: data-${n}\n${body}\n`);
    return loadPipelineFile(file);
  };
  const specErrorOf = (body: string): SpecError => {
    try {
      pipeline(body);
    } catch (e) {
      if (e instanceof SpecError) return e;
      throw e;
    }
    return assert.fail('the pipeline loaded');
  };

  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'data-source-'));
    mkdirSync(path.join(dir, 'digits'));
    // 150 train + 50 test digits; labels cycle through the 10 classes.
    writeMnist(path.join(dir, 'digits'), Array.from({ length: 150 }, (_, i) => i % 10), Array.from({ length: 50 }, (_, i) => (i * 3) % 10), true);
    mkdirSync(path.join(dir, 'small-digits'));
    const write = (name: string, bytes: Buffer): void => writeFileSync(path.join(dir, 'small-digits', name), bytes);
    write('train-images-idx3-ubyte', mnistImages(150, 14, 14));
    write('train-labels-idx1-ubyte', idxBytes([150], Array.from({ length: 150 }, (_, i) => i % 10)));
    write('t10k-images-idx3-ubyte', mnistImages(50, 14, 14));
    write('t10k-labels-idx1-ubyte', idxBytes([50], Array.from({ length: 50 }, (_, i) => i % 10)));
    const cifar = path.join(dir, 'cifar', 'cifar-10-batches-bin');
    mkdirSync(cifar, { recursive: true });
    let id = 0;
    const batch = (count: number): Buffer => cifarBatch(Array.from({ length: count }, () => ({ labels: [id % 10], id: id++ })));
    for (let b = 1; b <= 5; b++) writeFileSync(path.join(cifar, `data_batch_${b}.bin`), batch(30));
    writeFileSync(path.join(cifar, 'test_batch.bin'), batch(50));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('resolves data.path against the pipeline file and splits the IDX digits by seed', async () => {
    const { spec } = pipeline(`data: {source: mnist-idx, path: digits, ${SMALL_SPLIT}}\nteachers: {count: 2}`);
    assert.equal(spec.data.path, path.join(realpathSync(dir), 'digits'));
    const split = await pipelineSplit(spec);
    assert.deepEqual([split.test.n, split.validation.n, split.consolidation.n, split.shards.length, split.shards[0]!.n], [30, 20, 30, 2, 20]);
    assert.equal(split.teacherPool.n, 200 - 30 - 20 - 30);
    for (const v of split.test.x) assert.ok(v >= 0 && v <= 1);
    const again = await pipelineSplit(spec);
    assert.deepEqual(again.test.y, split.test.y);
  });

  it('logs where the data came from as the dataset inputs\' source', async () => {
    const { spec } = pipeline(`data: {source: mnist-idx, path: digits, ${SMALL_SPLIT}}\nteachers: {count: 2}`);
    const describe = JOBS['describeData'] as unknown as (input: { spec: typeof spec }, ctx: JobContext) => Promise<DatasetDescription[]>;
    const parts = await describe({ spec }, {} as JobContext);
    const test = parts.find((p) => p.name === 'mnist-idx/test');
    assert.ok(test, JSON.stringify(parts.map((p) => p.name)));
    assert.equal(test.examples, 30);
    assert.equal(test.sourceType, 'local');
    assert.deepEqual(test.source, { format: 'mnist-idx', path: spec.data.path, splitSeed: spec.data.splitSeed });
  });

  it('reads a CIFAR-10 folder (its cifar-10-batches-bin/ subfolder) as 32×32×3 channel-last rows', async () => {
    const { spec } = pipeline(`data: {source: cifar10, path: cifar, ${SMALL_SPLIT}}\narchitecture: {inputSize: 3072, hidden: [8]}\nteachers: {count: 2}`);
    const split = await pipelineSplit(spec);
    assert.equal(split.test.x.length, 30 * 3072);
    assert.equal(split.teacherPool.n, 200 - 80);
  });

  it('refuses a data.path outside the allowed roots, positioned in the file', () => {
    const error = specErrorOf(`data:\n  source: mnist-idx\n  path: ../../../../../etc\n`);
    assert.equal(error.diagnostics.length, 1);
    const d = error.diagnostics[0]!;
    assert.deepEqual([d.line, d.col, d.path], [5, 9, '/data/path']);
    assert.match(d.message, /outside the allowed roots.*WEIGHTFORMER_ALLOWED_ROOTS/);
  });

  it('asks for data.path on file sources and refuses it on the embedded MNIST', () => {
    assert.match(specErrorOf('data: {source: cifar10}\narchitecture: {inputSize: 3072}').message, /\/data: data.source 'cifar10' reads files: add data.path/);
    assert.match(specErrorOf('data: {path: digits}').message, /\/data\/path: is only read by file sources/);
  });

  it('checks the architecture against the shape a source fixes', () => {
    const message = specErrorOf('data: {source: cifar100, path: cifar, cifar100Labels: coarse}\narchitecture: {inputSize: 3072}').message;
    assert.match(message, /\/architecture\/outputSize: must be 20 \(one per class\) for data.source 'cifar100' with coarse labels \(got 10\)/);
    assert.match(specErrorOf('data: {source: cifar10, path: cifar}').message, /\/architecture\/inputSize: must be 3072 \(32 × 32 × 3 pixels\)/);
  });

  it('gives a clear non-retryable error for a missing folder and for images that do not fit the architecture', async () => {
    const missing = pipeline(`data: {source: mnist-idx, path: nowhere, ${SMALL_SPLIT}}`).spec;
    await assert.rejects(pipelineSplit(missing), (e: Error) => e instanceof InputError && /nowhere/.test(e.message));
    const small = pipeline(`data: {source: mnist-idx, path: small-digits, ${SMALL_SPLIT}}\nteachers: {count: 2}`).spec;
    await assert.rejects(pipelineSplit(small), (e: Error) => e instanceof InputError && /14 × 14 × 1 = 196 values, but architecture.inputSize is 784/.test(e.message));
  });

  it('refuses a split that needs more examples than the folder holds', async () => {
    const { spec } = pipeline('data: {source: mnist-idx, path: digits, shardSize: 100, consolidationSize: 30, validationSize: 20, testSize: 30}');
    await assert.rejects(pipelineSplit(spec), (e: Error) => e instanceof InputError && /needs 480 examples .* but the data has 200/.test(e.message));
  });
});
