/**
 * What the TF.js layers formats of every family share (`tfjs-format.ts` for MLPs, `formats/tfjs-cnn.ts`
 * for CNNs): the file-level conventions — `model.json`'s top-level keys in tfjs-layers' order, one
 * manifest group, `weights.bin` the little-endian float32 values in manifest order, a Dense layer's config
 * — and the family-independent half of reading: the JSON and format checks, the Sequential layer list,
 * the weights manifest, taking weights by name and shape, and the directory form (`model.json` plus the
 * manifest's weight files).
 *
 * Errors are InputErrors prefixed with the caller's `what` (e.g. "TF.js model: …"), so each format keeps
 * its own messages.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../store/store';
import { InputError } from '../util/errors';
import { ByteReader } from './bytes';

/** The `format` of a layers model (tfjs-layers' LAYERS_MODEL_FORMAT_NAME). */
export const TFJS_LAYERS_FORMAT = 'layers-model';
/** The tfjs-layers version whose on-disk layout these modules write. */
export const TFJS_LAYERS_VERSION = '4.22.0';
export const TFJS_MODEL_JSON = 'model.json';
export const TFJS_WEIGHTS_BIN = 'weights.bin';
/** Sanity bound on a dimension: anything larger is damage, not a model we could run. */
export const MAX_TFJS_SIZE = 1 << 24;

export interface TfjsWeightEntry {
  name: string;
  shape: number[];
  dtype: 'float32';
}

/** The content of `model.json` as written here (a subset of tfjs-core's `io.ModelJSON`), `L` a layer's JSON. */
export interface TfjsLayersModelJson<L> {
  modelTopology: {
    class_name: 'Sequential';
    config: { name: string; layers: L[] };
    keras_version: string;
    backend: string;
  };
  weightsManifest: Array<{ paths: string[]; weights: TfjsWeightEntry[] }>;
  format: typeof TFJS_LAYERS_FORMAT;
  generatedBy: string;
  convertedBy: string | null;
}

// ------------------------------------------------------------------------------------------ writing

export const GLOROT_NORMAL = { class_name: 'VarianceScaling', config: { scale: 1, mode: 'fan_avg', distribution: 'normal', seed: null } };
export const ZEROS = { class_name: 'Zeros', config: {} };

/** A Dense layer's config, keys in tfjs-layers' order (Dense.getConfig, then Layer.getConfig). */
export function denseLayerConfig(name: string, units: number, activation: string): Record<string, unknown> {
  return {
    units,
    activation,
    use_bias: true,
    kernel_initializer: GLOROT_NORMAL,
    bias_initializer: ZEROS,
    kernel_regularizer: null,
    bias_regularizer: null,
    activity_regularizer: null,
    kernel_constraint: null,
    bias_constraint: null,
    name,
    trainable: true,
  };
}

export function littleEndianF32(values: Float32Array): Buffer {
  const out = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i] ?? 0, i * 4);
  return out;
}

/**
 * A Sequential model's `model.json` (one manifest group, `weights.bin`) and its `weights.bin`: the values
 * of `weights`, in order, as little-endian float32.
 */
export function sequentialModel<L>(
  layers: L[],
  weights: Array<[TfjsWeightEntry, Float32Array]>,
  generatedBy: string,
  convertedBy: string,
): { modelJson: TfjsLayersModelJson<L>; weightsBin: Uint8Array } {
  const modelJson: TfjsLayersModelJson<L> = {
    modelTopology: {
      class_name: 'Sequential',
      config: { name: 'sequential_1', layers },
      keras_version: `tfjs-layers ${TFJS_LAYERS_VERSION}`,
      backend: 'tensor_flow.js',
    },
    weightsManifest: [{ paths: [TFJS_WEIGHTS_BIN], weights: weights.map(([e]) => e) }],
    format: TFJS_LAYERS_FORMAT,
    generatedBy,
    convertedBy,
  };
  return { modelJson, weightsBin: new Uint8Array(Buffer.concat(weights.map(([, v]) => littleEndianF32(v)))) };
}

/**
 * Writes `dir/model.json` and `dir/weights.bin` (creating `dir`), each to a temporary name then renamed,
 * weights first: a reader never sees a half-written file, and a model.json is never newer than its weights.
 */
