/**
 * MLP teachers in the TensorFlow.js *layers* format: the `model.json` + `weights.bin` pair that
 * tfjs-layers' `model.save('file://dir')` writes and `tf.loadLayersModel('file://dir/model.json')` reads.
 *
 * Written exactly as tfjs-layers 4.22 lays it out (tfjs-node's file handler): top-level keys
 * `modelTopology, weightsManifest, format, generatedBy, convertedBy`; the topology a keras `Sequential`
 * (`keras_version: 'tfjs-layers 4.22.0'`, `backend: 'tensor_flow.js'`) of `Dense` layers named
 * `dense_Dense1`, `dense_Dense2`, …, the first carrying `batch_input_shape: [null, inputSize]` and
 * `dtype: 'float32'`; one manifest group `{ paths: ['weights.bin'], weights: [...] }` listing
 * `<layer>/kernel` (shape [in, units]) and `<layer>/bias` (shape [units]) per layer, float32; and
 * `weights.bin` those tensors' little-endian float32 values concatenated in manifest order. A Keras Dense
 * kernel is [in, out] row-major — the same layout as `MlpLayer.w` — so values are copied, not transposed.
 *
 * Output activation: the last Dense layer is written `linear` by default, so `model.predict` returns the
 * *logits*, exactly what `predictLogits` returns, and temperature-scaled soft targets can be computed from
 * them. Pass `{ outputActivation: 'softmax' }` to get probabilities from `predict` instead. Loading accepts
 * both (the Dense layer's pre-activation is the logits in either case; argmax is the same).
 *
 * A model without hidden layers has no activation to record: its loaded `activation` is the one of
 * `expected` when given, else `relu` (it does not affect the computation).
 *
 * Loading validates strictly and throws InputError naming the problem: the bytes may be someone else's.
 * Accepted beyond what tfjs-layers writes: the Python converter's `modelTopology.model_config` wrapper, a
 * leading `InputLayer`, `batch_shape` (Keras 3), several weight paths (pass their contents concatenated in
 * manifest order, as the TF.js loader does), and manifest entries of `group: 'optimizer'` (skipped).
 * Refused: any layer but Dense, `use_bias: false`, activations other than relu/tanh (hidden; all the same)
 * and linear/softmax (output), non-float32 or quantized weights, unknown or missing weights, shapes that do
 * not chain, a byte length that is not exact, and non-finite values.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { ArchitectureSpec } from '../spec/types';
import { InputError } from '../util/errors';
import { ByteReader, ByteWriter, openContainer } from './bytes';
import type { Activation, MlpLayer, MlpParams } from './mlp';
import { checkArchitecture, checkParamsMatch } from './mlp';
import { validateParams } from './params-io';

/** The `format` of a layers model (tfjs-layers' LAYERS_MODEL_FORMAT_NAME). */
export const TFJS_LAYERS_FORMAT = 'layers-model';
/** The tfjs-layers version whose on-disk layout this module writes. */
export const TFJS_LAYERS_VERSION = '4.22.0';
export const TFJS_MODEL_JSON = 'model.json';
export const TFJS_WEIGHTS_BIN = 'weights.bin';
/** Fixed (no versions, dates or hosts), so equal parameters always give equal bytes and one content address. */
const GENERATED_BY = 'weightformer-pipelines trainMlp (TensorFlow.js tfjs-core)';
const CONVERTED_BY = 'weightformer-pipelines toTfjsModel v1';

export type TfjsOutputActivation = 'linear' | 'softmax';

export interface TfjsExportOptions {
  /** Activation of the last Dense layer; default `linear` (predict returns logits). */
  outputActivation?: TfjsOutputActivation;
}

export interface TfjsWeightEntry {
  name: string;
  shape: number[];
  dtype: 'float32';
}

/** The content of `model.json` as written here (a subset of tfjs-core's `io.ModelJSON`). */
export interface TfjsModelJson {
  modelTopology: {
    class_name: 'Sequential';
    config: { name: string; layers: Array<{ class_name: 'Dense'; config: Record<string, unknown> }> };
    keras_version: string;
    backend: string;
  };
  weightsManifest: Array<{ paths: string[]; weights: TfjsWeightEntry[] }>;
  format: typeof TFJS_LAYERS_FORMAT;
  generatedBy: string;
  convertedBy: string | null;
}

