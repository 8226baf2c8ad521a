import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ArchitectureSpec } from '../src/spec/types';
import { initBackend } from '../src/ml/backend';
import type { MlpParams } from '../src/ml/mlp';
import { initMlp, predictLogits, serializeParams } from '../src/ml/mlp';
import {
  fromTfjsModel,
  packTfjsArtifact,
  readTfjsModelDir,
  tfjsArtifactToParams,
  toTfjsModel,
  unpackTfjsArtifact,
  writeTfjsModelDir,
} from '../src/ml/tfjs-format';
import { InputError } from '../src/util/errors';

const ROOT = path.resolve(__dirname, '../..');
/**
 * Saved by @tensorflow/tfjs-layers 4.22.0 itself: `tf.sequential` of dense(4, relu, inputShape [3]) and
 * dense(2), weights set to known values, written with the file layout of tfjs-node's `file://` handler
 * (`JSON.stringify({ modelTopology, weightsManifest: [{ paths: ['weights.bin'], weights }], format,
 * generatedBy, convertedBy })` + the raw weight data).
 */
const FIXTURE = path.join(ROOT, 'test/fixtures/tfjs-layers');
/** What tfjs-layers' `model.predict` returned for FIXTURE_X. */
const FIXTURE_X = [1, 2, 3, -1, 0.5, 2];
const FIXTURE_LOGITS = [2.299999952316284, 2.0999999046325684, 1.8500001430511475, 1.5250000953674316];
const FIXTURE_ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 3, hidden: [4], outputSize: 2, activation: 'relu' };
const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [32, 16], outputSize: 10, activation: 'tanh' };

const fixtureJson = (): Record<string, any> => JSON.parse(fs.readFileSync(path.join(FIXTURE, 'model.json'), 'utf8')) as Record<string, any>;
const fixtureBin = (): Uint8Array => new Uint8Array(fs.readFileSync(path.join(FIXTURE, 'weights.bin')));
/** A deep copy of model.json as it would come off the disk. */
const reread = (o: object): Record<string, any> => JSON.parse(JSON.stringify(o)) as Record<string, any>;
const same = (a: MlpParams, b: MlpParams): void => assert.deepEqual(serializeParams(a), serializeParams(b));

function rejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return true;
  });
}