export async function writeModelDir(dir: string, modelJson: object, weightsBin: Uint8Array): Promise<{ modelJsonPath: string; weightsBinPath: string }> {
  await fs.mkdir(dir, { recursive: true });
  const weightsBinPath = path.join(dir, TFJS_WEIGHTS_BIN);
  const modelJsonPath = path.join(dir, TFJS_MODEL_JSON);
  await writeFileAtomic(weightsBinPath, weightsBin);
  await writeFileAtomic(modelJsonPath, JSON.stringify(modelJson));
  return { modelJsonPath, weightsBinPath };
}

// ------------------------------------------------------------------------------------------ reading

export type Json = Record<string, unknown>;

export function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A value for an error message: its JSON, cut at 60 characters; `missing` for undefined. */
export function show(v: unknown): string {
  if (v === undefined) return 'missing';
  try {
    const s = JSON.stringify(v) ?? String(v);
    return s.length > 60 ? `${s.slice(0, 57)}...` : s;
  } catch {
    return String(v);
  }
}

function fail(what: string, message: string): never {
  throw new InputError(`${what}: ${message}`);
}

/**
 * `modelJson` (an object or its text) as an object of the layers format, with `weightsBin` bytes;
 * `formatNote` is appended to the wrong-format message.
 */
export function openLayersModel(what: string, modelJson: unknown, weightsBin: Uint8Array, formatNote = ''): Json {
  let json: unknown = modelJson;
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json) as unknown;
    } catch {
      fail(what, 'model.json is not valid JSON');
    }
  }
  if (!isObject(json)) fail(what, `model.json is ${show(json)}; expected an object`);
  if (json.format !== TFJS_LAYERS_FORMAT) fail(what, `format is ${show(json.format)}; expected "${TFJS_LAYERS_FORMAT}"${formatNote}`);
  if (!(weightsBin instanceof Uint8Array)) fail(what, 'the weights are not bytes');
  return json;
}

/** The raw layer list of a Sequential topology (the Python converter's `model_config` wrapper unwrapped). */
export function sequentialLayers(what: string, modelJson: Json, supported: string): unknown[] {
  let topology = modelJson.modelTopology;
  if (!isObject(topology)) fail(what, `modelTopology is ${show(topology)}; expected a keras model object`);
  if (topology.model_config !== undefined) {
    // The Python converter wraps the keras config as { keras_version, backend, model_config }.
    topology = topology.model_config;
    if (!isObject(topology)) fail(what, 'modelTopology.model_config is not an object');
  }
  if (topology.class_name !== 'Sequential') fail(what, `the model is a ${show(topology.class_name)}; ${supported}`);
  const config = topology.config;
  const raw: unknown = Array.isArray(config) ? config : isObject(config) ? config.layers : undefined;
  if (!Array.isArray(raw)) fail(what, 'modelTopology.config.layers is not a list');
  return raw;
}

/** Refuses a layer dtype other than float32 (a string, or Keras 3's DTypePolicy object). */
export function checkFloat32Dtype(what: string, config: Json, where: string): void {
  const dtype = config.dtype;
  if (dtype === undefined || dtype === null || dtype === 'float32') return;
  // Keras 3 writes a DTypePolicy object.
  if (isObject(dtype) && isObject(dtype.config) && (dtype.config.name === 'float32' || dtype.config.name === undefined)) return;
  fail(what, `${where} has dtype ${show(dtype)}; only float32 is supported`);
}

export interface ManifestEntry {
  name: string;
  shape: number[];
  /** Byte offset in the concatenated weights. */
  offset: number;
  count: number;
  skip: boolean;
}

