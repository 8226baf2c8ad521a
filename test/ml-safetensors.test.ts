import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ArchitectureSpec } from '../src/spec/types';
import { initBackend } from '../src/ml/backend';
import type { MlpParams } from '../src/ml/mlp';
import { initMlp, predictLogits, serializeParams } from '../src/ml/mlp';
import {
  ACTIVATION_METADATA_KEY,
  mlpFromStateDict,
  mlpToStateDict,
  readSafetensorsTeacher,
  safetensorsTeacherFromBytes,
  serializeSafetensorsTeacher,
  writeSafetensorsTeacher,
} from '../src/ml/formats/torch-mlp';
import { parseSafetensors, serializeSafetensors, tensorToFloat32, type SafetensorsTensor } from '../src/ml/safetensors';
import { InputError } from '../src/util/errors';

const FIXTURES = path.resolve(__dirname, '../../test/fixtures/safetensors');

interface FixtureExpectation {
  architecture: ArchitectureSpec;
  metadata?: Record<string, string>;
  tensors: Record<string, { dtype: string; shape: number[] }>;
  logits: number[][];
}
const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'expected.json'), 'utf8')) as {
  input: number[][];
  files: Record<string, FixtureExpectation>;
};
const fixture = (name: string): Uint8Array => new Uint8Array(fs.readFileSync(path.join(FIXTURES, name)));

const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 6, hidden: [5], outputSize: 3, activation: 'relu' };

/** A safetensors file from a header (object or raw text) and a data buffer; `declared` overrides N. */
function build(header: object | string, data: Uint8Array = new Uint8Array(0), declared?: bigint): Uint8Array {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(declared ?? BigInt(json.length));
  return new Uint8Array(Buffer.concat([n, json, data]));
}