describe('ml TF.js layers format', function () {
  before(async () => {
    await initBackend('cpu');
  });

  it('round-trips parameters through model.json + weights.bin, bit for bit', () => {
    const p = initMlp(ARCH, 5);
    const { modelJson, weightsBin } = toTfjsModel(p);
    assert.equal(weightsBin.length, (784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10) * 4);
    same(fromTfjsModel(reread(modelJson), weightsBin), p);
    same(fromTfjsModel(JSON.stringify(modelJson), weightsBin, ARCH), p);
    const layers = modelJson.modelTopology.config.layers;
    assert.deepEqual(layers.map((l) => l.config.activation), ['tanh', 'tanh', 'linear']);
    assert.deepEqual(layers[0]?.config.batch_input_shape, [null, 784]);
    assert.deepEqual(modelJson.weightsManifest[0]?.weights.map((w) => `${w.name}:${w.shape.join('x')}:${w.dtype}`), [
      'dense_Dense1/kernel:784x32:float32',
      'dense_Dense1/bias:32:float32',
      'dense_Dense2/kernel:32x16:float32',
      'dense_Dense2/bias:16:float32',
      'dense_Dense3/kernel:16x10:float32',
      'dense_Dense3/bias:10:float32',
    ]);
    // A softmax output layer loads back to the same logits.
    const soft = toTfjsModel(p, { outputActivation: 'softmax' });
    assert.equal(soft.modelJson.modelTopology.config.layers[2]?.config.activation, 'softmax');
    same(fromTfjsModel(reread(soft.modelJson), soft.weightsBin), p);
  });

  it('reads a model saved by tfjs-layers itself, and writes exactly its layout', async () => {
    const json = fixtureJson();
    const bin = fixtureBin();
    const p = fromTfjsModel(json, bin, FIXTURE_ARCH);
    assert.equal(p.activation, 'relu');
    assert.deepEqual(Array.from(p.layers[0]!.b), Array.from(new Float32Array([0.1, -0.2, 0.3, -0.4])));
    assert.equal(p.layers[0]!.w[1 * 4 + 2], Math.fround(-0.7)); // kernel[1][2], row-major [in, out]
    const logits = await predictLogits(p, { x: new Float32Array(FIXTURE_X), y: new Int32Array(2), n: 2 });
    logits.forEach((v, i) => assert.ok(Math.abs(v - (FIXTURE_LOGITS[i] ?? NaN)) < 1e-6, `logit ${i}: ${v}`));

    // Our writer reproduces tfjs-layers' file byte for byte, but for who generated it.
    const ours = toTfjsModel(p);
    assert.deepEqual(ours.weightsBin, bin);
    assert.deepEqual({ ...reread(ours.modelJson), generatedBy: null, convertedBy: null }, { ...json, generatedBy: null, convertedBy: null });
    assert.deepEqual(Object.keys(ours.modelJson), Object.keys(json), 'same key order as tfjs-node writes');
    assert.equal(json.convertedBy, null);
    assert.equal(typeof ours.modelJson.generatedBy, 'string');
  });

  it('accepts the Python converter form: model_config wrapper, InputLayer, sharded paths, optimizer weights', () => {
    const json = fixtureJson();
    const layers = json.modelTopology.config.layers as Array<Record<string, any>>;
    delete layers[0]!.config.batch_input_shape;
    layers.unshift({ class_name: 'InputLayer', config: { batch_input_shape: [null, 3], dtype: 'float32', sparse: false, name: 'input_1' } });
    json.modelTopology = { keras_version: '2.15.0', backend: 'tensorflow', model_config: json.modelTopology };
    json.weightsManifest = [
      { paths: ['group1-shard1of2.bin', 'group1-shard2of2.bin'], weights: json.weightsManifest[0].weights },
      { paths: ['opt.bin'], weights: [{ name: 'iter', shape: [], dtype: 'float32', group: 'optimizer' }] },
    ];
    const bin = new Uint8Array([...fixtureBin(), 0, 0, 128, 63]);
    same(fromTfjsModel(json, bin, FIXTURE_ARCH), fromTfjsModel(fixtureJson(), fixtureBin()));
  });

  it('writes model.json + weights.bin atomically into a directory that reads back', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-tfjs-'));
    try {
      const p = fromTfjsModel(fixtureJson(), fixtureBin());
      const target = path.join(dir, 'nested', 'teacher-0');
      const written = await writeTfjsModelDir(target, p);
      assert.deepEqual(fs.readdirSync(target).sort(), ['model.json', 'weights.bin']);
      assert.equal(written.modelJsonPath, path.join(target, 'model.json'));
      assert.deepEqual(new Uint8Array(fs.readFileSync(written.weightsBinPath)), fixtureBin());
      same(await readTfjsModelDir(target, FIXTURE_ARCH), p);
      same(await readTfjsModelDir(written.modelJsonPath), p);
      // Overwriting in place leaves no temporary files behind.
      const q = initMlp(FIXTURE_ARCH, 9);
      await writeTfjsModelDir(target, q);
      assert.deepEqual(fs.readdirSync(target).sort(), ['model.json', 'weights.bin']);
      same(await readTfjsModelDir(target), q);
      // Weight paths may not leave the model's directory.
      const json = fixtureJson();
      json.weightsManifest[0].paths = ['../outside.bin'];
      fs.writeFileSync(path.join(target, 'model.json'), JSON.stringify(json));
      await assert.rejects(readTfjsModelDir(target), (e: unknown) => e instanceof InputError && /leaves the model directory/.test(e.message));
      await assert.rejects(readTfjsModelDir(path.join(dir, 'missing')), InputError);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('packs one deterministic blob for the store, and refuses damaged ones', () => {
    const p = initMlp(ARCH, 6);
    const blob = packTfjsArtifact(p);
    assert.deepEqual(packTfjsArtifact(initMlp(ARCH, 6)), blob, 'equal parameters, equal bytes');
    const { modelJson, weightsBin } = unpackTfjsArtifact(blob);
    assert.deepEqual(modelJson, reread(toTfjsModel(p).modelJson));
    assert.deepEqual(weightsBin, toTfjsModel(p).weightsBin);
    same(tfjsArtifactToParams(blob, ARCH), p);
    rejects(() => unpackTfjsArtifact(new Uint8Array([1, 2, 3])), /not a TF.js model artifact/);
    rejects(() => unpackTfjsArtifact(blob.subarray(0, blob.length - 7)), /corrupt or truncated/);
    const flipped = new Uint8Array(blob);
    flipped[200] = (flipped[200] ?? 0) ^ 4;
    rejects(() => unpackTfjsArtifact(flipped), /checksum/);
    rejects(() => tfjsArtifactToParams(blob, { ...ARCH, hidden: [32, 17] }), /mlp:784-32-16-10:tanh but the architecture is mlp:784-32-17-10:tanh/);
  });

  describe('rejects bad models with a specific InputError', () => {
    type Edit = (json: Record<string, any>) => void;
    const layer = (json: Record<string, any>, i: number): Record<string, any> => json.modelTopology.config.layers[i].config as Record<string, any>;
    const entry = (json: Record<string, any>, i: number): Record<string, any> => json.weightsManifest[0].weights[i] as Record<string, any>;
    const cases: Array<[string, Edit, RegExp, ((bin: Uint8Array) => Uint8Array)?]> = [
      ['truncated weights', () => {}, /weights.bin has 100 bytes but the manifest describes 104/, (b) => b.subarray(0, 100)],
      ['trailing bytes', () => {}, /108 bytes but the manifest describes 104/, (b) => new Uint8Array([...b, 1, 2, 3, 4])],
      ['empty weights', () => {}, /0 bytes/, () => new Uint8Array()],
      ['a NaN weight', () => {}, /non-finite value NaN in dense_Dense1\/kernel at index 2/, (b) => withFloat(b, 2, NaN)],
      ['an infinite bias', () => {}, /non-finite value Infinity in dense_Dense2\/bias at index 1/, (b) => withFloat(b, 25, Infinity)],
      ['a kernel shape that does not chain', (j) => { entry(j, 2).shape = [2, 4]; }, /dense_Dense2\/kernel has shape \[2, 4\] but the layers need \[4, 2\]/],
      ['a transposed kernel', (j) => { entry(j, 0).shape = [4, 3]; }, /dense_Dense1\/kernel has shape \[4, 3\] but the layers need \[3, 4\]/],
      ['a units count that disagrees with the weights', (j) => { layer(j, 0).units = 5; }, /dense_Dense1\/kernel has shape \[3, 4\] but the layers need \[3, 5\]/],
      ['an int32 weight', (j) => { entry(j, 0).dtype = 'int32'; }, /dense_Dense1\/kernel has dtype "int32"; only float32/],
      ['a float16 weight', (j) => { entry(j, 3).dtype = 'float16'; }, /dtype "float16"/],
      ['a missing dtype', (j) => { delete entry(j, 3).dtype; }, /dense_Dense2\/bias has dtype missing/],
      ['quantized weights', (j) => { entry(j, 0).quantization = { dtype: 'uint8', min: 0, scale: 1 }; }, /quantized/],
      ['a graph model', (j) => { j.format = 'graph-model'; }, /format is "graph-model"; expected "layers-model"/],
      ['no format', (j) => { delete j.format; }, /format is missing/],
      ['a functional model', (j) => { j.modelTopology.class_name = 'Model'; }, /only a Sequential model/],
      ['a Conv2D layer', (j) => { j.modelTopology.config.layers[1].class_name = 'Conv2D'; }, /layer 1 is "Conv2D"; only Dense layers/],
      ['a Dropout layer', (j) => { j.modelTopology.config.layers.splice(1, 0, { class_name: 'Dropout', config: { rate: 0.5, name: 'd' } }); }, /layer 1 is "Dropout"/],
      ['a sigmoid hidden layer', (j) => { layer(j, 0).activation = 'sigmoid'; }, /hidden activation sigmoid is not supported/],
      ['a relu output layer', (j) => { layer(j, 1).activation = 'relu'; }, /output activation relu is not supported/],
      ['no bias', (j) => { layer(j, 1).use_bias = false; }, /use_bias false/],
      ['a 2-D input', (j) => { layer(j, 0).batch_input_shape = [null, 3, 1]; }, /input shape \[null,3,1\]/],
      ['a float64 layer', (j) => { layer(j, 0).dtype = 'float64'; }, /dtype "float64"; only float32/],
      ['a missing weight', (j) => { entry(j, 3).name = 'dense_Dense9/bias'; }, /weight dense_Dense2\/bias is missing/],
      ['a duplicated weight', (j) => { entry(j, 3).name = 'dense_Dense1/bias'; }, /lists weight dense_Dense1\/bias twice/],
      ['an unused weight', (j) => { j.weightsManifest[0].weights.push({ name: 'extra', shape: [], dtype: 'float32' }); }, /extra belong to no layer/, (b) => new Uint8Array([...b, 0, 0, 0, 0])],
      ['no manifest', (j) => { delete j.weightsManifest; }, /weightsManifest is missing/],
      ['no weight paths', (j) => { j.weightsManifest[0].paths = []; }, /paths is \[\]/],
      ['a negative dimension', (j) => { entry(j, 1).shape = [-4]; }, /shape \[-4\]/],
      ['no layers', (j) => { j.modelTopology.config.layers = []; }, /no Dense layers/],
      ['no topology', (j) => { delete j.modelTopology; }, /modelTopology is missing/],
    ];
    for (const [what, edit, pattern, binEdit] of cases) {
      it(what, () => {
        const json = fixtureJson();
        edit(json);
        const bin = binEdit ? binEdit(fixtureBin()) : fixtureBin();
        rejects(() => fromTfjsModel(json, bin), pattern);
      });
    }

    it('mixed hidden activations, non-objects, bad JSON and an architecture mismatch', () => {
      const p = initMlp({ ...FIXTURE_ARCH, hidden: [4, 4] }, 1);
      const { modelJson, weightsBin } = toTfjsModel(p);
      const json = reread(modelJson);
      json.modelTopology.config.layers[1].config.activation = 'tanh';
      rejects(() => fromTfjsModel(json, weightsBin), /mix activations relu and tanh/);
      rejects(() => fromTfjsModel(null, weightsBin), /model.json is null/);
      rejects(() => fromTfjsModel([], weightsBin), /expected an object/);
      rejects(() => fromTfjsModel('{"format": ', weightsBin), /not valid JSON/);
      rejects(() => fromTfjsModel(fixtureJson(), fixtureBin(), { ...FIXTURE_ARCH, activation: 'tanh' }), /mlp:3-4-2:relu but the architecture is mlp:3-4-2:tanh/);
      rejects(() => fromTfjsModel(fixtureJson(), fixtureBin(), { ...FIXTURE_ARCH, inputSize: 784 }), /architecture is mlp:784-4-2:relu/);
      rejects(() => toTfjsModel({ ...p, layers: [{ ...p.layers[0]!, b: new Float32Array([NaN, 0, 0, 0]) }, ...p.layers.slice(1)] }), /non-finite/);
    });
  });

  // @tensorflow/tfjs-layers is a dev dependency only for this: the real loader is the judge of the format.
  it('loads with the real tfjs-layers loader', async function () {
    const layersPath = require.resolve('@tensorflow/tfjs-layers');
    const req = createRequire(layersPath);
    /* eslint-disable @typescript-eslint/no-explicit-any */
    const core = req('@tensorflow/tfjs-core') as any;
    const tfl = req('@tensorflow/tfjs-layers') as any;
    if (!core.getBackend()) {
      req('@tensorflow/tfjs-backend-cpu'); // a separate copy of tfjs-core without a backend yet
      await core.setBackend('cpu');
    }
    const p = initMlp({ ...FIXTURE_ARCH, inputSize: 5, hidden: [7, 3] }, 12);
    const x = new Float32Array([0.5, -1, 2, 0, 1, 3, 1, -2, 0.25, 0.75]);
    const want = await predictLogits(p, { x, y: new Int32Array(2), n: 2 });
    const { modelJson, weightsBin } = toTfjsModel(p);
    const weightData = weightsBin.buffer.slice(weightsBin.byteOffset, weightsBin.byteOffset + weightsBin.byteLength);
    const model = await tfl.loadLayersModel(core.io.fromMemory({ modelTopology: modelJson.modelTopology, weightSpecs: modelJson.weightsManifest[0]!.weights, weightData }));
    const got = Array.from((await model.predict(core.tensor2d(x, [2, 5])).data()) as Float32Array);
    got.forEach((v, i) => assert.ok(Math.abs(v - (want[i] ?? NaN)) < 1e-5, `logit ${i}: ${v} vs ${want[i]}`));
    const soft = toTfjsModel(p, { outputActivation: 'softmax' });
    const softModel = await tfl.loadLayersModel(core.io.fromMemory({ modelTopology: soft.modelJson.modelTopology, weightSpecs: soft.modelJson.weightsManifest[0]!.weights, weightData }));
    const probs = Array.from((await softModel.predict(core.tensor2d(x, [2, 5])).data()) as Float32Array);
    assert.ok(Math.abs(probs.slice(0, 2).reduce((a, b) => a + b, 0) - 1) < 1e-5, `probabilities ${probs.join(', ')}`);
    /* eslint-enable @typescript-eslint/no-explicit-any */
  });
});

/** `bin` with float number `index` (little-endian) replaced by `value`. */
function withFloat(bin: Uint8Array, index: number, value: number): Uint8Array {
  const out = Buffer.from(bin);
  out.writeFloatLE(value, index * 4);
  return new Uint8Array(out);
}