export interface TfjsModel {
  modelJson: TfjsModelJson;
  weightsBin: Uint8Array;
}

const WHAT = 'TF.js model';
const HIDDEN_ACTIVATIONS: readonly Activation[] = ['relu', 'tanh'];
const OUTPUT_ACTIVATIONS: readonly TfjsOutputActivation[] = ['linear', 'softmax'];
/** Sanity bounds, as in params-io: anything larger is damage, not a model we could run. */
const MAX_LAYERS = 256;
const MAX_LAYER_SIZE = 1 << 24;

function denseName(i: number): string {
  return `dense_Dense${i + 1}`;
}

/** A Dense layer's config, keys in tfjs-layers' order (Dense.getConfig, then Layer.getConfig). */
function denseConfig(i: number, units: number, activation: string, inputSize: number | undefined): Record<string, unknown> {
  const config: Record<string, unknown> = {
    units,
    activation,
    use_bias: true,
    kernel_initializer: { class_name: 'VarianceScaling', config: { scale: 1, mode: 'fan_avg', distribution: 'normal', seed: null } },
    bias_initializer: { class_name: 'Zeros', config: {} },
    kernel_regularizer: null,
    bias_regularizer: null,
    activity_regularizer: null,
    kernel_constraint: null,
    bias_constraint: null,
    name: denseName(i),
    trainable: true,
  };
  if (inputSize !== undefined) {
    config.batch_input_shape = [null, inputSize];
    config.dtype = 'float32';
  }
  return config;
}

function littleEndianF32(values: Float32Array): Uint8Array {
  const out = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i] ?? 0, i * 4);
  return out;
}

/**
 * `p` as a TF.js layers model: the `model.json` object and the `weights.bin` bytes. Refuses (InputError)
 * parameters that `validateParams` refuses, non-finite ones included.
 *
 * @example
 * const { modelJson, weightsBin } = toTfjsModel(teacher);
 * // in a browser: tf.loadLayersModel(tf.io.fromMemory({ modelTopology: modelJson.modelTopology,
 * //   weightSpecs: modelJson.weightsManifest[0].weights, weightData: weightsBin.buffer }))
 */
export function toTfjsModel(p: MlpParams, options: TfjsExportOptions = {}): TfjsModel {
  validateParams(p);
  const outputActivation = options.outputActivation ?? 'linear';
  if (!OUTPUT_ACTIVATIONS.includes(outputActivation)) {
    throw new InputError(`outputActivation must be linear or softmax, got ${String(outputActivation)}`);
  }
  const last = p.layers.length - 1;
  const layers = p.layers.map((l, i) => ({
    class_name: 'Dense' as const,
    config: denseConfig(i, l.outSize, i === last ? outputActivation : p.activation, i === 0 ? l.inSize : undefined),
  }));
  const weights: TfjsWeightEntry[] = p.layers.flatMap((l, i) => [
    { name: `${denseName(i)}/kernel`, shape: [l.inSize, l.outSize], dtype: 'float32' as const },
    { name: `${denseName(i)}/bias`, shape: [l.outSize], dtype: 'float32' as const },
  ]);
  const modelJson: TfjsModelJson = {
    modelTopology: {
      class_name: 'Sequential',
      config: { name: 'sequential_1', layers },
      keras_version: `tfjs-layers ${TFJS_LAYERS_VERSION}`,
      backend: 'tensor_flow.js',
    },
    weightsManifest: [{ paths: [TFJS_WEIGHTS_BIN], weights }],
    format: TFJS_LAYERS_FORMAT,
    generatedBy: GENERATED_BY,
    convertedBy: CONVERTED_BY,
  };
  const weightsBin = new Uint8Array(Buffer.concat(p.layers.flatMap((l) => [littleEndianF32(l.w), littleEndianF32(l.b)])));
  return { modelJson, weightsBin };
}