function f32(...values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

/** Parsed tensors of `tensors` (F32 values), for building state dicts in memory. */
function stateDict(tensors: Record<string, { shape: number[]; values: number[] }>, metadata?: Record<string, string>) {
  const bytes = serializeSafetensors(
    Object.fromEntries(Object.entries(tensors).map(([k, v]) => [k, { shape: v.shape, data: new Float32Array(v.values) }])),
    metadata,
  );
  return parseSafetensors(bytes);
}

function assertInputError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

function sameParams(a: MlpParams, b: MlpParams): void {
  assert.deepEqual(serializeParams(a), serializeParams(b));
}

describe('safetensors', () => {
  before(async () => {
    await initBackend('cpu');
  });

  describe('files written by the Python safetensors library (test/fixtures/safetensors/make_fixtures.py)', () => {
    const x = Float32Array.from(expected.input.flat());
    const ds = { x, y: new Int32Array(expected.input.length), n: expected.input.length };

    for (const [name, want] of Object.entries(expected.files)) {
      it(`${name}: dtypes, shapes and metadata as written; our forward pass gives numpy's logits to 1e-5`, async () => {
        const file = parseSafetensors(fixture(name), name);
        assert.deepEqual(Object.fromEntries(file.tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }])), want.tensors);
        assert.deepEqual(file.metadata, want.metadata);
        const params = await readSafetensorsTeacher(path.join(FIXTURES, name), want.architecture);
        const logits = await predictLogits(params, ds);
        const flat = want.logits.flat();
        assert.equal(logits.length, flat.length);
        flat.forEach((v, i) => assert.ok(Math.abs((logits[i] ?? NaN) - v) <= 1e-5, `logit ${i}: ${logits[i]} vs ${v}`));
      });
    }

    it('our writer reproduces the library\'s float32 file byte for byte', async () => {
      const bytes = fixture('mlp-6-5-3.safetensors');
      const params = safetensorsTeacherFromBytes(bytes, ARCH);
      assert.deepEqual(serializeSafetensors(mlpToStateDict(params)), bytes);
    });

    it('maps PyTorch [out, in] weights to our in × out layout', () => {
      const file = parseSafetensors(fixture('mlp-6-5-3.safetensors'));
      const torchW = tensorToFloat32(file.tensors.find((t) => t.name === '0.weight') as SafetensorsTensor);
      const params = mlpFromStateDict(file, ARCH);
      const layer = params.layers[0]!;
      assert.equal(layer.inSize, 6);
      assert.equal(layer.outSize, 5);
      for (let o = 0; o < 5; o++) for (let i = 0; i < 6; i++) assert.equal(layer.w[i * 5 + o], torchW[o * 6 + i]);
    });
  });

  describe('writing', () => {
    // The byte-exact outputs of the reference implementation's own tests (safetensors/src/tensor.rs).
    it('matches the reference serializer\'s test vectors', () => {
      const data = new Float32Array([0, 1, 2, 3, 4, 5]);
      const expectBytes = (header: string, values?: Float32Array): number[] => {
        const padded = header + ' '.repeat((8 - (header.length % 8)) % 8);
        const n = Buffer.alloc(8);
        n.writeBigUInt64LE(BigInt(padded.length));
        return [...Buffer.concat([n, Buffer.from(padded), Buffer.from(values ? values.buffer : new ArrayBuffer(0))])];
      };
      const out1 = serializeSafetensors({ 'attn.0': { shape: [1, 2, 3], data } });
      assert.deepEqual([...out1], expectBytes('{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}', data));
      assert.equal(out1[0], 64);
      const out2 = serializeSafetensors({ attn0: { shape: [1, 1, 2, 3], data } });
      assert.equal(out2[0], 72, 'padded with spaces to a multiple of 8');
      assert.deepEqual([...out2], expectBytes('{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}', data));
      assert.deepEqual([...serializeSafetensors({})], [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
      assert.deepEqual([...serializeSafetensors({}, { framework: 'pt' })], expectBytes('{"__metadata__":{"framework":"pt"}}'));
    });

    it('is deterministic: sorted tensor names and metadata keys', () => {
      const a = serializeSafetensors({ b: { shape: [1], data: new Float32Array([1]) }, a: { shape: [1], data: new Float32Array([2]) } }, { z: '1', a: '2' });
      const b = serializeSafetensors({ a: { shape: [1], data: new Float32Array([2]) }, b: { shape: [1], data: new Float32Array([1]) } }, { a: '2', z: '1' });
      assert.deepEqual(a, b);
      assert.match(Buffer.from(a.subarray(8)).toString('utf8'), /^\{"__metadata__":\{"a":"2","z":"1"\},"a":/);
    });

    it('refuses a shape that does not hold the data, and reserved names', () => {
      assertInputError(() => serializeSafetensors({ a: { shape: [2, 2], data: new Float32Array(3) } }), /does not hold its 3 values/);
      assertInputError(() => serializeSafetensors({ __metadata__: { shape: [1], data: new Float32Array(1) } }), /cannot name/);
    });
  });

  describe('round trip', () => {
    let dir: string;
    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-safetensors-'));
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    for (const arch of [
      { family: 'mlp', inputSize: 784, hidden: [32, 16], outputSize: 10, activation: 'tanh' },
      { family: 'mlp', inputSize: 7, hidden: [], outputSize: 2, activation: 'relu' },
    ] satisfies ArchitectureSpec[]) {
      it(`writes and reads back ${arch.inputSize}-${[...arch.hidden, arch.outputSize].join('-')} ${arch.activation} exactly, atomically`, async () => {
        const params = initMlp(arch, 11);
        const file = path.join(dir, 'teacher.safetensors');
        await writeSafetensorsTeacher(file, params);
        assert.deepEqual(fs.readdirSync(dir), ['teacher.safetensors'], 'no temporary file left');
        sameParams(await readSafetensorsTeacher(file, arch), params);
        // The activation travels in the metadata, so no architecture is needed to read it back.
        sameParams(await readSafetensorsTeacher(file), params);
        const parsed = parseSafetensors(fs.readFileSync(file));
        assert.deepEqual(parsed.metadata, { format: 'pt', [ACTIVATION_METADATA_KEY]: arch.activation });
        assert.deepEqual(parsed.tensors.map((t) => t.name), arch.hidden.length === 2 ? ['0.bias', '0.weight', '2.bias', '2.weight', '4.bias', '4.weight'] : ['0.bias', '0.weight']);
        assert.deepEqual(serializeSafetensorsTeacher(params), new Uint8Array(fs.readFileSync(file)), 'deterministic');
      });
    }
  });

  describe('corrupt files are InputErrors', () => {
    const good = (): Uint8Array => fixture('mlp-6-5-3.safetensors');

    it('too short, truncated, or with a bad header length', () => {
      assertInputError(() => parseSafetensors(new Uint8Array(5)), /too short/);
      const bytes = good();
      assertInputError(() => parseSafetensors(bytes.subarray(0, bytes.length - 1)), /out of range/);
      assertInputError(() => parseSafetensors(bytes.subarray(0, 40)), /runs past the end/);
      assertInputError(() => parseSafetensors(build({}, new Uint8Array(0), 100_000_001n)), /exceeds the 100000000-byte limit/);
      assertInputError(() => parseSafetensors(build({}, new Uint8Array(0), 0xffffffffffffffffn)), /exceeds/);
      assertInputError(() => parseSafetensors(build({}, new Uint8Array(0), 0n)), /does not start with "\{"/);
    });

    it('a header that is not UTF-8 JSON object text', () => {
      assertInputError(() => parseSafetensors(build('{"a":1')), /not valid JSON/);
      assertInputError(() => parseSafetensors(build('[1, 2]')), /does not start with "\{"/);
      assertInputError(() => parseSafetensors(build(' {}')), /does not start with "\{"/);
      assertInputError(() => parseSafetensors(build(Buffer.from([0x7b, 0xff, 0x7d]).toString('latin1'))), /not valid JSON|UTF-8/);
      const invalidUtf8 = Buffer.concat([Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([0x7b, 0xc3, 0x7d])]);
      assertInputError(() => parseSafetensors(new Uint8Array(invalidUtf8)), /not valid UTF-8/);
    });

    it('duplicate tensor names or fields', () => {
      const t = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}';
      assertInputError(() => parseSafetensors(build(`{"a":${t},"a":${t}}`, f32(1))), /lists "a" twice/);
      assertInputError(() => parseSafetensors(build('{"a":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}}', f32(1))), /repeats the field "dtype"/);
      // Repeated keys in different objects are fine, and so are look-alike strings in values.
      assert.equal(parseSafetensors(build({ __metadata__: { a: 'b,"a":' }, a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(1))).tensors.length, 1);
    });

    it('offsets out of range, overlapping, with gaps, or trailing bytes', () => {
      const entry = (begin: number, end: number, shape = [1]) => ({ dtype: 'F32', shape, data_offsets: [begin, end] });
      assertInputError(() => parseSafetensors(build({ a: entry(0, 8, [2]) }, f32(1))), /out of range: the byte buffer holds 4 bytes/);
      assertInputError(() => parseSafetensors(build({ a: entry(4, 0) }, f32(1))), /end before they begin/);
      assertInputError(() => parseSafetensors(build({ a: entry(0, 4), b: entry(0, 4) }, f32(1, 2))), /overlap/);
      assertInputError(() => parseSafetensors(build({ a: entry(4, 8) }, f32(1, 2))), /gap/);
      assertInputError(() => parseSafetensors(build({ a: entry(0, 4) }, f32(1, 2))), /4 trailing bytes/);
      assertInputError(() => parseSafetensors(build({ a: { dtype: 'F32', shape: [1], data_offsets: [0] } }, f32(1))), /data_offsets/);
      assertInputError(() => parseSafetensors(build({ a: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, f32(1))), /data_offsets/);
    });

    it('a byte count that is not prod(shape) · dtype size, bad shapes and dtypes, bad metadata', () => {
      assertInputError(() => parseSafetensors(build({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, f32(1, 2))), /holds 8 bytes but its shape \[3\] of F32 needs 12/);
      assertInputError(() => parseSafetensors(build({ a: { dtype: 'F16', shape: [1], data_offsets: [0, 4] } }, f32(1))), /needs 2/);
      assertInputError(() => parseSafetensors(build({ a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } }, f32(1))), /overflows/);
      assertInputError(() => parseSafetensors(build({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, f32(1))), /shape/);
      assertInputError(() => parseSafetensors(build('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', f32(1))), /the number 1\.0/);
      assertInputError(() => parseSafetensors(build('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4e0]}}', f32(1))), /the number 4e0/);
      assertInputError(() => parseSafetensors(build({ a: { dtype: 'Q4', shape: [1], data_offsets: [0, 4] } }, f32(1))), /dtype "Q4"/);
      assertInputError(() => parseSafetensors(build({ a: 3 })), /expected \{dtype, shape, data_offsets\}/);
      assertInputError(() => parseSafetensors(build({ __metadata__: { n: 1 } })), /metadata values must be strings/);
      // Scalars and empty tensors are legal.
      const ok = parseSafetensors(build({ s: { dtype: 'I64', shape: [], data_offsets: [0, 8] }, e: { dtype: 'F32', shape: [0, 3], data_offsets: [8, 8] } }, new Uint8Array(8)));
      assert.deepEqual(ok.tensors.map((t) => [t.name, t.dtype, t.data.length]), [['s', 'I64', 8], ['e', 'F32', 0]]);
    });

    it('converts F16 (subnormals, infinities), BF16 and F64 exactly', () => {
      const f16 = new Uint8Array(Buffer.from([0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0x00, 0x7c, 0xff, 0x7b]));
      const t = parseSafetensors(build({ h: { dtype: 'F16', shape: [5], data_offsets: [0, 10] } }, f16)).tensors[0]!;
      assert.deepEqual([...tensorToFloat32(t)], [1, -2, 2 ** -24, Infinity, 65504]);
      const bf16 = new Uint8Array(Buffer.from([0x80, 0x3f, 0x49, 0x40]));
      const b = parseSafetensors(build({ b: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] } }, bf16)).tensors[0]!;
      assert.deepEqual([...tensorToFloat32(b)], [1, 3.140625]);
      const f64 = new Uint8Array(new Float64Array([0.1, 1e300]).buffer);
      const d = parseSafetensors(build({ d: { dtype: 'F64', shape: [2], data_offsets: [0, 16] } }, f64)).tensors[0]!;
      assert.deepEqual([...tensorToFloat32(d)], [Math.fround(0.1), Infinity]);
      const i = parseSafetensors(build({ i: { dtype: 'I32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4))).tensors[0]!;
      assertInputError(() => tensorToFloat32(i), /only floating-point tensors/);
    });
  });

  describe('PyTorch state_dict mapping', () => {
    const linear = (out: number, inn: number, fill = 0.5) => ({ shape: [out, inn], values: Array.from({ length: out * inn }, (_, k) => fill + k / 100) });
    const bias = (out: number) => ({ shape: [out], values: Array.from({ length: out }, (_, k) => k / 10) });

    it('accepts Linear layers at any indices, under a prefix, and a missing bias as zeros', () => {
      const p = mlpFromStateDict(stateDict({
        'model.net.0.weight': linear(5, 6), 'model.net.0.bias': bias(5),
        'model.net.3.weight': linear(4, 5), // Dropout between: index 3; bias=False
        'model.net.10.weight': linear(3, 4), 'model.net.10.bias': bias(3),
      }));
      assert.deepEqual(p.layers.map((l) => [l.inSize, l.outSize]), [[6, 5], [5, 4], [4, 3]]);
      assert.deepEqual([...p.layers[1]!.b], [0, 0, 0, 0]);
      assert.equal(p.activation, 'relu');
      const tanh = mlpFromStateDict(stateDict({ '0.weight': linear(2, 3), '0.bias': bias(2) }), { ...ARCH, inputSize: 3, hidden: [], outputSize: 2, activation: 'tanh' });
      assert.equal(tanh.activation, 'tanh', 'the activation comes from the expected architecture when the file has none');
    });

    it('ignores BatchNorm\'s num_batches_tracked but refuses normalisation layers', () => {
      const sd = stateDict({ '0.weight': linear(5, 6), '0.bias': bias(5), '2.weight': linear(3, 5), '2.bias': bias(3) });
      const counter: SafetensorsTensor = { name: '1.num_batches_tracked', dtype: 'I64', shape: [], data: new Uint8Array(8) };
      sameParams(mlpFromStateDict([...sd.tensors, counter], ARCH), mlpFromStateDict(sd, ARCH));
      assertInputError(() => mlpFromStateDict(stateDict({ '0.weight': linear(5, 6), '1.weight': bias(5), '1.bias': bias(5), '2.weight': linear(3, 5) })), /1\.weight.*normalisation layer/);
      assertInputError(() => mlpFromStateDict(stateDict({ '0.weight': linear(5, 6), '1.running_mean': bias(5), '2.weight': linear(3, 5) })), /normalisation layer/);
      const intWeight: SafetensorsTensor = { name: '0.weight', dtype: 'I32', shape: [1, 1], data: new Uint8Array(4) };
      assertInputError(() => mlpFromStateDict([intWeight]), /dtype I32/);
    });

    it('refuses names that are not an nn.Sequential\'s, and mixed prefixes', () => {
      assertInputError(() => mlpFromStateDict(stateDict({ 'fc1.weight': linear(5, 6) })), /"fc1\.weight" is not named like/);
      assertInputError(() => mlpFromStateDict(stateDict({ 'a.0.weight': linear(5, 6), 'b.2.weight': linear(3, 5) })), /different prefixes/);
      assertInputError(() => mlpFromStateDict(stateDict({ '0.weight_g': linear(5, 6) })), /"weight_g" parameter/);
      assertInputError(() => mlpFromStateDict(stateDict({})), /no Linear layer/);
      assertInputError(() => mlpFromStateDict(stateDict({ '0.bias': bias(5) })), /0\.bias has no 0\.weight/);
    });

    it('refuses shapes that do not chain and biases that do not match', () => {
      assertInputError(() => mlpFromStateDict(stateDict({ '0.weight': linear(5, 6), '2.weight': linear(3, 4) })), /2\.weight takes 4 inputs but the previous Linear layer gives 5/);
      assertInputError(() => mlpFromStateDict(stateDict({ '0.weight': linear(5, 6), '0.bias': bias(4) })), /0\.bias has shape \[4\]/);
      assertInputError(() => mlpFromStateDict(stateDict({ '0.weight': { shape: [5, 6, 1], values: new Array(30).fill(0) } })), /\[out, in\]/);
    });

    it('refuses NaN and Infinity, naming the tensor', () => {
      const w = linear(5, 6);
      w.values[7] = NaN;
      assertInputError(() => mlpFromStateDict(stateDict({ 'net.0.weight': w, 'net.0.bias': bias(5) })), /tensor "net\.0\.weight" holds the non-finite value NaN at flat index 7/);
      const b = bias(5);
      b.values[2] = -Infinity;
      assertInputError(() => mlpFromStateDict(stateDict({ '0.weight': linear(5, 6), '0.bias': b })), /"0\.bias" holds the non-finite value -Infinity/);
    });

    it('refuses a wrong architecture or activation', async () => {
      const bytes = fixture('mlp-6-5-3.safetensors');
      assertInputError(() => safetensorsTeacherFromBytes(bytes, { ...ARCH, hidden: [4] }), /mlp:6-5-3:relu but the architecture is mlp:6-4-3:relu/);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-safetensors-'));
      try {
        const file = path.join(dir, 't.safetensors');
        await writeSafetensorsTeacher(file, initMlp(ARCH, 1));
        await assert.rejects(readSafetensorsTeacher(file, { ...ARCH, activation: 'tanh' }), (err: unknown) => err instanceof InputError && /relu but the architecture is .*tanh/.test(err.message));
        await assert.rejects(readSafetensorsTeacher(path.join(dir, 'missing.safetensors')), (err: unknown) => err instanceof InputError && /cannot read/.test(err.message));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
      const odd = stateDict({ '0.weight': linear(5, 6) }, { [ACTIVATION_METADATA_KEY]: 'gelu' });
      assertInputError(() => mlpFromStateDict(odd), /weightformer\.activation is "gelu"/);
    });
  });
});
