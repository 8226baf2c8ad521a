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
import type { ArchitectureSpec } from '../spec/types';
import { InputError } from '../util/errors';
import { ByteWriter, openContainer } from './bytes';
import type { Activation, MlpLayer, MlpParams } from './mlp';
import { checkArchitecture, checkParamsMatch } from './mlp';
import { validateParams } from './params-io';
import type { Json, TfjsLayersModelJson, TfjsWeightEntry } from './tfjs-layers';
import {
  checkFloat32Dtype,
  denseLayerConfig,
  isObject,
  manifestWeights,
  MAX_TFJS_SIZE,
  openLayersModel,
  readModelDir,
  sequentialLayers,
  sequentialModel,
  show,
  TFJS_LAYERS_FORMAT,
  writeModelDir,
} from './tfjs-layers';

export { TFJS_LAYERS_FORMAT, TFJS_LAYERS_VERSION, TFJS_MODEL_JSON, TFJS_WEIGHTS_BIN } from './tfjs-layers';
export type { TfjsWeightEntry } from './tfjs-layers';
/** Fixed (no versions, dates or hosts), so equal parameters always give equal bytes and one content address. */
const GENERATED_BY = 'weightformer-pipelines trainMlp (TensorFlow.js tfjs-core)';
const CONVERTED_BY = 'weightformer-pipelines toTfjsModel v1';

export type TfjsOutputActivation = 'linear' | 'softmax';

export interface TfjsExportOptions {
  /** Activation of the last Dense layer; default `linear` (predict returns logits). */
  outputActivation?: TfjsOutputActivation;
}

/** The content of `model.json` as written here (a subset of tfjs-core's `io.ModelJSON`). */
export type TfjsModelJson = TfjsLayersModelJson<{ class_name: 'Dense'; config: Record<string, unknown> }>;

export interface TfjsModel {
  modelJson: TfjsModelJson;
  weightsBin: Uint8Array;
}

const WHAT = 'TF.js model';
const HIDDEN_ACTIVATIONS: readonly Activation[] = ['relu', 'tanh'];
const OUTPUT_ACTIVATIONS: readonly TfjsOutputActivation[] = ['linear', 'softmax'];
/** Sanity bound, as in params-io: anything larger is damage, not a model we could run. */
const MAX_LAYERS = 256;

function denseName(i: number): string {
  return `dense_Dense${i + 1}`;
}

/** A Dense layer's config; the first also carries the input shape and dtype. */
function denseConfig(i: number, units: number, activation: string, inputSize: number | undefined): Record<string, unknown> {
  const config = denseLayerConfig(denseName(i), units, activation);
  if (inputSize !== undefined) {
    config.batch_input_shape = [null, inputSize];
    config.dtype = 'float32';
  }
  return config;
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
  const weights = p.layers.flatMap((l, i): Array<[TfjsWeightEntry, Float32Array]> => [
    [{ name: `${denseName(i)}/kernel`, shape: [l.inSize, l.outSize], dtype: 'float32' }, l.w],
    [{ name: `${denseName(i)}/bias`, shape: [l.outSize], dtype: 'float32' }, l.b],
  ]);
  return sequentialModel(layers, weights, GENERATED_BY, CONVERTED_BY);
}

// ---------------------------------------------------------------------------------------------- loading

function fail(message: string): never {
  throw new InputError(`${WHAT}: ${message}`);
}

function isSize(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_TFJS_SIZE;
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

function parseTopology(modelJson: Json): DenseSpec[] {
  const rawLayers = sequentialLayers(WHAT, modelJson, 'only a Sequential model of Dense layers is supported');
  const specs: DenseSpec[] = [];
  let pendingInput: number | undefined;
  rawLayers.forEach((layer: unknown, i: number) => {
    const where = `layer ${i}`;
    if (!isObject(layer) || !isObject(layer.config)) fail(`${where} is not a {class_name, config} object`);
    const c = layer.config;
    if (layer.class_name === 'InputLayer' && i === 0) {
      checkFloat32Dtype(WHAT, c, where);
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
    checkFloat32Dtype(WHAT, c, where);
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

/**
 * Parses and validates a TF.js layers model (`model.json` as an object or its text, and `weights.bin`).
 * When `expected` is given the model must have exactly that architecture. InputError says what is wrong.
 *
 * @example
 * const p = fromTfjsModel(JSON.parse(readFileSync('model.json', 'utf8')), readFileSync('weights.bin'), spec.architecture);
 */
export function fromTfjsModel(modelJson: unknown, weightsBin: Uint8Array, expected?: ArchitectureSpec): MlpParams {
  if (expected) checkArchitecture(expected);
  const json = openLayersModel(WHAT, modelJson, weightsBin, ' (a graph model or an unknown format cannot be loaded as an MLP)');
  const specs = parseTopology(json);
  const weights = manifestWeights(WHAT, json, weightsBin);

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
  const firstKernel = first ? weights.entry(`${first.name}/kernel`) : undefined;
  let inSize = first?.inputSize ?? (firstKernel && firstKernel.shape.length === 2 ? firstKernel.shape[0] : undefined);
  if (inSize === undefined || !isSize(inSize)) fail('the input size is neither declared (batch_input_shape) nor readable from the first kernel');
  const layers: MlpLayer[] = specs.map((s) => {
    const layer: MlpLayer = { w: weights.take(`${s.name}/kernel`, [inSize as number, s.units]), b: weights.take(`${s.name}/bias`, [s.units]), inSize: inSize as number, outSize: s.units };
    inSize = s.units;
    return layer;
  });
  weights.finish();

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

/**
 * Writes `dir/model.json` and `dir/weights.bin` (creating `dir`), each to a temporary name then renamed,
 * weights first: a reader never sees a half-written file, and a model.json is never newer than its
 * weights. `tf.loadLayersModel('file://<dir>/model.json')` (tfjs-node) loads the result.
 */
export async function writeTfjsModelDir(dir: string, p: MlpParams, options: TfjsExportOptions = {}): Promise<{ modelJsonPath: string; weightsBinPath: string }> {
  const { modelJson, weightsBin } = toTfjsModel(p, options);
  return writeModelDir(dir, modelJson, weightsBin);
}

/**
 * Reads a layers model from `dir` (or from the `model.json` path given): the manifest's weight files are
 * read relative to it and concatenated in order, as the TF.js loader does. Weight paths must stay inside
 * the model's directory.
 */
export async function readTfjsModelDir(dirOrModelJson: string, expected?: ArchitectureSpec): Promise<MlpParams> {
  const { modelJson, weightsBin } = await readModelDir(dirOrModelJson);
  return fromTfjsModel(modelJson, weightsBin, expected);
}
