import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../src/ml/backend';
import type { CnnArchitecture, CnnParams } from '../src/ml/cnn';
import { initCnn, predictCnnLogits, serializeCnnParams } from '../src/ml/cnn';
import type { Dataset } from '../src/ml/data';
import { fromTfjsCnnModel, readTfjsCnnModelDir, toTfjsCnnModel, writeTfjsCnnModelDir } from '../src/ml/formats/tfjs-cnn';
import {
  cnnFromStateDict,
  cnnToStateDict,
  FAMILY_METADATA_KEY,
  INPUT_SHAPE_METADATA_KEY,
  linearToTorch,
  POOL_METADATA_KEY,
  readSafetensorsCnn,
  serializeSafetensorsCnn,
  writeSafetensorsCnn,
} from '../src/ml/formats/torch-cnn';
import { readSafetensorsResnet, resnetFromStateDict, resnetToStateDict, serializeSafetensorsResnet, writeSafetensorsResnet } from '../src/ml/formats/torch-resnet';
import {
  HEADS_METADATA_KEY,
  LAYER_NORM_EPS_METADATA_KEY,
  PATCH_ORDER_METADATA_KEY,
  readSafetensorsVit,
  serializeSafetensorsVit,
  vitFromStateDict,
  vitToStateDict,
  writeSafetensorsVit,
} from '../src/ml/formats/torch-vit';
import type { ResnetArchitecture, ResnetParams } from '../src/ml/resnet';
import { initResnet, predictResnetLogits, resnetConvs, serializeResnetParams } from '../src/ml/resnet';
import { Rng } from '../src/ml/rng';
import type { Float32TensorInput, SafetensorsTensor } from '../src/ml/safetensors';
import { parseSafetensors, serializeSafetensors, tensorToFloat32 } from '../src/ml/safetensors';
import type { VitArchitecture, VitParams } from '../src/ml/vit';
import { initVit, predictVitLogits, serializeVitParams, vitParamArrays } from '../src/ml/vit';
import { InputError } from '../src/util/errors';

const FIXTURES = path.resolve(__dirname, '../../test/fixtures/safetensors/families');

type Arch = CnnArchitecture | ResnetArchitecture | VitArchitecture;
interface FixtureExpectation {
  architecture: Arch;
  metadata: Record<string, string>;
  tensors: Record<string, { dtype: string; shape: number[] }>;
  /** n × h × w × c: our dataset layout (the script transposes to NCHW for PyTorch's forward). */
  input: number[][][][];
  logits: number[][];
}
const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'expected.json'), 'utf8')) as { files: Record<string, FixtureExpectation> };
const fixtureBytes = (name: string): Uint8Array => new Uint8Array(fs.readFileSync(path.join(FIXTURES, name)));

const CNN_ARCH: CnnArchitecture = { family: 'cnn', inputShape: [11, 7, 2], channels: [3, 5], kernelSize: 3, batchNorm: true, pool: 'avg', hidden: [6], outputSize: 4 };
const RESNET_ARCH: ResnetArchitecture = { family: 'resnet', inputShape: [9, 7, 3], width: 4, stages: 3, blocksPerStage: 2, kernelSize: 3, outputSize: 5 };
const VIT_ARCH: VitArchitecture = { family: 'vit', inputShape: [8, 12, 2], patchSize: 4, dim: 12, heads: 3, depth: 2, mlpRatio: 2, outputSize: 3 };

/** Every value of `arrays` redrawn (BN variances positive), so no mapping error hides behind 0s and 1s. */
function scramble(arrays: Float32Array[], seed: number, variances: Set<Float32Array> = new Set()): void {
  const rng = new Rng(seed);
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) a[i] = variances.has(a) ? 0.5 + rng.nextFloat() : rng.normal(0, 0.5);
  }
}

function randomCnn(arch: CnnArchitecture, seed: number): CnnParams {
  const p = initCnn(arch, seed);
  const arrays: Float32Array[] = [];
  const variances = new Set<Float32Array>();
  for (const c of p.convs) {
    arrays.push(c.kernel, c.bias);
    if (c.bn) {
      arrays.push(c.bn.gamma, c.bn.beta, c.bn.runningMean, c.bn.runningVar);
      variances.add(c.bn.runningVar);
    }
  }
  for (const l of p.dense) arrays.push(l.w, l.b);
  scramble(arrays, seed + 1, variances);
  return p;
}

function randomResnet(arch: ResnetArchitecture, seed: number): ResnetParams {
  const p = initResnet(arch, seed);
  const arrays: Float32Array[] = [p.head.w, p.head.b];
  const variances = new Set<Float32Array>();
  for (const c of resnetConvs(p)) {
    arrays.push(c.kernel, c.bias, c.bn.gamma, c.bn.beta, c.bn.runningMean, c.bn.runningVar);
    variances.add(c.bn.runningVar);
  }
  scramble(arrays, seed + 1, variances);
  return p;
}

function randomVit(arch: VitArchitecture, seed: number): VitParams {
  const p = initVit(arch, seed);
  scramble(vitParamArrays(p), seed + 1);
  return p;
}

/** Parsed tensors of a state_dict (what a reader gets from a file). */
function parsed(tensors: Record<string, Float32TensorInput>, metadata?: Record<string, string>) {
  return parseSafetensors(serializeSafetensors(tensors, metadata));
}

/** A copy of `sd` with `edit` applied (entries may be replaced or deleted). */
function edited(sd: Record<string, Float32TensorInput>, edit: (sd: Record<string, Float32TensorInput>) => void): Record<string, Float32TensorInput> {
  const copy: Record<string, Float32TensorInput> = {};
  for (const [k, v] of Object.entries(sd)) copy[k] = { shape: [...v.shape], data: new Float32Array(v.data) };
  edit(copy);
  return copy;
}

function withValue(t: Float32TensorInput, index: number, value: number): Float32TensorInput {
  const data = new Float32Array(t.data);
  data[index] = value;
  return { shape: t.shape, data };
}

function rejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

