import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { cifarBatch, cifarPixel, cifarRecord, idxBytes, mnistImages, mnistPixel, writeMnist } from './helpers/data-files';
import { applyTransform, augmentBatch, drawTransform } from '../src/ml/augment';
import { loadCifar10, loadCifar100, parseCifarBatch, CIFAR10_FORMAT } from '../src/ml/formats/cifar';
import { loadMnistIdx, parseIdx } from '../src/ml/formats/idx';
import { InputError } from '../src/util/errors';

/** Asserts `x` row `row` is CIFAR record `id` in HWC order, each value exactly byte / 255 in float32. */
function assertCifarRow(x: Float32Array, row: number, id: number): void {
  for (let h = 0; h < 32; h++) {
    for (let w = 0; w < 32; w++) {
      for (let c = 0; c < 3; c++) {
        const got = x[row * 3072 + (h * 32 + w) * 3 + c];
        if (got !== Math.fround(cifarPixel(id, c, h, w) / 255)) assert.fail(`row ${row} (h ${h}, w ${w}, c ${c}): got ${got}`);
      }
    }
  }
}

/** Asserts `fn` rejects with an InputError whose message names `file` and matches `pattern`. */
async function rejectsNaming(fn: () => Promise<unknown>, file: string, pattern: RegExp): Promise<void> {
  await assert.rejects(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    assert.ok(err.message.includes(file), `message does not name ${file}: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
}

describe('ml data formats', () => {
  let root = '';
  let dirCount = 0;
  const freshDir = (): string => {
    const dir = path.join(root, `case-${dirCount++}`);
    mkdirSync(dir);
    return dir;
  };
  before(() => {
    root = mkdtempSync(path.join(tmpdir(), 'wf-data-formats-'));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  describe('IDX / MNIST', () => {
    it('parseIdx reads big-endian dims and the bytes after the header', () => {
      const data = Array.from({ length: 2 * 3 * 4 }, (_, i) => i);
      const parsed = parseIdx(idxBytes([2, 3, 4], data), { ndims: 3 });
      assert.deepEqual(parsed.dims, [2, 3, 4]);
      assert.deepEqual(Array.from(parsed.data), data);
      // A dim above 255 needs more than the low byte: proves the big-endian read.
      const labels = Array.from({ length: 300 }, (_, i) => i % 10);
      const parsedLabels = parseIdx(idxBytes([300], labels));
      assert.deepEqual(parsedLabels.dims, [300]);
      assert.deepEqual(Array.from(parsedLabels.data), labels);
    });

    it('loads plain files: pixels byte/255 in file order, labels exact, inputShape [28,28,1]', async () => {
      const dir = freshDir();
      writeMnist(dir, [5, 0, 4], [7, 2], false);
      const train = await loadMnistIdx(dir, { split: 'train' });
      assert.deepEqual(train.inputShape, [28, 28, 1]);
      assert.equal(train.classes, 10);
      assert.equal(train.data.n, 3);
      assert.deepEqual(Array.from(train.data.y), [5, 0, 4]);
      assert.equal(train.data.x.length, 3 * 784);
      for (let i = 0; i < 3; i++) for (let p = 0; p < 784; p++) assert.equal(train.data.x[i * 784 + p], Math.fround(mnistPixel(i, p) / 255));
      const test = await loadMnistIdx(dir, { split: 'test' });
      assert.deepEqual(Array.from(test.data.y), [7, 2]);
      assert.equal(test.data.x[0], Math.fround(mnistPixel(100, 0) / 255));
      const all = await loadMnistIdx(dir, { split: 'all' });
      assert.equal(all.data.n, 5);
      assert.deepEqual(Array.from(all.data.y), [5, 0, 4, 7, 2]);
      assert.deepEqual(all.data.x.subarray(0, 3 * 784), train.data.x);
      assert.deepEqual(all.data.x.subarray(3 * 784), test.data.x);
      assert.ok(all.data.x.every((v) => v >= 0 && v <= 1));
    });

    it('loads gzipped files identically, and prefers the plain file when both exist', async () => {
      const plain = freshDir();
      const gz = freshDir();
      writeMnist(plain, [1, 2, 3], [4], false);
      writeMnist(gz, [1, 2, 3], [4], true);
      const fromPlain = await loadMnistIdx(plain, { split: 'all' });
      const fromGz = await loadMnistIdx(gz, { split: 'all' });
      assert.deepEqual(fromGz, fromPlain);
      // Now both names exist in `gz`, with different labels: the plain one must win.
      writeFileSync(path.join(gz, 'train-labels-idx1-ubyte'), idxBytes([3], [9, 9, 9]));
      writeFileSync(path.join(gz, 'train-images-idx3-ubyte'), mnistImages(3));
      assert.deepEqual(Array.from((await loadMnistIdx(gz, { split: 'train' })).data.y), [9, 9, 9]);
    });

    it('reports a missing directory, a missing file and a bad split as InputError', async () => {
      const missing = path.join(root, 'no-such-dir');
      await rejectsNaming(() => loadMnistIdx(missing, { split: 'train' }), missing, /not found/);
      const dir = freshDir();
      writeMnist(dir, [1], [2], true);
      rmSync(path.join(dir, 't10k-labels-idx1-ubyte.gz'));
      await rejectsNaming(() => loadMnistIdx(dir, { split: 'test' }), path.join(dir, 't10k-labels-idx1-ubyte'), /not found \(nor t10k-labels-idx1-ubyte\.gz\)/);
      await rejectsNaming(() => loadMnistIdx(dir, { split: 'valid' as 'train' }), dir, /split must be/);
    });

    it('reports each corruption as an InputError naming the file', async () => {
      const cases: Array<{ name: string; file: string; bytes: Buffer; pattern: RegExp }> = [
        {
          name: 'truncated images (gz)',
          file: 'train-images-idx3-ubyte.gz',
          bytes: gzipSync(mnistImages(2).subarray(0, 1234)),
          pattern: /: truncated: header says 2 images of 28×28 \(1584 bytes\), file has 1234$/,
        },
        {
          name: 'trailing bytes',
          file: 'train-images-idx3-ubyte',
          bytes: Buffer.concat([mnistImages(2), Buffer.alloc(5)]),
          pattern: /5 bytes of trailing data/,
        },
        { name: 'labels file as images', file: 'train-images-idx3-ubyte', bytes: idxBytes([2], [1, 2]), pattern: /bad magic 0x00000801.*expected 0x00000803/ },
        { name: 'not IDX', file: 'train-images-idx3-ubyte', bytes: Buffer.from('P5\n28 28\n255\n'), pattern: /bad magic 0x50350a32: not an IDX file/ },
        {
          name: 'float32 element type',
          file: 'train-images-idx3-ubyte',
          bytes: Buffer.from([0, 0, 0x0d, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]),
          pattern: /unsupported IDX element type 0x0d \(float32\)/,
        },
        { name: 'truncated header', file: 'train-images-idx3-ubyte', bytes: Buffer.from([0, 0, 8, 3, 0, 0]), pattern: /truncated: the header of 3 dims needs 16 bytes, file has 6/ },
        {
          name: 'huge dims (refused before allocating)',
          file: 'train-images-idx3-ubyte',
          bytes: idxBytes([0x100000, 0x400, 0x400], []),
          pattern: /header dims 1048576×1024×1024 exceed the 2147483648-byte limit/,
        },
        { name: 'label out of range', file: 'train-labels-idx1-ubyte', bytes: idxBytes([2], [3, 10]), pattern: /label 10 at index 1 is out of range 0\.\.9/ },
        { name: 'count mismatch', file: 'train-labels-idx1-ubyte', bytes: idxBytes([3], [1, 2, 3]), pattern: /3 labels, but .*train-images-idx3-ubyte has 2 images/ },
        { name: 'no images', file: 'train-images-idx3-ubyte', bytes: idxBytes([0, 28, 28], []), pattern: /holds no images/ },
        { name: 'gz name, not gzip', file: 'train-images-idx3-ubyte.gz', bytes: mnistImages(2), pattern: /bad gzip: the file does not start with the gzip magic/ },
        { name: 'corrupt gzip', file: 'train-images-idx3-ubyte.gz', bytes: Buffer.from([0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]), pattern: /bad gzip \(corrupt or truncated\)/ },
        { name: 'truncated gzip', file: 'train-labels-idx1-ubyte.gz', bytes: gzipSync(idxBytes([2], [1, 2])).subarray(0, 15), pattern: /bad gzip \(corrupt or truncated\): unexpected end of file/ },
      ];
      for (const c of cases) {
        const dir = freshDir();
        writeMnist(dir, [1, 2], [3], false);
        // The case's file replaces its plain-named counterpart, so it is the one that gets read.
        rmSync(path.join(dir, c.file.replace(/\.gz$/, '')));
        writeFileSync(path.join(dir, c.file), c.bytes);
        await rejectsNaming(() => loadMnistIdx(dir, { split: 'train' }), path.join(dir, c.file), c.pattern).catch((err: Error) => {
          throw new Error(`case "${c.name}": ${err.message}`);
        });
      }
    });

    it('parseIdx names its source and rejects gzip bytes with a hint', () => {
      assert.throws(
        () => parseIdx(gzipSync(idxBytes([1], [1])), { source: 'my.idx' }),
        (err: unknown) => err instanceof InputError && /^my\.idx: bad magic .*gzip-compressed/.test(err.message),
      );
      assert.throws(() => parseIdx(new Uint8Array(2), { source: 'tiny' }), /tiny: truncated: 2 bytes/);
    });
  });

  describe('CIFAR', () => {
    /** Writes CIFAR-10 batches: train batch k holds records with ids 10k, 10k+1; test holds id 99. */
    function writeCifar10(dir: string): void {
      for (let k = 1; k <= 5; k++) {
        writeFileSync(path.join(dir, `data_batch_${k}.bin`), cifarBatch([{ labels: [k], id: 10 * k }, { labels: [(k + 5) % 10], id: 10 * k + 1 }]));
      }
      writeFileSync(path.join(dir, 'test_batch.bin'), cifarBatch([{ labels: [9], id: 99 }]));
    }
    const trainIds = [10, 11, 20, 21, 30, 31, 40, 41, 50, 51];
    const trainLabels = [1, 6, 2, 7, 3, 8, 4, 9, 5, 0];

    it('loads CIFAR-10 batches in order, CHW records transposed to HWC, byte/255', async () => {
      const dir = freshDir();
      writeCifar10(dir);
      const train = await loadCifar10(dir, { split: 'train' });
      assert.deepEqual(train.inputShape, [32, 32, 3]);
      assert.equal(train.classes, 10);
      assert.equal(train.data.n, 10);
      assert.equal(train.data.x.length, 10 * 3072);
      assert.deepEqual(Array.from(train.data.y), trainLabels);
      trainIds.forEach((id, row) => assertCifarRow(train.data.x, row, id));
      const test = await loadCifar10(dir, { split: 'test' });
      assert.deepEqual(Array.from(test.data.y), [9]);
      assertCifarRow(test.data.x, 0, 99);
      const all = await loadCifar10(dir, { split: 'all' });
      assert.deepEqual(Array.from(all.data.y), [...trainLabels, 9]);
      assertCifarRow(all.data.x, 10, 99);
      // Spot check of the layout by hand: record 10, pixel (h 1, w 2), green = byte at 1024 + 1·32 + 2.
      assert.equal(train.data.x[(1 * 32 + 2) * 3 + 1], Math.fround(((10 * 53 + 101 + 7 + 6) % 256) / 255));
    });

    it('accepts the cifar-10-batches-bin/ layout', async () => {
      const dir = freshDir();
      mkdirSync(path.join(dir, 'cifar-10-batches-bin'));
      writeCifar10(path.join(dir, 'cifar-10-batches-bin'));
      const test = await loadCifar10(dir, { split: 'test' });
      assert.deepEqual(Array.from(test.data.y), [9]);
      assertCifarRow(test.data.x, 0, 99);
    });

    it('loads CIFAR-100 with fine labels by default and coarse on request', async () => {
      const dir = freshDir();
      writeFileSync(path.join(dir, 'train.bin'), cifarBatch([{ labels: [19, 99], id: 1 }, { labels: [0, 42], id: 2 }]));
      writeFileSync(path.join(dir, 'test.bin'), cifarBatch([{ labels: [7, 3], id: 3 }]));
      const fine = await loadCifar100(dir, { split: 'train' });
      assert.equal(fine.classes, 100);
      assert.deepEqual(fine.inputShape, [32, 32, 3]);
      assert.deepEqual(Array.from(fine.data.y), [99, 42]);
      assertCifarRow(fine.data.x, 0, 1);
      assertCifarRow(fine.data.x, 1, 2);
      const coarse = await loadCifar100(dir, { split: 'all', label: 'coarse' });
      assert.equal(coarse.classes, 20);
      assert.deepEqual(Array.from(coarse.data.y), [19, 0, 7]);
      assertCifarRow(coarse.data.x, 2, 3);
      // The binary tarball's own folder name is accepted too.
      const nested = freshDir();
      mkdirSync(path.join(nested, 'cifar-100-binary'));
      writeFileSync(path.join(nested, 'cifar-100-binary', 'test.bin'), cifarBatch([{ labels: [7, 3], id: 3 }]));
      assert.deepEqual(Array.from((await loadCifar100(nested, { split: 'test' })).data.y), [3]);
    });

    it('parseCifarBatch decodes one batch in memory', () => {
      const ds = parseCifarBatch(cifarBatch([{ labels: [4], id: 5 }]), CIFAR10_FORMAT);
      assert.equal(ds.n, 1);
      assert.deepEqual(Array.from(ds.y), [4]);
      assertCifarRow(ds.x, 0, 5);
    });

    it('reports missing and corrupt batches as InputError naming the file', async () => {
      const missingDir = path.join(root, 'no-cifar-here');
      await rejectsNaming(() => loadCifar10(missingDir, { split: 'train' }), missingDir, /data directory not found/);

      const empty = freshDir();
      await rejectsNaming(() => loadCifar10(empty, { split: 'train' }), path.join(empty, 'cifar-10-batches-bin', 'data_batch_1.bin'), /no CIFAR-10 data: neither/);

      const gap = freshDir();
      writeCifar10(gap);
      rmSync(path.join(gap, 'data_batch_3.bin'));
      await rejectsNaming(() => loadCifar10(gap, { split: 'train' }), path.join(gap, 'data_batch_3.bin'), /not found/);

      const truncated = freshDir();
      writeCifar10(truncated);
      const batch4 = path.join(truncated, 'data_batch_4.bin');
      writeFileSync(batch4, cifarBatch([{ labels: [1], id: 1 }, { labels: [2], id: 2 }]).subarray(0, 5000));
      await rejectsNaming(() => loadCifar10(truncated, { split: 'all' }), batch4, /truncated or corrupt: 5000 bytes is not a whole number of 3073-byte records \(1 records \+ 1927 bytes\)/);
      writeFileSync(batch4, Buffer.alloc(0));
      await rejectsNaming(() => loadCifar10(truncated, { split: 'train' }), batch4, /empty file/);
      writeFileSync(batch4, cifarBatch([{ labels: [1], id: 1 }, { labels: [10], id: 2 }]));
      await rejectsNaming(() => loadCifar10(truncated, { split: 'train' }), batch4, /label 10 in record 1 is out of range 0\.\.9/);
      // A CIFAR-100 file read as CIFAR-10 is misaligned: 3074-byte records do not tile 3073-byte ones.
      writeFileSync(batch4, cifarBatch([{ labels: [1, 2], id: 1 }]));
      await rejectsNaming(() => loadCifar10(truncated, { split: 'train' }), batch4, /not a whole number of 3073-byte records/);

      const c100 = freshDir();
      const trainBin = path.join(c100, 'train.bin');
      writeFileSync(trainBin, cifarBatch([{ labels: [3, 100], id: 1 }]));
      await rejectsNaming(() => loadCifar100(c100, { split: 'train', label: 'coarse' }), trainBin, /label 100 in record 0 is out of range 0\.\.99 \(fine label\)/);
      writeFileSync(trainBin, cifarBatch([{ labels: [20, 1], id: 1 }]));
      await rejectsNaming(() => loadCifar100(c100, { split: 'train' }), trainBin, /label 20 in record 0 is out of range 0\.\.19 \(coarse label\)/);
      await rejectsNaming(() => loadCifar100(c100, { split: 'test' }), path.join(c100, 'test.bin'), /no CIFAR-100 data/);
    });
  });

  describe('augmentation', () => {
    const shape: [number, number, number] = [8, 6, 3];
    const size = 8 * 6 * 3;
    const batch = (n: number): Float32Array => Float32Array.from({ length: n * size }, (_, i) => (i % 251) / 251 + 0.001);
    const indices = Array.from({ length: 16 }, (_, i) => 100 + i);
    const options = { flip: true, cropPadding: 2 };

    it('is deterministic in (seed, epoch, index) and changes with each', () => {
      const x = batch(16);
      const a = augmentBatch(x, shape, 16, options, 7, 3, indices);
      assert.deepEqual(augmentBatch(x, shape, 16, options, 7, 3, indices), a);
      assert.notDeepEqual(augmentBatch(x, shape, 16, options, 8, 3, indices), a);
      assert.notDeepEqual(augmentBatch(x, shape, 16, options, 7, 4, indices), a);
      assert.deepEqual(x, batch(16), 'the input is not modified');
      // Example 105 gets the same transform whether it sits in row 5 of a batch or alone.
      const alone = augmentBatch(x.slice(5 * size, 6 * size), shape, 1, options, 7, 3, [105]);
      assert.deepEqual(alone, a.subarray(5 * size, 6 * size));
    });

    it('draws both flips and every shift in -p..p, and flip off leaves the crops unchanged', () => {
      const draws = Array.from({ length: 400 }, (_, i) => drawTransform(options, 1, 0, i));
      const flips = draws.filter((t) => t.flip).length;
      assert.ok(flips > 150 && flips < 250, `flips ${flips} / 400`);
      assert.deepEqual([...new Set(draws.map((t) => t.shiftY))].sort((a, b) => a - b), [-2, -1, 0, 1, 2]);
      assert.deepEqual([...new Set(draws.map((t) => t.shiftX))].sort((a, b) => a - b), [-2, -1, 0, 1, 2]);
      const noFlip = Array.from({ length: 400 }, (_, i) => drawTransform({ flip: false, cropPadding: 2 }, 1, 0, i));
      assert.ok(noFlip.every((t, i) => !t.flip && t.shiftY === draws[i]?.shiftY && t.shiftX === draws[i]?.shiftX));
    });

    it('is the identity with no flip and padding 0; flipping twice is the identity', () => {
      const x = batch(16);
      const same = augmentBatch(x, shape, 16, { flip: false, cropPadding: 0 }, 7, 0, indices);
      assert.deepEqual(same, x);
      assert.notEqual(same, x, 'a new array');
      const once = augmentBatch(x, shape, 16, { flip: true, cropPadding: 0 }, 7, 0, indices);
      assert.notDeepEqual(once, x, 'some of 16 examples were flipped');
      assert.deepEqual(augmentBatch(once, shape, 16, { flip: true, cropPadding: 0 }, 7, 0, indices), x);
      const image = x.slice(0, size);
      const mirror = { flip: true, shiftY: 0, shiftX: 0 };
      assert.deepEqual(applyTransform(applyTransform(image, shape, mirror), shape, mirror), image);
    });

    it('flips and shifts pixels as expected on a hand-made image, keeping channels together', () => {
      // 3×3 image, 2 channels: channel 0 = 1..9 row-major, channel 1 = ten times that.
      const image = Float32Array.from({ length: 18 }, (_, i) => (Math.floor(i / 2) + 1) * (i % 2 === 0 ? 1 : 10));
      const channel = (img: Float32Array, c: number): number[] => Array.from(img).filter((_, i) => i % 2 === c);
      // Crop window one row down and one column left of centre: content moves up one row, right one column.
      const shifted = applyTransform(image, [3, 3, 2], { flip: false, shiftY: 1, shiftX: -1 });
      assert.deepEqual(channel(shifted, 0), [0, 4, 5, 0, 7, 8, 0, 0, 0]);
      assert.deepEqual(channel(shifted, 1), [0, 40, 50, 0, 70, 80, 0, 0, 0]);
      const flipped = applyTransform(image, [3, 3, 2], { flip: true, shiftY: 0, shiftX: 0 });
      assert.deepEqual(channel(flipped, 0), [3, 2, 1, 6, 5, 4, 9, 8, 7]);
      assert.deepEqual(channel(flipped, 1), [30, 20, 10, 60, 50, 40, 90, 80, 70]);
      // Crop then flip: the cropped image above, mirrored.
      const both = applyTransform(image, [3, 3, 2], { flip: true, shiftY: 1, shiftX: -1 });
      assert.deepEqual(channel(both, 0), [5, 4, 0, 8, 7, 0, 0, 0, 0]);
    });

    it('rejects bad shapes and options as InputError', () => {
      const x = batch(2);
      assert.throws(() => augmentBatch(x, shape, 3, options, 1, 0, [0, 1, 2]), InputError);
      assert.throws(() => augmentBatch(x, shape, 2, options, 1, 0, [0]), InputError);
      assert.throws(() => augmentBatch(x, shape, 2, { flip: true, cropPadding: -1 }, 1, 0, [0, 1]), InputError);
      assert.throws(() => augmentBatch(x, [8, 6], 2, options, 1, 0, [0, 1]), InputError);
      assert.throws(() => augmentBatch(x, shape, 2, options, 1, 0.5, [0, 1]), InputError);
    });
  });
});