// ---------------------------------------------------------------------------------------------- loading

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fail(message: string): never {
  throw new InputError(`${WHAT}: ${message}`);
}

function show(v: unknown): string {
  if (v === undefined) return 'missing';
  try {
    const s = JSON.stringify(v);
    return s.length > 60 ? `${s.slice(0, 57)}...` : s;
  } catch {
    return String(v);
  }
}

function isSize(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_LAYER_SIZE;
}

interface DenseSpec {
  name: string;
  units: number;
  activation: string;
  /** From batch_input_shape / batch_shape (first layer or InputLayer), when given. */
  inputSize?: number;
}

/** `[null, d]` → d; absent → undefined; anything else fails. */
function inputSizeOf(config: Json, where: string): number | undefined {
  const shape = config.batch_input_shape ?? config.batch_shape;
  if (shape === undefined || shape === null) return undefined;
  if (!Array.isArray(shape) || shape.length !== 2 || shape[0] !== null || !isSize(shape[1])) {
    fail(`${where} has input shape ${show(shape)}; only [null, features] (a flat vector per example) is supported`);
  }
  return shape[1];
}

function parseDtype(config: Json, where: string): void {
  const dtype = config.dtype;
  if (dtype === undefined || dtype === null || dtype === 'float32') return;
  // Keras 3 writes a DTypePolicy object.
  if (isObject(dtype) && isObject(dtype.config) && (dtype.config.name === 'float32' || dtype.config.name === undefined)) return;
  fail(`${where} has dtype ${show(dtype)}; only float32 is supported`);
}

function parseTopology(modelJson: Json): DenseSpec[] {
  let topology = modelJson.modelTopology;
  if (!isObject(topology)) fail(`modelTopology is ${show(topology)}; expected a keras model object`);
  if (topology.model_config !== undefined) {
    // The Python converter wraps the keras config as { keras_version, backend, model_config }.
    topology = topology.model_config;
    if (!isObject(topology)) fail('modelTopology.model_config is not an object');
  }
  if (topology.class_name !== 'Sequential') {
    fail(`the model is a ${show(topology.class_name)}; only a Sequential model of Dense layers is supported`);
  }
  const config = topology.config;
  const rawLayers: unknown = Array.isArray(config) ? config : isObject(config) ? config.layers : undefined;
  if (!Array.isArray(rawLayers)) fail('modelTopology.config.layers is not a list');
  const specs: DenseSpec[] = [];
  let pendingInput: number | undefined;
  rawLayers.forEach((layer: unknown, i: number) => {
    const where = `layer ${i}`;
    if (!isObject(layer) || !isObject(layer.config)) fail(`${where} is not a {class_name, config} object`);
    const c = layer.config;
    if (layer.class_name === 'InputLayer' && i === 0) {
      parseDtype(c, where);
      if (c.sparse === true || c.ragged === true) fail(`${where} is a sparse or ragged input`);
      pendingInput = inputSizeOf(c, where);
      if (pendingInput === undefined) fail(`${where} (InputLayer) has no batch_input_shape`);
      return;
    }
    if (layer.class_name !== 'Dense') {
      fail(`${where} is ${show(layer.class_name)}; only Dense layers are supported`);
    }
    const name = c.name;
    if (typeof name !== 'string' || name === '') fail(`${where} has no name`);
    if (!isSize(c.units)) fail(`${where} (${name}) has units ${show(c.units)}`);
    if (c.use_bias === false) fail(`${where} (${name}) has use_bias false; only Dense layers with a bias are supported`);
    const activation = c.activation === undefined || c.activation === null ? 'linear' : c.activation;
    if (typeof activation !== 'string') fail(`${where} (${name}) has activation ${show(activation)}`);
    parseDtype(c, where);
    const own = inputSizeOf(c, where);
    if (own !== undefined && specs.length > 0) fail(`${where} (${name}) declares an input shape but is not the first layer`);
    if (own !== undefined && pendingInput !== undefined && own !== pendingInput) {
      fail(`${where} (${name}) takes ${own} features but the InputLayer gives ${pendingInput}`);
    }
    const inputSize = specs.length === 0 ? (own ?? pendingInput) : undefined;
    specs.push({ name, units: c.units, activation, ...(inputSize !== undefined ? { inputSize } : {}) });
  });
  if (specs.length === 0) fail('the model has no Dense layers');
  if (specs.length > MAX_LAYERS) fail(`the model has ${specs.length} layers`);
  const names = new Set<string>();
  for (const s of specs) {
    if (names.has(s.name)) fail(`two layers are named ${s.name}`);
    names.add(s.name);
  }
  return specs;
}