function dataset(x: Float32Array, n: number): Dataset {
  return { x, y: new Int32Array(n), n };
}

function randomInputs(shape: [number, number, number], n: number, seed: number): Dataset {
  const rng = new Rng(seed);
  return dataset(Float32Array.from({ length: n * shape[0] * shape[1] * shape[2] }, () => rng.normal(0, 1)), n);
}

function close(got: ArrayLike<number>, want: ArrayLike<number>, tolerance: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    const g = got[i] ?? NaN;
    const w = want[i] ?? NaN;
    assert.ok(Math.abs(g - w) <= tolerance, `${what} ${i}: ${g} vs ${w}`);
  }
}

/** The tensors of a fixture as float32 state_dict inputs (num_batches_tracked dropped: not float). */
function floatTensors(tensors: SafetensorsTensor[]): Record<string, Float32TensorInput> {
  const out: Record<string, Float32TensorInput> = {};
  for (const t of tensors) if (t.dtype === 'F32') out[t.name] = { shape: t.shape, data: tensorToFloat32(t) };
  return out;
}

describe('PyTorch state_dicts of CNN, ResNet and ViT teachers', function () {
  before(async () => {
    await initBackend('cpu');
  });

  describe('files laid out as PyTorch / timm write them (test/fixtures/safetensors/families/make_fixtures.py)', () => {
    for (const [name, want] of Object.entries(expected.files)) {
      it(`${name}: read as written, our forward pass gives numpy's logits to 1e-4`, async () => {
        const file = path.join(FIXTURES, name);
        const st = parseSafetensors(fixtureBytes(name));
        assert.deepEqual(st.metadata, want.metadata);
        assert.deepEqual(Object.fromEntries(st.tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }])), want.tensors);
        const arch = want.architecture;
        // Files with the weightformer metadata need no architecture; the others take it from the caller.
        const selfDescribing = Object.keys(want.metadata).some((k) => k.startsWith('weightformer.'));
        const n = want.input.length;
        const ds = dataset(Float32Array.from(want.input.flat(3)), n);
        let logits: Float32Array;
        if (arch.family === 'cnn') {
          const p = await readSafetensorsCnn(file, selfDescribing ? undefined : arch);
          assert.deepEqual(await readSafetensorsCnn(file, arch), p);
          logits = await predictCnnLogits(p, ds);
        } else if (arch.family === 'resnet') {
          const p = await readSafetensorsResnet(file, selfDescribing ? undefined : arch);
          assert.deepEqual(await readSafetensorsResnet(file, arch), p);
          logits = await predictResnetLogits(p, ds);
        } else {
          const p = await readSafetensorsVit(file, selfDescribing ? undefined : arch);
          assert.deepEqual(await readSafetensorsVit(file, arch), p);
          logits = await predictVitLogits(p, ds);
        }
        close(logits, want.logits.flat(), 1e-4, `${name} logit`);
      });
    }

    it('our writer reproduces the PyTorch tensors of the fixtures, bit for bit', () => {
      // The BN CNN and the timm ViT have every tensor our writer writes (plus BN counters), at the same
      // indices and names: writing what we read must give back the same layout and values.
      const cnnFile = parseSafetensors(fixtureBytes('cnn-13x9x2-bn-avg.safetensors'));
      assert.deepEqual(cnnToStateDict(cnnFromStateDict(cnnFile)), floatTensors(cnnFile.tensors));
      const vitFile = parseSafetensors(fixtureBytes('vit-8x12x2.safetensors'));
      assert.deepEqual(vitToStateDict(vitFromStateDict(vitFile)), floatTensors(vitFile.tensors));
      // torchvision convs have no bias: ours writes zeros there, everything else as read.
      const resnetFile = parseSafetensors(fixtureBytes('resnet-8x6x2.safetensors'));
      const written = resnetToStateDict(resnetFromStateDict(resnetFile));
      for (const [k, v] of Object.entries(floatTensors(resnetFile.tensors))) assert.deepEqual(written[k], v, k);
      const extra = Object.keys(written).filter((k) => !(k in floatTensors(resnetFile.tensors)));
      assert.ok(extra.every((k) => /conv\d\.bias$/.test(k) && written[k]?.data.every((v) => v === 0)), extra.join(', '));
    });
  });

  describe('round trips, ours → state_dict → ours, bit for bit', () => {
    it('CNN (with and without BN, both pools), through a file', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-torch-cnn-'));
      try {
        for (const arch of [CNN_ARCH, { ...CNN_ARCH, batchNorm: false, pool: 'max' as const, hidden: [] }]) {
          const p = randomCnn(arch, 3);
          const back = cnnFromStateDict(parseSafetensors(serializeSafetensorsCnn(p)));
          assert.deepEqual(serializeCnnParams(back), serializeCnnParams(p));
          const file = path.join(dir, 'nested', 'teacher.safetensors');
          await writeSafetensorsCnn(file, p);
          assert.deepEqual(serializeCnnParams(await readSafetensorsCnn(file, arch)), serializeCnnParams(p));
          assert.deepEqual(fs.readdirSync(path.dirname(file)), ['teacher.safetensors'], 'no temporary file left');
        }
        const sd = cnnToStateDict(randomCnn(CNN_ARCH, 4));
        // nn.Sequential(Conv, BN, ReLU, AvgPool, Conv, BN, ReLU, AvgPool, Flatten, Linear, ReLU, Linear).
        assert.deepEqual(Object.keys(sd).map((k) => `${k}:${sd[k]?.shape.join('x')}`), [
          '0.weight:3x2x3x3', '0.bias:3', '1.weight:3', '1.bias:3', '1.running_mean:3', '1.running_var:3',
          '4.weight:5x3x3x3', '4.bias:5', '5.weight:5', '5.bias:5', '5.running_mean:5', '5.running_var:5',
          '9.weight:6x10', '9.bias:6', '11.weight:4x6', '11.bias:4',
        ]);
        const meta = parseSafetensors(serializeSafetensorsCnn(randomCnn(CNN_ARCH, 4))).metadata;
        assert.deepEqual(meta, { format: 'pt', [FAMILY_METADATA_KEY]: 'cnn', [INPUT_SHAPE_METADATA_KEY]: '[11,7,2]', [POOL_METADATA_KEY]: 'avg', 'weightformer.activation': 'relu' });
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('CNN: the first Linear is permuted CHW ↔ HWC (PyTorch flattens channels first)', () => {
      const p = randomCnn(CNN_ARCH, 5);
      const sd = cnnToStateDict(p);
      // The last map is 2×1×5 (11×7 pooled twice); our row (i·1 + j)·5 + c is PyTorch's column c·2 + i.
      const w = sd['9.weight']?.data ?? new Float32Array();
      for (const [c, i, o] of [[0, 0, 0], [4, 1, 5], [2, 1, 3]] as const) {
        assert.equal(w[o * 10 + c * 2 + i], p.dense[0]?.w[(i * 5 + c) * 6 + o]);
      }
      // Mapping PyTorch's order straight through, without the permutation, would change the function.
      assert.notDeepEqual(Array.from(w), Array.from(linearToTorch(p.dense[0]?.w ?? new Float32Array(), 10, 6)));
    });

    it('ResNet, through a file, under a DataParallel prefix too', async () => {
      const p = randomResnet(RESNET_ARCH, 6);
      assert.deepEqual(serializeResnetParams(resnetFromStateDict(parseSafetensors(serializeSafetensorsResnet(p)))), serializeResnetParams(p));
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-torch-resnet-'));
      try {
        const file = path.join(dir, 'r.safetensors');
        await writeSafetensorsResnet(file, p);
        assert.deepEqual(serializeResnetParams(await readSafetensorsResnet(file, RESNET_ARCH)), serializeResnetParams(p));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
      const sd = resnetToStateDict(p);
      assert.ok('layer3.1.bn2.running_var' in sd && 'fc.weight' in sd && 'conv1.weight' in sd && !('layer4.0.conv1.weight' in sd));
      const prefixed = Object.fromEntries(Object.entries(sd).map(([k, v]) => [`module.${k}`, v]));
      assert.deepEqual(serializeResnetParams(resnetFromStateDict(parsed(prefixed), RESNET_ARCH)), serializeResnetParams(p));
    });

    it('ViT, through a file; a Linear patch embedding in hwc or chw order reads the same', async () => {
      const p = randomVit(VIT_ARCH, 7);
      assert.deepEqual(serializeVitParams(vitFromStateDict(parseSafetensors(serializeSafetensorsVit(p)))), serializeVitParams(p));
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-torch-vit-'));
      try {
        const file = path.join(dir, 'v.safetensors');
        await writeSafetensorsVit(file, p);
        assert.deepEqual(serializeVitParams(await readSafetensorsVit(file, VIT_ARCH)), serializeVitParams(p));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
      const sd = vitToStateDict(p);
      assert.deepEqual(sd['patch_embed.proj.weight']?.shape, [12, 2, 4, 4]);
      assert.deepEqual(sd['pos_embed']?.shape, [1, 6, 12]);
      assert.deepEqual(sd['blocks.1.attn.qkv.weight']?.shape, [36, 12]);
      // The fused qkv: rows 12…23 are k, transposed.
      assert.equal(sd['blocks.0.attn.qkv.weight']?.data[(12 + 5) * 12 + 7], p.blocks[0]?.k.w[7 * 12 + 5]);
      const meta = { [HEADS_METADATA_KEY]: '3', [INPUT_SHAPE_METADATA_KEY]: '[8,12,2]' };
      // hwc: the patch flattened (row, column, channel), our own order: just a transposed Linear.
      const hwc = edited(sd, (s) => {
        s['patch_embed.proj.weight'] = { shape: [12, 32], data: linearToTorch(p.patchEmbed.w, 32, 12) };
      });
      assert.deepEqual(serializeVitParams(vitFromStateDict(parsed(hwc, meta))), serializeVitParams(p));
      // chw: the Conv2d weight reshaped to [dim, c·p·p] (F.unfold's order).
      const chw = edited(sd, (s) => {
        s['patch_embed.proj.weight'] = { shape: [12, 32], data: new Float32Array(sd['patch_embed.proj.weight']?.data ?? []) };
      });
      assert.deepEqual(serializeVitParams(vitFromStateDict(parsed(chw, { ...meta, [PATCH_ORDER_METADATA_KEY]: 'chw' }))), serializeVitParams(p));
      assert.notDeepEqual(serializeVitParams(vitFromStateDict(parsed(chw, meta))), serializeVitParams(p));
    });

    it('ViT: LayerScale is folded into proj / fc2 without changing the outputs', async () => {
      const p = randomVit(VIT_ARCH, 8);
      const rng = new Rng(9);
      const gamma = (): Float32TensorInput => ({ shape: [12], data: Float32Array.from({ length: 12 }, () => 0.5 + rng.nextFloat()) });
      const g1 = gamma();
      const g2 = gamma();
      const sd = edited(vitToStateDict(p), (s) => {
        s['blocks.1.ls1.gamma'] = g1;
        s['blocks.1.ls2.gamma'] = g2;
      });
      const folded = vitFromStateDict(parsed(sd), VIT_ARCH);
      const ds = randomInputs(VIT_ARCH.inputShape, 3, 10);
      // Reference: the same scaling applied to the output columns by hand.
      const scaled = randomVit(VIT_ARCH, 8);
      const b = scaled.blocks[1];
      assert.ok(b);
      for (const [layer, g] of [[b.proj, g1.data], [b.fc2, g2.data]] as const) {
        for (let i = 0; i < layer.w.length; i++) layer.w[i] = (layer.w[i] ?? 0) * (g[i % 12] ?? 0);
        for (let o = 0; o < 12; o++) layer.b[o] = (layer.b[o] ?? 0) * (g[o] ?? 0);
      }
      close(await predictVitLogits(folded, ds), await predictVitLogits(scaled, ds), 1e-6, 'logit');
      assert.notDeepEqual(Array.from(await predictVitLogits(folded, ds)), Array.from(await predictVitLogits(p, ds)));
    });
  });

  describe('refuses damaged or foreign state_dicts with an InputError naming the tensor', () => {
    const cnn = (): Record<string, Float32TensorInput> => cnnToStateDict(randomCnn(CNN_ARCH, 11));
    const cnnMeta = { [INPUT_SHAPE_METADATA_KEY]: '[11,7,2]', [POOL_METADATA_KEY]: 'avg' };
    const cnnCases: Array<[string, (s: Record<string, Float32TensorInput>) => void, RegExp, Record<string, string>?, CnnArchitecture?]> = [
      ['a missing running_var', (s) => delete s['5.running_var'], /tensor "5.running_var" is missing \(track_running_stats=False/],
      ['a missing first block (channels no longer chain)', (s) => { for (const k of Object.keys(s)) if (/^[01]\./.test(k)) delete s[k]; }, /"4.weight" has shape \[5, 3, 3, 3\]; expected \[cout, 2, 3, 3\] \(the input has 2 channels\)/],
      ['a BN without its conv', (s) => { delete s['0.weight']; delete s['0.bias']; }, /1 is a BatchNorm layer that does not follow a Conv2d/],
      ['a missing head', (s) => { delete s['9.weight']; delete s['9.bias']; delete s['11.weight']; delete s['11.bias']; }, /no Linear weights/],
      ['a missing weight beside its bias', (s) => delete s['11.weight'], /11.bias has no 11.weight/],
      ['a transposed Linear', (s) => { s['9.weight'] = { shape: [10, 6], data: s['9.weight']?.data ?? new Float32Array() }; }, /"9.weight" has shape \[10, 6\]; expected \[out, 10\] \(the flattened 5×2×1 map of the last block, for a 11×7×2 input\)/],
      ['a wrong BN length', (s) => { s['1.bias'] = { shape: [4], data: new Float32Array(4) }; }, /"1.bias" has shape \[4\]; expected \[3\]/],
      ['a non-square kernel', (s) => { s['0.weight'] = { shape: [3, 2, 3, 1], data: new Float32Array(18) }; }, /"0.weight" has shape \[3, 2, 3, 1\]; kernels are square/],
      ['a NaN kernel value', (s) => { s['4.weight'] = withValue(s['4.weight']!, 7, NaN); }, /"4.weight" holds the non-finite value NaN at flat index 7/],
      ['an infinite bias', (s) => { s['11.bias'] = withValue(s['11.bias']!, 2, -Infinity); }, /"11.bias" holds the non-finite value -Infinity at flat index 2/],
      ['a negative running variance', (s) => { s['1.running_var'] = withValue(s['1.running_var']!, 1, -0.5); }, /"1.running_var" holds the negative variance -0.5 at index 1/],
      ['BN on one block only', (s) => { for (const p of ['weight', 'bias', 'running_mean', 'running_var']) delete s[`5.${p}`]; }, /BatchNorm follows 1 of 2 convs/],
      ['a BN before any conv', (s) => { s['0.running_mean'] = { shape: [3], data: new Float32Array(3) }; }, /0 is a BatchNorm layer that does not follow a Conv2d/],
      ['a mixed prefix', (s) => { s['net.12.weight'] = { shape: [4, 4], data: new Float32Array(16) }; }, /different prefixes/],
      ['a LayerNorm parameter name', (s) => { s['9.gamma'] = { shape: [6], data: new Float32Array(6) }; }, /"9.gamma" is a "gamma" parameter/],
      ['the wrong input shape', () => {}, /"9.weight" has shape \[6, 10\]; expected \[out, 30\] \(the flattened 5×3×2 map of the last block, for a 13×8×2 input\)/, { [INPUT_SHAPE_METADATA_KEY]: '[13,8,2]' }],
      ['no input shape at all', () => {}, /input's height and width are not in a state_dict/, {}],
      ['a malformed input shape', () => {}, /weightformer.input_shape is "28x28"/, { [INPUT_SHAPE_METADATA_KEY]: '28x28' }],
      ['another family', () => {}, /weightformer.family is "resnet": the file holds a resnet model, not a cnn/, { ...cnnMeta, [FAMILY_METADATA_KEY]: 'resnet' }],
      ['another activation', () => {}, /weightformer.activation is "tanh"/, { ...cnnMeta, 'weightformer.activation': 'tanh' }],
      ['an unknown pool', () => {}, /weightformer.pool is "lp"/, { ...cnnMeta, [POOL_METADATA_KEY]: 'lp' }],
      ['the wrong architecture', () => {}, /parameters are cnn:11x7x2:c3-5:k3:bn:avg:h6:4 but the architecture is cnn:11x7x2:c3-5:k3:bn:avg:h7:4/, cnnMeta, { ...CNN_ARCH, hidden: [7] }],
      ['the wrong pooling for the architecture', () => {}, /bn:avg:h6:4 but the architecture is .*bn:max:h6:4/, cnnMeta, { ...CNN_ARCH, pool: 'max' }],
    ];
    for (const [what, edit, pattern, metadata, arch] of cnnCases) {
      it(`CNN: ${what}`, () => rejects(() => cnnFromStateDict(parsed(edited(cnn(), edit), metadata ?? cnnMeta), arch), pattern));
    }
    it('CNN: non-float weights, and an integer counter is fine but not a float one', () => {
      const st = parsed(cnn(), cnnMeta);
      const t0 = st.tensors.find((t) => t.name === '0.weight');
      assert.ok(t0);
      rejects(() => cnnFromStateDict({ ...st, tensors: st.tensors.map((t) => (t === t0 ? { ...t, dtype: 'I32' as const } : t)) }), /"0.weight" has dtype I32; weights are floating point/);
      const counter: SafetensorsTensor = { name: '1.num_batches_tracked', dtype: 'I64', shape: [], data: new Uint8Array(8) };
      assert.deepEqual(cnnFromStateDict({ ...st, tensors: [...st.tensors, counter] }), cnnFromStateDict(st));
      rejects(() => cnnFromStateDict({ ...st, tensors: [...st.tensors, { ...counter, dtype: 'F32', data: new Uint8Array(4) }] }), /"1.num_batches_tracked" has dtype F32 and shape \[\]; a BatchNorm counter is an integer scalar/);
    });

    const resnet = (): Record<string, Float32TensorInput> => resnetToStateDict(randomResnet(RESNET_ARCH, 12));
    const resnetMeta = { [INPUT_SHAPE_METADATA_KEY]: '[9,7,3]' };
    const resnetCases: Array<[string, (s: Record<string, Float32TensorInput>) => void, RegExp, Record<string, string>?, ResnetArchitecture?]> = [
      ['a missing BN statistic', (s) => delete s['layer2.1.bn2.running_mean'], /"layer2.1.bn2.running_mean" is missing/],
      ['a missing conv', (s) => delete s['layer3.0.conv1.weight'], /"layer3.0.conv1.weight" is missing/],
      ['a missing stem', (s) => delete s['conv1.weight'], /"conv1.weight" \(the stem conv\) is missing/],
      ['a missing head', (s) => { delete s['fc.weight']; }, /"fc.weight" \(the head\) is missing/],
      ['a wrong conv shape', (s) => { s['layer1.1.conv2.weight'] = { shape: [4, 4, 5, 5], data: new Float32Array(400) }; }, /"layer1.1.conv2.weight" has shape \[4, 4, 5, 5\]; expected \[4, 4, 3, 3\]/],
      ['a wrong fc width', (s) => { s['fc.weight'] = { shape: [5, 3], data: new Float32Array(15) }; }, /"fc.weight" has shape \[5, 3\]; expected \[5, 4\]/],
      ['a NaN', (s) => { s['layer2.0.bn1.weight'] = withValue(s['layer2.0.bn1.weight']!, 3, NaN); }, /"layer2.0.bn1.weight" holds the non-finite value NaN at flat index 3/],
      ['a negative variance', (s) => { s['bn1.running_var'] = withValue(s['bn1.running_var']!, 0, -1); }, /"bn1.running_var" holds the negative variance -1/],
      ['a skipped stage', (s) => { for (const k of Object.keys(s)) if (k.startsWith('layer2.')) delete s[k]; }, /layer1…layer2 but layer2 is missing|numbered layer1…layer2/],
      ['uneven stages', (s) => { for (const k of Object.keys(s)) if (k.startsWith('layer3.1.')) delete s[k]; }, /layer3 has 1 blocks but layer1 has 2/],
      ['a projection shortcut', (s) => { s['layer2.0.downsample.0.weight'] = { shape: [4, 4, 1, 1], data: new Float32Array(16) }; }, /"layer2.0.downsample.0.weight" is not a parameter of this model: projection shortcuts/],
      ['a bottleneck block', (s) => { s['layer1.0.conv3.weight'] = { shape: [4, 4, 1, 1], data: new Float32Array(16) }; }, /"layer1.0.conv3.weight" is not a parameter of this model: bottleneck blocks/],
      ['a stray tensor', (s) => { s['avgpool.weight'] = { shape: [1], data: new Float32Array(1) }; }, /"avgpool.weight" is not a parameter of this model/],
      ['a tensor outside the common prefix', (s) => {
        for (const k of Object.keys(s)) { s[`model.${k}`] = s[k]!; delete s[k]; }
        s.stray = { shape: [1], data: new Float32Array(1) };
      }, /tensors "stray" and "model\.(fc|conv1|bn1)\.[a-z_]+" have different prefixes/],
      ['a tensor of another prefix', (s) => { s['module.fc.bias'] = { shape: [5], data: new Float32Array(5) }; }, /"module.fc.bias" is not a parameter of this model/],
      ['the wrong input channels', () => {}, /"conv1.weight" takes 3 input channels but the input shape \[9,7,1\] has 1/, { [INPUT_SHAPE_METADATA_KEY]: '[9,7,1]' }],
      ['no input shape', () => {}, /input's height and width are not in a state_dict/, {}],
      ['a CNN file', () => {}, /the file holds a cnn model, not a resnet/, { ...resnetMeta, [FAMILY_METADATA_KEY]: 'cnn' }],
      ['the wrong architecture', () => {}, /parameters are resnet:9x7x3:w4:s3x2:k3:5 but the architecture is resnet:9x7x3:w4:s2x2:k3:5/, resnetMeta, { ...RESNET_ARCH, stages: 2 }],
    ];
    for (const [what, edit, pattern, metadata, arch] of resnetCases) {
      it(`ResNet: ${what}`, () => rejects(() => resnetFromStateDict(parsed(edited(resnet(), edit), metadata ?? resnetMeta), arch), pattern));
    }

    const vit = (): Record<string, Float32TensorInput> => vitToStateDict(randomVit(VIT_ARCH, 13));
    const vitMeta = { [INPUT_SHAPE_METADATA_KEY]: '[8,12,2]', [HEADS_METADATA_KEY]: '3' };
    const vitCases: Array<[string, (s: Record<string, Float32TensorInput>) => void, RegExp, Record<string, string>?, VitArchitecture?]> = [
      ['a missing qkv', (s) => delete s['blocks.1.attn.qkv.weight'], /"blocks.1.attn.qkv.weight" is missing/],
      ['a missing final norm', (s) => delete s['norm.bias'], /"norm.bias" is missing/],
      ['a missing patch embedding', (s) => delete s['patch_embed.proj.weight'], /"patch_embed.proj.weight" \(the patch embedding\) is missing/],
      ['a missing head', (s) => delete s['head.weight'], /"head.weight" \(the classifier\) is missing/],
      ['a split qkv', (s) => { s['blocks.0.attn.qkv.weight'] = { shape: [12, 12], data: new Float32Array(144) }; }, /"blocks.0.attn.qkv.weight" has shape \[12, 12\]; expected \[36, 12\]/],
      ['a wrong MLP width in one block', (s) => { s['blocks.1.mlp.fc1.weight'] = { shape: [20, 12], data: new Float32Array(240) }; }, /"blocks.1.mlp.fc1.weight" has shape \[20, 12\]; expected \[24, 12\]/],
      ['a pos_embed with a class token slot', (s) => { s.pos_embed = { shape: [1, 7, 12], data: new Float32Array(84) }; }, /"pos_embed" has shape \[1, 7, 12\]; a 8×12 input in 4×4 patches has 6 tokens/],
      ['a NaN', (s) => { s['blocks.0.mlp.fc2.bias'] = withValue(s['blocks.0.mlp.fc2.bias']!, 11, NaN); }, /"blocks.0.mlp.fc2.bias" holds the non-finite value NaN at flat index 11/],
      ['a class token', (s) => { s.cls_token = { shape: [1, 1, 12], data: new Float32Array(12) }; }, /"cls_token" is not a parameter of this model: this ViT mean-pools/],
      ['fc_norm', (s) => { s['fc_norm.weight'] = { shape: [12], data: new Float32Array(12) }; }, /"fc_norm.weight" is not a parameter of this model: a LayerNorm after pooling/],
      ['a skipped block', (s) => { for (const k of Object.keys(s)) if (k.startsWith('blocks.0.')) delete s[k]; }, /blocks are numbered 1; expected 0…0/],
      ['no heads', () => {}, /number of attention heads is not in a state_dict/, { [INPUT_SHAPE_METADATA_KEY]: '[8,12,2]' }],
      ['heads that do not divide the width', () => {}, /5 heads do not divide the width 12/, { ...vitMeta, [HEADS_METADATA_KEY]: '5' }],
      ['PyTorch\'s default LayerNorm eps', () => {}, /weightformer.layer_norm_eps is "1e-05"; our ViT's LayerNorm ε is 0.000001/, { ...vitMeta, [LAYER_NORM_EPS_METADATA_KEY]: '1e-05' }],
      ['patches that do not tile the input', () => {}, /cuts 4×4 patches, which do not tile the 10×12 input/, { ...vitMeta, [INPUT_SHAPE_METADATA_KEY]: '[10,12,2]' }],
      ['a non-square token grid without an input shape', () => {}, /input shape is not in this state_dict/, { [HEADS_METADATA_KEY]: '3' }],
      ['the wrong architecture', () => {}, /parameters are vit:8x12x2:p4:d12:h3:x2:m24:3 but the architecture is vit:8x12x2:p4:d12:h4:x2:m24:3/, vitMeta, { ...VIT_ARCH, heads: 4 }],
    ];
    for (const [what, edit, pattern, metadata, arch] of vitCases) {
      it(`ViT: ${what}`, () => rejects(() => vitFromStateDict(parsed(edited(vit(), edit), metadata ?? vitMeta), arch), pattern));
    }

    it('file-level failures name the file', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-torch-bad-'));
      try {
        const file = path.join(dir, 'bad.safetensors');
        fs.writeFileSync(file, serializeSafetensors(edited(resnet(), (s) => delete s['fc.bias']), resnetMeta));
        // A missing bias is a bias=False layer: zeros, not an error.
        assert.deepEqual(Array.from((await readSafetensorsResnet(file)).head.b), [0, 0, 0, 0, 0]);
        fs.writeFileSync(file, new Uint8Array([1, 2, 3]));
        await assert.rejects(readSafetensorsVit(file), (e: unknown) => e instanceof InputError && e.message.startsWith(file));
        await assert.rejects(readSafetensorsCnn(path.join(dir, 'missing.safetensors')), (e: unknown) => e instanceof InputError && /cannot read/.test(e.message));
        await assert.rejects(readSafetensorsResnet(dir), (e: unknown) => e instanceof InputError && /is not a file/.test(e.message));
        // A ViT read as a CNN: its names are not an nn.Sequential's.
        fs.writeFileSync(file, serializeSafetensorsVit(randomVit(VIT_ARCH, 1)));
        await assert.rejects(readSafetensorsCnn(file), (e: unknown) => e instanceof InputError && /the file holds a vit model, not a cnn/.test(e.message));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('TF.js layers format for CNNs', () => {
    /* eslint-disable @typescript-eslint/no-explicit-any */
    let core: any;
    let tfl: any;
    before(async () => {
      // @tensorflow/tfjs-layers is a dev dependency for this: the real loader is the judge of the format.
      const req = createRequire(require.resolve('@tensorflow/tfjs-layers'));
      core = req('@tensorflow/tfjs-core');
      tfl = req('@tensorflow/tfjs-layers');
      if (!core.getBackend()) {
        req('@tensorflow/tfjs-backend-cpu'); // a separate copy of tfjs-core without a backend yet
        await core.setBackend('cpu');
      }
    });
    const load = async (modelJson: any, weightsBin: Uint8Array): Promise<any> => {
      const weightData = weightsBin.buffer.slice(weightsBin.byteOffset, weightsBin.byteOffset + weightsBin.byteLength);
      const weightSpecs = modelJson.weightsManifest.flatMap((g: any) => g.weights);
      return tfl.loadLayersModel(core.io.fromMemory({ modelTopology: modelJson.modelTopology, weightSpecs, weightData }));
    };
    const predict = async (model: any, arch: CnnArchitecture, ds: Dataset): Promise<Float32Array> => {
      const x = core.tensor4d(ds.x, [ds.n, ...arch.inputShape]);
      const y = model.predict(x);
      const out = new Float32Array(await y.data());
      core.dispose([x, y]);
      return out;
    };
    const reread = (o: object): any => JSON.parse(JSON.stringify(o));
    const archs: CnnArchitecture[] = [
      CNN_ARCH,
      { ...CNN_ARCH, inputShape: [12, 10, 3], channels: [4], kernelSize: 5, batchNorm: false, pool: 'max', hidden: [] },
      { ...CNN_ARCH, batchNorm: true, pool: 'max', hidden: [8, 5] },
    ];

    for (const arch of archs) {
      it(`loads in tfjs-layers with our predictions (${arch.batchNorm ? 'BN' : 'no BN'}, ${arch.pool} pool, hidden [${arch.hidden.join(', ')}])`, async () => {
        const p = randomCnn(arch, 21);
        const ds = randomInputs(arch.inputShape, 4, 22);
        const { modelJson, weightsBin } = toTfjsCnnModel(p);
        const model = await load(modelJson, weightsBin);
        close(await predict(model, arch, ds), await predictCnnLogits(p, ds), 1e-4, 'logit');
        model.dispose();
        // …and reads back bit for bit.
        assert.deepEqual(serializeCnnParams(fromTfjsCnnModel(reread(modelJson), weightsBin, arch)), serializeCnnParams(p));
        assert.deepEqual(serializeCnnParams(fromTfjsCnnModel(JSON.stringify(modelJson), weightsBin)), serializeCnnParams(p));
      });
    }

    it('writes what tfjs-layers itself saves for the same model', async () => {
      const arch = CNN_ARCH;
      const p = randomCnn(arch, 23);
      const ours = toTfjsCnnModel(p);
      // The same Sequential built with the tfjs-layers API (names given: tfjs numbers them per process).
      const m = tfl.sequential({ name: 'sequential_1' });
      p.convs.forEach((c, b) => {
        m.add(tfl.layers.conv2d({ filters: c.outChannels, kernelSize: c.kernelSize, padding: 'same', name: `conv2d_Conv2D${b + 1}`, ...(b === 0 ? { inputShape: arch.inputShape } : {}) }));
        m.add(tfl.layers.batchNormalization({ epsilon: 1e-5, momentum: 0.9, name: `batch_normalization_BatchNormalization${b + 1}` }));
        m.add(tfl.layers.activation({ activation: 'relu', name: `activation_Activation${b + 1}` }));
        m.add(tfl.layers.averagePooling2d({ poolSize: 2, name: `average_pooling2d_AveragePooling2D${b + 1}` }));
      });
      m.add(tfl.layers.flatten({ name: 'flatten_Flatten1' }));
      p.dense.forEach((l, j) => m.add(tfl.layers.dense({ units: l.outSize, activation: j + 1 < p.dense.length ? 'relu' : 'linear', name: `dense_Dense${j + 1}` })));
      const byName = new Map(ours.modelJson.weightsManifest[0]!.weights.map((w, k) => [w.name, k]));
      let offset = 0;
      const values = ours.modelJson.weightsManifest[0]!.weights.map((w) => {
        const count = w.shape.reduce((a, d) => a * d, 1);
        const v = new Float32Array(ours.weightsBin.buffer.slice(ours.weightsBin.byteOffset + offset, ours.weightsBin.byteOffset + offset + 4 * count));
        offset += 4 * count;
        return v;
      });
      m.setWeights(m.weights.map((w: any) => {
        const k = byName.get(w.originalName ?? w.name);
        assert.ok(k !== undefined, `weight ${w.name} not written by us`);
        return core.tensor(values[k], w.shape);
      }));
      let saved: any;
      await m.save(core.io.withSaveHandler(async (artifacts: any) => {
        saved = artifacts;
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      }));
      assert.deepEqual(reread(ours.modelJson.modelTopology), reread(saved.modelTopology));
      assert.deepEqual(ours.modelJson.weightsManifest[0]!.weights, saved.weightSpecs);
      assert.deepEqual(ours.weightsBin, new Uint8Array(saved.weightData));
      m.dispose();
    });

    it('folds another BN epsilon into the running variance, as tfjs-layers computes it', async () => {
      const p = randomCnn(CNN_ARCH, 24);
      const ds = randomInputs(CNN_ARCH.inputShape, 3, 25);
      const { modelJson, weightsBin } = toTfjsCnnModel(p);
      const json = reread(modelJson);
      for (const l of json.modelTopology.config.layers) if (l.class_name === 'BatchNormalization') l.config.epsilon = 1e-3;
      const model = await load(json, weightsBin);
      const theirs = await predict(model, CNN_ARCH, ds);
      model.dispose();
      const read = fromTfjsCnnModel(json, weightsBin);
      assert.ok(Math.abs((read.convs[0]?.bn?.runningVar[0] ?? 0) - ((p.convs[0]?.bn?.runningVar[0] ?? 0) + 1e-3 - 1e-5)) < 1e-6);
      close(await predictCnnLogits(read, ds), theirs, 1e-4, 'logit');
    });

    it('accepts the Python converter form and a ReLU layer; writes and reads a directory', async () => {
      const p = randomCnn({ ...CNN_ARCH, batchNorm: false }, 26);
      const { modelJson, weightsBin } = toTfjsCnnModel(p);
      const json = reread(modelJson);
      const layers = json.modelTopology.config.layers;
      const shape = layers[0].config.batch_input_shape;
      delete layers[0].config.batch_input_shape;
      layers.unshift({ class_name: 'InputLayer', config: { batch_input_shape: shape, dtype: 'float32', sparse: false, name: 'input_1' } });
      // Conv2D(linear) + ReLU layer is the same block as Conv2D(relu).
      layers[1].config.activation = 'linear';
      layers.splice(2, 0, { class_name: 'ReLU', config: { max_value: null, name: 're_lu_ReLU1', trainable: true } });
      json.modelTopology = { keras_version: '2.15.0', backend: 'tensorflow', model_config: json.modelTopology };
      assert.deepEqual(serializeCnnParams(fromTfjsCnnModel(json, weightsBin)), serializeCnnParams(p));

      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-tfjs-cnn-'));
      try {
        const target = path.join(dir, 'teacher');
        const written = await writeTfjsCnnModelDir(target, p);
        assert.deepEqual(fs.readdirSync(target).sort(), ['model.json', 'weights.bin']);
        assert.deepEqual(serializeCnnParams(await readTfjsCnnModelDir(target)), serializeCnnParams(p));
        assert.deepEqual(serializeCnnParams(await readTfjsCnnModelDir(written.modelJsonPath, { ...CNN_ARCH, batchNorm: false })), serializeCnnParams(p));
        await assert.rejects(readTfjsCnnModelDir(target, CNN_ARCH), (e: unknown) => e instanceof InputError && /nobn.* but the architecture is .*:bn:/.test(e.message));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    describe('refuses damaged models', () => {
      type Edit = (json: any) => void;
      const conv = (json: any, i: number): any => json.modelTopology.config.layers.filter((l: any) => l.class_name === 'Conv2D')[i].config;
      const entry = (json: any, name: string): any => json.weightsManifest[0].weights.find((w: any) => w.name === name);
      const cases: Array<[string, Edit, RegExp, ((bin: Uint8Array) => Uint8Array)?]> = [
        ['truncated weights', () => {}, /weights.bin has 100 bytes but the manifest describes/, (b) => b.subarray(0, 100)],
        ['a NaN kernel value', () => {}, /non-finite value NaN in conv2d_Conv2D1\/kernel at index 3/, (b) => withFloat(b, 3, NaN)],
        ['a missing weight', (j) => { entry(j, 'batch_normalization_BatchNormalization2/moving_mean').name = 'x/moving_mean'; }, /weight batch_normalization_BatchNormalization2\/moving_mean is missing/],
        ['a wrong kernel shape', (j) => { entry(j, 'conv2d_Conv2D2/kernel').shape = [3, 3, 5, 3]; }, /conv2d_Conv2D2\/kernel has shape \[3, 3, 5, 3\] but the layers need \[3, 3, 3, 5\]/],
        ['a filters count that disagrees with the weights', (j) => { conv(j, 0).filters = 4; }, /conv2d_Conv2D1\/kernel has shape \[3, 3, 2, 3\] but the layers need \[3, 3, 2, 4\]/],
        ['stride 2', (j) => { conv(j, 1).strides = [2, 2]; }, /strides \[2,2\]; only stride 1/],
        ['valid padding', (j) => { conv(j, 0).padding = 'valid'; }, /padding "valid"; only 'same'/],
        ['channels first', (j) => { conv(j, 0).data_format = 'channels_first'; }, /channels_first".*only channels_last/],
        ['an even kernel', (j) => { conv(j, 0).kernel_size = [2, 2]; }, /kernel_size \[2,2\]; kernels are square with an odd side/],
        ['a 3×3 pool', (j) => { j.modelTopology.config.layers[3].config.pool_size = [3, 3]; }, /only 2×2, stride 2, 'valid'/],
        ['mixed pools', (j) => { j.modelTopology.config.layers[7].class_name = 'MaxPooling2D'; }, /max pool but earlier blocks use avg pools/],
        ['a Dropout layer', (j) => { j.modelTopology.config.layers.splice(9, 0, { class_name: 'Dropout', config: { rate: 0.5, name: 'd' } }); }, /"Dropout".*after Flatten only Dense layers/],
        ['no ReLU after BN', (j) => { j.modelTopology.config.layers.splice(2, 1); }, /follows BatchNormalization "batch_normalization_BatchNormalization1"; expected a relu/],
        ['a sigmoid activation', (j) => { j.modelTopology.config.layers[2].config.activation = 'sigmoid'; }, /expected a relu Activation or ReLU layer/],
        ['no Flatten', (j) => { j.modelTopology.config.layers.splice(8, 1); }, /expected Flatten/],
        ['a relu output', (j) => { j.modelTopology.config.layers[10].config.activation = 'relu'; }, /output layer dense_Dense2 has activation relu/],
        ['a BN over the wrong axis', (j) => { j.modelTopology.config.layers[1].config.axis = 1; }, /normalises axis 1/],
        ['an int32 weight', (j) => { entry(j, 'dense_Dense1/bias').dtype = 'int32'; }, /dense_Dense1\/bias has dtype "int32"/],
        ['no input shape', (j) => { delete conv(j, 0).batch_input_shape; }, /input shape is neither declared/],
        ['a functional model', (j) => { j.modelTopology.class_name = 'Model'; }, /only a Sequential model/],
        ['an unused weight', (j) => { j.weightsManifest[0].weights.push({ name: 'extra', shape: [1], dtype: 'float32' }); }, /extra belong to no layer/, (b) => new Uint8Array([...b, 0, 0, 0, 0])],
      ];
      for (const [what, edit, pattern, binEdit] of cases) {
        it(what, () => {
          const { modelJson, weightsBin } = toTfjsCnnModel(randomCnn(CNN_ARCH, 27));
          const json = reread(modelJson);
          edit(json);
          rejects(() => fromTfjsCnnModel(json, binEdit ? binEdit(weightsBin) : weightsBin), pattern);
        });
      }
      it('a negative variance after refolding a tiny epsilon, and the wrong architecture', () => {
        const p = randomCnn(CNN_ARCH, 28);
        p.convs[1]!.bn!.runningVar[2] = 1e-7;
        const { modelJson, weightsBin } = toTfjsCnnModel(p);
        const json = reread(modelJson);
        json.modelTopology.config.layers[5].config.epsilon = 1e-6;
        rejects(() => fromTfjsCnnModel(json, weightsBin), /batch_normalization_BatchNormalization2\/moving_variance at index 2 is too small to refold epsilon 0.000001/);
        rejects(() => fromTfjsCnnModel(modelJson, weightsBin, { ...CNN_ARCH, channels: [3, 6] }), /but the architecture is cnn:11x7x2:c3-6/);
      });
    });
    /* eslint-enable @typescript-eslint/no-explicit-any */
  });
});

/** `bin` with float number `index` (little-endian) replaced by `value`. */
function withFloat(bin: Uint8Array, index: number, value: number): Uint8Array {
  const out = Buffer.from(bin);
  out.writeFloatLE(value, index * 4);
  return new Uint8Array(out);
}