function parseManifest(what: string, modelJson: Json): { entries: ManifestEntry[]; totalBytes: number } {
  const manifest = modelJson.weightsManifest;
  if (!Array.isArray(manifest) || manifest.length === 0) fail(what, `weightsManifest is ${show(manifest)}; expected a list of weight groups`);
  const entries: ManifestEntry[] = [];
  let offset = 0;
  manifest.forEach((group: unknown, g: number) => {
    if (!isObject(group)) fail(what, `weightsManifest[${g}] is not an object`);
    const paths = group.paths;
    if (!Array.isArray(paths) || paths.length === 0 || !paths.every((p) => typeof p === 'string' && p !== '')) {
      fail(what, `weightsManifest[${g}].paths is ${show(paths)}; expected a non-empty list of file names`);
    }
    if (!Array.isArray(group.weights)) fail(what, `weightsManifest[${g}].weights is not a list`);
    group.weights.forEach((w: unknown, k: number) => {
      const where = `weightsManifest[${g}].weights[${k}]`;
      if (!isObject(w)) fail(what, `${where} is not an object`);
      if (typeof w.name !== 'string' || w.name === '') fail(what, `${where} has no name`);
      const shape = w.shape;
      if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 0 && d <= MAX_TFJS_SIZE)) {
        fail(what, `weight ${w.name} has shape ${show(shape)}`);
      }
      if (w.quantization !== undefined && w.quantization !== null) fail(what, `weight ${w.name} is quantized; only plain float32 weights are supported`);
      if (w.dtype !== 'float32') fail(what, `weight ${w.name} has dtype ${show(w.dtype)}; only float32 is supported`);
      const count = (shape as number[]).reduce((n, d) => n * d, 1);
      if (count > MAX_TFJS_SIZE * 64) fail(what, `weight ${w.name} has ${count} values`);
      entries.push({ name: w.name, shape: shape as number[], offset, count, skip: w.group === 'optimizer' });
      offset += count * 4;
    });
  });
  return { entries, totalBytes: offset };
}

/** The manifest's weights over `weightsBin`: each taken by name at a required shape, once. */
export interface TfjsWeights {
  /** The manifest entry of `name`, if any. */
  entry(name: string): ManifestEntry | undefined;
  /** `name`'s values (finite, float32) at exactly `shape`. */
  take(name: string, shape: number[]): Float32Array;
  /** Refuses weights no `take` asked for (the optimizer group aside). */
  finish(): void;
}

/**
 * Parses and checks the weights manifest of `modelJson` against `weightsBin` (exact byte length, unique
 * names); InputError says what is wrong.
 */
export function manifestWeights(what: string, modelJson: Json, weightsBin: Uint8Array): TfjsWeights {
  const { entries, totalBytes } = parseManifest(what, modelJson);
  if (weightsBin.length !== totalBytes) {
    fail(what, `weights.bin has ${weightsBin.length} bytes but the manifest describes ${totalBytes} (${totalBytes / 4} float32 values)`);
  }
  const byName = new Map<string, ManifestEntry>();
  for (const e of entries) {
    if (byName.has(e.name)) fail(what, `the manifest lists weight ${e.name} twice`);
    byName.set(e.name, e);
  }
  const used = new Set<string>();
  return {
    entry: (name) => byName.get(name),
    take(name, shape) {
      const e = byName.get(name);
      if (!e) fail(what, `weight ${name} is missing from the manifest`);
      if (e.skip) fail(what, `weight ${name} is in the optimizer group`);
      if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i])) {
        fail(what, `weight ${name} has shape [${e.shape.join(', ')}] but the layers need [${shape.join(', ')}]`);
      }
      used.add(name);
      const values = new ByteReader(weightsBin.subarray(e.offset, e.offset + e.count * 4), what).f32Array(e.count);
      for (let i = 0; i < values.length; i++) {
        if (!Number.isFinite(values[i])) fail(what, `non-finite value ${values[i]} in ${name} at index ${i}`);
      }
      return values;
    },
    finish() {
      const unused = entries.filter((e) => !e.skip && !used.has(e.name)).map((e) => e.name);
      if (unused.length > 0) fail(what, `weights ${unused.join(', ')} belong to no layer`);
    },
  };
}

/**
 * Reads `model.json` from `dir` (or the path given) and the manifest's weight files relative to it,
 * concatenated in order as the TF.js loader does. Weight paths must stay inside the model's directory.
 */
export async function readModelDir(dirOrModelJson: string): Promise<{ modelJson: unknown; weightsBin: Uint8Array }> {
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
  return { modelJson: json, weightsBin: new Uint8Array(Buffer.concat(chunks)) };
}