interface ManifestEntry {
  name: string;
  shape: number[];
  /** Byte offset in the concatenated weights. */
  offset: number;
  count: number;
  skip: boolean;
}

function parseManifest(modelJson: Json): { entries: ManifestEntry[]; totalBytes: number } {
  const manifest = modelJson.weightsManifest;
  if (!Array.isArray(manifest) || manifest.length === 0) fail(`weightsManifest is ${show(manifest)}; expected a list of weight groups`);
  const entries: ManifestEntry[] = [];
  let offset = 0;
  manifest.forEach((group: unknown, g: number) => {
    if (!isObject(group)) fail(`weightsManifest[${g}] is not an object`);
    const paths = group.paths;
    if (!Array.isArray(paths) || paths.length === 0 || !paths.every((p) => typeof p === 'string' && p !== '')) {
      fail(`weightsManifest[${g}].paths is ${show(paths)}; expected a non-empty list of file names`);
    }
    if (!Array.isArray(group.weights)) fail(`weightsManifest[${g}].weights is not a list`);
    group.weights.forEach((w: unknown, k: number) => {
      const where = `weightsManifest[${g}].weights[${k}]`;
      if (!isObject(w)) fail(`${where} is not an object`);
      if (typeof w.name !== 'string' || w.name === '') fail(`${where} has no name`);
      const shape = w.shape;
      if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 0 && d <= MAX_LAYER_SIZE)) {
        fail(`weight ${w.name} has shape ${show(shape)}`);
      }
      if (w.quantization !== undefined && w.quantization !== null) fail(`weight ${w.name} is quantized; only plain float32 weights are supported`);
      if (w.dtype !== 'float32') fail(`weight ${w.name} has dtype ${show(w.dtype)}; only float32 is supported`);
      const count = shape.reduce((n: number, d: number) => n * d, 1);
      if (count > MAX_LAYER_SIZE * 64) fail(`weight ${w.name} has ${count} values`);
      entries.push({ name: w.name, shape: shape as number[], offset, count, skip: w.group === 'optimizer' });
      offset += count * 4;
    });
  });
  return { entries, totalBytes: offset };
}

/**
 * Parses and validates a TF.js layers model (`model.json` as an object or its text, and `weights.bin`).
 * When `expected` is given the model must have exactly that architecture. InputError says what is wrong.
 *
 * @example
 * const p = fromTfjsModel(JSON.parse(readFileSync('model.json', 'utf8')), readFileSync('weights.bin'), spec.architecture);
 */
export function fromTfjsModel(modelJson: unknown, weightsBin: Uint8Array, expected?: ArchitectureSpec): MlpParams {
  if (expected) checkArchitecture(expected);
  let json: unknown = modelJson;
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json) as unknown;
    } catch {
      fail('model.json is not valid JSON');
    }
  }
  if (!isObject(json)) fail(`model.json is ${show(json)}; expected an object`);
  if (json.format !== TFJS_LAYERS_FORMAT) {
    fail(`format is ${show(json.format)}; expected "${TFJS_LAYERS_FORMAT}" (a graph model or an unknown format cannot be loaded as an MLP)`);
  }
  if (!(weightsBin instanceof Uint8Array)) fail('the weights are not bytes');
  const specs = parseTopology(json);
  const { entries, totalBytes } = parseManifest(json);
  if (weightsBin.length !== totalBytes) {
    fail(`weights.bin has ${weightsBin.length} bytes but the manifest describes ${totalBytes} (${totalBytes / 4} float32 values)`);
  }

  const byName = new Map<string, ManifestEntry>();
  for (const e of entries) {
    if (byName.has(e.name)) fail(`the manifest lists weight ${e.name} twice`);
    byName.set(e.name, e);
  }
  const used = new Set<string>();
  const take = (name: string, shape: number[]): Float32Array => {
    const e = byName.get(name);
    if (!e) fail(`weight ${name} is missing from the manifest`);
    if (e.skip) fail(`weight ${name} is in the optimizer group`);
    if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i])) {
      fail(`weight ${name} has shape [${e.shape.join(', ')}] but the layers need [${shape.join(', ')}]`);
    }
    used.add(name);
    const values = new ByteReader(weightsBin.subarray(e.offset, e.offset + e.count * 4), WHAT).f32Array(e.count);
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) fail(`non-finite value ${values[i]} in ${name} at index ${i}`);
    }
    return values;
  };

  const last = specs.length - 1;
  const hiddenActivations = new Set(specs.slice(0, -1).map((s) => s.activation));
  for (const a of hiddenActivations) {
    if (!HIDDEN_ACTIVATIONS.includes(a as Activation)) fail(`hidden activation ${a} is not supported (relu or tanh)`);
  }
  if (hiddenActivations.size > 1) fail(`hidden layers mix activations ${[...hiddenActivations].join(' and ')}; an MLP here has one`);
  const outAct = specs[last]?.activation ?? '';
  if (!OUTPUT_ACTIVATIONS.includes(outAct as TfjsOutputActivation)) {
    fail(`output activation ${outAct} is not supported (linear or softmax)`);
  }
  const activation: Activation = ([...hiddenActivations][0] as Activation | undefined) ?? expected?.activation ?? 'relu';

  // The input size comes from the declared shape, else from the first kernel in the manifest.
  const first = specs[0];
  const firstKernel = first ? byName.get(`${first.name}/kernel`) : undefined;
  let inSize = first?.inputSize ?? (firstKernel && firstKernel.shape.length === 2 ? firstKernel.shape[0] : undefined);
  if (inSize === undefined || !isSize(inSize)) fail('the input size is neither declared (batch_input_shape) nor readable from the first kernel');
  const layers: MlpLayer[] = specs.map((s) => {
    const layer: MlpLayer = { w: take(`${s.name}/kernel`, [inSize as number, s.units]), b: take(`${s.name}/bias`, [s.units]), inSize: inSize as number, outSize: s.units };
    inSize = s.units;
    return layer;
  });
  const unused = entries.filter((e) => !e.skip && !used.has(e.name)).map((e) => e.name);
  if (unused.length > 0) fail(`weights ${unused.join(', ')} belong to no layer`);

  const params: MlpParams = { activation, layers };
  validateParams(params);
  if (expected) checkParamsMatch(params, expected);
  return params;
}

// ------------------------------------------------------------------------------------ single-blob form

const MAGIC = 'WFTJ';
const VERSION = 1;
const ARTIFACT = 'TF.js model artifact';

/**
 * One blob holding `model.json` and `weights.bin`, for the content-addressed store (one object per model).
 * Layout (little-endian): "WFTJ"  u32 version=1  u32-length-prefixed UTF-8 model.json
 * u32-length-prefixed weights.bin  sha256 of everything above. Deterministic: equal parameters, equal bytes.
 */
export function packTfjsArtifact(p: MlpParams, options: TfjsExportOptions = {}): Uint8Array {
  const { modelJson, weightsBin } = toTfjsModel(p, options);
  return packTfjsModel(modelJson, weightsBin);
}

/** Packs an already-built model.json + weights.bin pair (not validated here; `unpack`'s reader validates). */
export function packTfjsModel(modelJson: object, weightsBin: Uint8Array): Uint8Array {
  const out = new ByteWriter();
  out.ascii(MAGIC);
  out.u32(VERSION);
  out.utf8(JSON.stringify(modelJson));
  out.blob(weightsBin);
  return out.finishWithChecksum();
}

/** Splits a packed artifact; InputError on a wrong magic or version, corruption, truncation or unreadable JSON. */
export function unpackTfjsArtifact(bytes: Uint8Array): { modelJson: unknown; weightsBin: Uint8Array } {
  const r = openContainer(bytes, { magic: MAGIC, version: VERSION, what: ARTIFACT });
  const text = r.utf8();
  const weightsBin = r.blob();
  r.expectEnd();
  let modelJson: unknown;
  try {
    modelJson = JSON.parse(text) as unknown;
  } catch {
    throw new InputError(`${ARTIFACT}: model.json is not valid JSON`);
  }
  return { modelJson, weightsBin };
}

/** `unpackTfjsArtifact` then `fromTfjsModel`. */
export function tfjsArtifactToParams(bytes: Uint8Array, expected?: ArchitectureSpec): MlpParams {
  const { modelJson, weightsBin } = unpackTfjsArtifact(bytes);
  return fromTfjsModel(modelJson, weightsBin, expected);
}

// ------------------------------------------------------------------------------------------- directory

async function writeAtomic(target: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${target}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  try {
    await fs.writeFile(tmp, data);
    await fs.rename(tmp, target);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Writes `dir/model.json` and `dir/weights.bin` (creating `dir`), each to a temporary name then renamed,
 * weights first: a reader never sees a half-written file, and a model.json is never newer than its
 * weights. `tf.loadLayersModel('file://<dir>/model.json')` (tfjs-node) loads the result.
 */
export async function writeTfjsModelDir(dir: string, p: MlpParams, options: TfjsExportOptions = {}): Promise<{ modelJsonPath: string; weightsBinPath: string }> {
  const { modelJson, weightsBin } = toTfjsModel(p, options);
  await fs.mkdir(dir, { recursive: true });
  const weightsBinPath = path.join(dir, TFJS_WEIGHTS_BIN);
  const modelJsonPath = path.join(dir, TFJS_MODEL_JSON);
  await writeAtomic(weightsBinPath, weightsBin);
  await writeAtomic(modelJsonPath, JSON.stringify(modelJson));
  return { modelJsonPath, weightsBinPath };
}

/**
 * Reads a layers model from `dir` (or from the `model.json` path given): the manifest's weight files are
 * read relative to it and concatenated in order, as the TF.js loader does. Weight paths must stay inside
 * the model's directory.
 */
export async function readTfjsModelDir(dirOrModelJson: string, expected?: ArchitectureSpec): Promise<MlpParams> {
  const modelJsonPath = dirOrModelJson.endsWith('.json') ? dirOrModelJson : path.join(dirOrModelJson, TFJS_MODEL_JSON);
  const dir = path.dirname(modelJsonPath);
  let text: string;
  try {
    text = await fs.readFile(modelJsonPath, 'utf8');
  } catch (err) {
    throw new InputError(`cannot read ${modelJsonPath}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text) as unknown;
  } catch {
    throw new InputError(`${modelJsonPath} is not valid JSON`);
  }
  const manifest = isObject(json) ? json.weightsManifest : undefined;
  if (!Array.isArray(manifest)) throw new InputError(`${modelJsonPath}: weightsManifest is not a list`);
  const chunks: Buffer[] = [];
  for (const group of manifest) {
    const paths: unknown = isObject(group) ? group.paths : undefined;
    if (!Array.isArray(paths)) throw new InputError(`${modelJsonPath}: a weight group has no paths`);
    for (const rel of paths) {
      if (typeof rel !== 'string' || path.isAbsolute(rel)) throw new InputError(`${modelJsonPath}: weight path ${show(rel)} is not relative`);
      const file = path.resolve(dir, rel);
      if (path.relative(dir, file).startsWith('..')) throw new InputError(`${modelJsonPath}: weight path ${rel} leaves the model directory`);
      try {
        chunks.push(await fs.readFile(file));
      } catch (err) {
        throw new InputError(`cannot read weight file ${file}: ${(err as Error).message}`);
      }
    }
  }
  return fromTfjsModel(json, new Uint8Array(Buffer.concat(chunks)), expected);
}
