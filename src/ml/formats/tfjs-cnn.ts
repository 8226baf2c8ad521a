/**
 * CNN teachers in the TensorFlow.js *layers* format: the `model.json` + `weights.bin` pair that
 * tfjs-layers' `model.save('file://dir')` writes and `tf.loadLayersModel('file://dir/model.json')` reads —
 * the CNN counterpart of `tfjs-format.ts` (MLPs), whose file-level conventions it shares (top-level keys,
 * one manifest group, `weights.bin` the little-endian float32 values in manifest order).
 *
 * Written as tfjs-layers 4.22 itself saves the equivalent `tf.sequential()` (layer names, config keys in
 * its order, weights trainable first then BN's moving statistics, as `model.weights` lists them):
 *
 *   per block b (n = b + 1):
 *     Conv2D `conv2d_Conv2D{n}`: filters cout, kernel_size [k, k], strides [1, 1], padding 'same',
 *       activation 'linear' with BN / 'relu' without; the first carries batch_input_shape [null, h, w, c]
 *     [BatchNormalization `batch_normalization_BatchNormalization{n}`: axis -1, epsilon 1e-5 (ours,
 *       PyTorch's), momentum 0.9 (Keras counts momentum the other way round: 1 − PyTorch's 0.1)]
 *     [Activation `activation_Activation{n}`: relu — with BN, which must sit between conv and ReLU]
 *     MaxPooling2D `max_pooling2d_MaxPooling2D{n}` / AveragePooling2D `average_pooling2d_AveragePooling2D{n}`:
 *       pool_size [2, 2], strides [2, 2], padding 'valid'
 *   Flatten `flatten_Flatten1`
 *   Dense `dense_Dense{j}`: relu between, linear last (predict returns the logits)
 *
 *   | weight                                  | shape            | CnnParams                          |
 *   |-----------------------------------------|------------------|------------------------------------|
 *   | `conv2d_Conv2D{n}/kernel`               | [k, k, cin, cout]| `convs[b].kernel` (same layout)    |
 *   | `conv2d_Conv2D{n}/bias`                 | [cout]           | `convs[b].bias`                    |
 *   | `batch_normalization_…{n}/gamma`, `/beta` | [cout]         | `convs[b].bn.gamma`, `.beta`       |
 *   | `…/moving_mean`, `/moving_variance`     | [cout]           | `convs[b].bn.runningMean`, `.runningVar` |
 *   | `dense_Dense{j}/kernel`                 | [in, out]        | `dense[j-1].w` (same layout)       |
 *   | `dense_Dense{j}/bias`                   | [out]            | `dense[j-1].b`                     |
 *
 * Nothing is transposed or permuted: TF.js is NHWC like our CNN, its kernels are ours, and its Flatten
 * is HWC, channel fastest, as our head reads it.
 *
 * Reading accepts, beyond what is written: layer names of any kind (weights are found by the layer's
 * `name`), the Python converter's `model_config` wrapper, a leading InputLayer, `batch_shape` (Keras 3), a
 * ReLU layer for the Activation, a Conv2D with activation relu and no BN, `use_bias: false` (zero bias),
 * BN `center`/`scale` false (β 0 / γ 1), axis 3 for -1, a softmax output (its pre-activation is the
 * logits), manifest entries of `group: 'optimizer'` (skipped), several weight paths (pass their contents
 * concatenated), and a BN epsilon other than ours: folded into the running variance (var + ε − 1e-5 gives
 * the same normalisation; refused if that goes negative). Refused with an InputError naming the layer or
 * weight: any other layer or order, strides, padding, dilation or pool geometry we do not compute, channels
 * first, non-float32 or quantized weights, missing, repeated or unused weights, wrong shapes, a byte
 * length that is not exact, non-finite values, and an architecture other than `expected`.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../store/store';
import { InputError } from '../../util/errors';
import { ByteReader } from '../bytes';
import type { CnnArchitecture, CnnBatchNorm, CnnConvBlock, CnnParams, CnnPool } from '../cnn/architecture';
import { BN_EPSILON, BN_MOMENTUM, checkCnnArchitecture, checkCnnParamsMatch, validateCnnParams } from '../cnn/architecture';
import type { MlpLayer } from '../mlp';
import type { TfjsWeightEntry } from '../tfjs-format';
import { TFJS_LAYERS_FORMAT, TFJS_LAYERS_VERSION, TFJS_MODEL_JSON, TFJS_WEIGHTS_BIN } from '../tfjs-format';

/** Fixed (no versions, dates or hosts), so equal parameters always give equal bytes. */
const GENERATED_BY = 'weightformer-pipelines trainCnn (TensorFlow.js tfjs-core)';
const CONVERTED_BY = 'weightformer-pipelines toTfjsCnnModel v1';
const WHAT = 'TF.js CNN model';
/** Sanity bounds: anything larger is damage, not a model we could run. */
const MAX_SIZE = 1 << 24;
const MAX_LAYERS = 1024;

export interface TfjsLayerJson {
  class_name: string;
  config: Record<string, unknown>;
}

/** The content of `model.json` as written here (a subset of tfjs-core's `io.ModelJSON`). */
export interface TfjsCnnModelJson {
  modelTopology: {
    class_name: 'Sequential';
    config: { name: string; layers: TfjsLayerJson[] };
    keras_version: string;
    backend: string;
  };
  weightsManifest: Array<{ paths: string[]; weights: TfjsWeightEntry[] }>;
  format: typeof TFJS_LAYERS_FORMAT;
  generatedBy: string;
  convertedBy: string | null;
}

export interface TfjsCnnModel {
  modelJson: TfjsCnnModelJson;
  weightsBin: Uint8Array;
}

// ------------------------------------------------------------------------------------------ writing

const GLOROT_NORMAL = { class_name: 'VarianceScaling', config: { scale: 1, mode: 'fan_avg', distribution: 'normal', seed: null } };
const ZEROS = { class_name: 'Zeros', config: {} };
const ONES = { class_name: 'Ones', config: {} };

/** Conv2D.getConfig's keys in tfjs-layers' order (Conv2D, BaseConv, then Layer). */
function conv2dConfig(n: number, c: CnnConvBlock, activation: string, inputShape: [number, number, number] | undefined): Record<string, unknown> {
  const config: Record<string, unknown> = {
    filters: c.outChannels,
    kernel_initializer: GLOROT_NORMAL,
    kernel_regularizer: null,
    kernel_constraint: null,
    kernel_size: [c.kernelSize, c.kernelSize],
    strides: [1, 1],
    padding: 'same',
    data_format: 'channels_last',
    dilation_rate: [1, 1],
    activation,
    use_bias: true,
    bias_initializer: ZEROS,
    bias_regularizer: null,
    activity_regularizer: null,
    bias_constraint: null,
    name: `conv2d_Conv2D${n}`,
    trainable: true,
  };
  if (inputShape) {
    config.batch_input_shape = [null, ...inputShape];
    config.dtype = 'float32';
  }
  return config;
}

function batchNormConfig(n: number): Record<string, unknown> {
  return {
    axis: -1,
    momentum: 1 - BN_MOMENTUM,
    epsilon: BN_EPSILON,
    center: true,
    scale: true,
    beta_initializer: ZEROS,
    gamma_initializer: ONES,
    moving_mean_initializer: ZEROS,
    moving_variance_initializer: ONES,
    beta_regularizer: null,
    gamma_regularizer: null,
    beta_constraint: null,
    gamma_constraint: null,
    name: `batch_normalization_BatchNormalization${n}`,
    trainable: true,
  };
}

function poolLayer(n: number, pool: CnnPool): TfjsLayerJson {
  const [className, name] = pool === 'max' ? ['MaxPooling2D', `max_pooling2d_MaxPooling2D${n}`] : ['AveragePooling2D', `average_pooling2d_AveragePooling2D${n}`];
  return { class_name: className, config: { pool_size: [2, 2], padding: 'valid', strides: [2, 2], data_format: 'channels_last', name, trainable: true } };
}

function denseConfig(j: number, units: number, activation: string): Record<string, unknown> {
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
    name: `dense_Dense${j}`,
    trainable: true,
  };
}

function littleEndianF32(values: Float32Array): Buffer {
  const out = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i] ?? 0, i * 4);
  return out;
}

/**
 * `p` as a TF.js layers model (the module comment's layout): the `model.json` object and the
 * `weights.bin` bytes. Refuses (InputError) what `validateCnnParams` refuses, non-finite values included.
 *
 * @example
 * const { modelJson, weightsBin } = toTfjsCnnModel(teacher);
 */
export function toTfjsCnnModel(p: CnnParams): TfjsCnnModel {
  validateCnnParams(p);
  const layers: TfjsLayerJson[] = [];
  const trainable: Array<[TfjsWeightEntry, Float32Array]> = [];
  const statistics: Array<[TfjsWeightEntry, Float32Array]> = [];
  const entry = (name: string, values: Float32Array, shape: number[]): [TfjsWeightEntry, Float32Array] => [{ name, shape, dtype: 'float32' }, values];
  p.convs.forEach((c, b) => {
    const n = b + 1;
    const conv = conv2dConfig(n, c, c.bn ? 'linear' : 'relu', b === 0 ? p.inputShape : undefined);
    layers.push({ class_name: 'Conv2D', config: conv });
    trainable.push(entry(`${conv.name as string}/kernel`, c.kernel, [c.kernelSize, c.kernelSize, c.inChannels, c.outChannels]));
    trainable.push(entry(`${conv.name as string}/bias`, c.bias, [c.outChannels]));
    if (c.bn) {
      const bn = batchNormConfig(n);
      layers.push({ class_name: 'BatchNormalization', config: bn });
      trainable.push(entry(`${bn.name as string}/gamma`, c.bn.gamma, [c.outChannels]));
      trainable.push(entry(`${bn.name as string}/beta`, c.bn.beta, [c.outChannels]));
      statistics.push(entry(`${bn.name as string}/moving_mean`, c.bn.runningMean, [c.outChannels]));
      statistics.push(entry(`${bn.name as string}/moving_variance`, c.bn.runningVar, [c.outChannels]));
      layers.push({ class_name: 'Activation', config: { activation: 'relu', name: `activation_Activation${n}`, trainable: true } });
    }
    layers.push(poolLayer(n, p.pool));
  });
  layers.push({ class_name: 'Flatten', config: { name: 'flatten_Flatten1', trainable: true } });
  p.dense.forEach((l, i) => {
    const config = denseConfig(i + 1, l.outSize, i + 1 === p.dense.length ? 'linear' : 'relu');
    layers.push({ class_name: 'Dense', config });
    trainable.push(entry(`${config.name as string}/kernel`, l.w, [l.inSize, l.outSize]));
    trainable.push(entry(`${config.name as string}/bias`, l.b, [l.outSize]));
  });
  const all = [...trainable, ...statistics];
  const modelJson: TfjsCnnModelJson = {
    modelTopology: {
      class_name: 'Sequential',
      config: { name: 'sequential_1', layers },
      keras_version: `tfjs-layers ${TFJS_LAYERS_VERSION}`,
      backend: 'tensor_flow.js',
    },
    weightsManifest: [{ paths: [TFJS_WEIGHTS_BIN], weights: all.map(([e]) => e) }],
    format: TFJS_LAYERS_FORMAT,
    generatedBy: GENERATED_BY,
    convertedBy: CONVERTED_BY,
  };
  return { modelJson, weightsBin: new Uint8Array(Buffer.concat(all.map(([, v]) => littleEndianF32(v)))) };
}

// ------------------------------------------------------------------------------------------ reading

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fail(message: string): never {
  throw new InputError(`${WHAT}: ${message}`);
}

function show(v: unknown): string {
  if (v === undefined) return 'missing';
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function isSize(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_SIZE;
}

/** `[a, a]` or a bare `a` (Keras accepts both) equal to `want`. */
function isPair(v: unknown, want: number): boolean {
  return v === want || (Array.isArray(v) && v.length === 2 && v[0] === want && v[1] === want);
}

/** `[null, h, w, c]` → [h, w, c]; absent → undefined; anything else fails. */
function imageShapeOf(config: Json, where: string): [number, number, number] | undefined {
  const shape = config.batch_input_shape ?? config.batch_shape;
  if (shape === undefined || shape === null) return undefined;
  if (!Array.isArray(shape) || shape.length !== 4 || shape[0] !== null || !shape.slice(1).every(isSize)) {
    fail(`${where} has input shape ${show(shape)}; expected [null, height, width, channels]`);
  }
  return [shape[1] as number, shape[2] as number, shape[3] as number];
}

function checkDtype(config: Json, where: string): void {
  const dtype = config.dtype;
  if (dtype === undefined || dtype === null || dtype === 'float32') return;
  // Keras 3 writes a DTypePolicy object.
  if (isObject(dtype) && isObject(dtype.config) && (dtype.config.name === 'float32' || dtype.config.name === undefined)) return;
  fail(`${where} has dtype ${show(dtype)}; only float32 is supported`);
}

function checkChannelsLast(config: Json, where: string): void {
  const f = config.data_format;
  if (f !== undefined && f !== null && f !== 'channels_last') fail(`${where} has data_format ${show(f)}; only channels_last (NHWC) is supported`);
}

interface ConvSpec {
  name: string;
  filters: number;
  kernelSize: number;
  useBias: boolean;
  bn?: { name: string; epsilon: number; center: boolean; scale: boolean };
}

interface DenseSpec {
  name: string;
  units: number;
  activation: string;
}

interface Topology {
  inputShape?: [number, number, number];
  pool: CnnPool;
  convs: ConvSpec[];
  dense: DenseSpec[];
}

function layerName(config: Json, where: string): string {
  if (typeof config.name !== 'string' || config.name === '') fail(`${where} has no name`);
  return config.name;
}

/** The layer list as a sequence of blocks, Flatten, Dense layers (the module comment's grammar). */
function parseTopology(modelJson: Json): Topology {
  let topology = modelJson.modelTopology;
  if (!isObject(topology)) fail(`modelTopology is ${show(topology)}; expected a keras model object`);
  if (topology.model_config !== undefined) {
    // The Python converter wraps the keras config as { keras_version, backend, model_config }.
    topology = topology.model_config;
    if (!isObject(topology)) fail('modelTopology.model_config is not an object');
  }
  if (topology.class_name !== 'Sequential') fail(`the model is a ${show(topology.class_name)}; only a Sequential model is supported`);
  const config = topology.config;
  const raw: unknown = Array.isArray(config) ? config : isObject(config) ? config.layers : undefined;
  if (!Array.isArray(raw)) fail('modelTopology.config.layers is not a list');
  if (raw.length > MAX_LAYERS) fail(`the model has ${raw.length} layers`);
  const layers = raw.map((layer: unknown, i: number) => {
    if (!isObject(layer) || typeof layer.class_name !== 'string' || !isObject(layer.config)) fail(`layer ${i} is not a {class_name, config} object`);
    return { cls: layer.class_name, config: layer.config, where: `layer ${i} (${show(layer.class_name)} ${show(layer.config.name)})` };
  });

  const out: Topology = { pool: 'max', convs: [], dense: [] };
  let i = 0;
  const peek = (): (typeof layers)[number] | undefined => layers[i];
  const first = peek();
  if (first?.cls === 'InputLayer') {
    checkDtype(first.config, first.where);
    const shape = imageShapeOf(first.config, first.where);
    if (!shape) fail(`${first.where} has no batch_input_shape`);
    out.inputShape = shape;
    i++;
  }
  let pool: CnnPool | undefined;
  const isRelu = (l: (typeof layers)[number] | undefined): boolean =>
    !!l && ((l.cls === 'Activation' && l.config.activation === 'relu') || (l.cls === 'ReLU' && (l.config.max_value ?? null) === null && !l.config.negative_slope && !l.config.threshold));
  while (peek()?.cls === 'Conv2D') {
    const { config: c, where } = peek() as (typeof layers)[number];
    i++;
    const name = layerName(c, where);
    checkDtype(c, where);
    checkChannelsLast(c, where);
    const own = imageShapeOf(c, where);
    if (own && out.convs.length > 0) fail(`${where} declares an input shape but is not the first layer`);
    if (own && out.inputShape && own.some((d, k) => d !== out.inputShape?.[k])) fail(`${where} takes ${show(own)} but the InputLayer gives ${show(out.inputShape)}`);
    if (own) out.inputShape = own;
    if (!isSize(c.filters)) fail(`${where} has filters ${show(c.filters)}`);
    const ks = Array.isArray(c.kernel_size) ? c.kernel_size[0] : c.kernel_size;
    if (!isSize(ks) || ks % 2 !== 1 || !isPair(c.kernel_size, ks)) fail(`${where} has kernel_size ${show(c.kernel_size)}; kernels are square with an odd side`);
    if (!isPair(c.strides ?? 1, 1)) fail(`${where} has strides ${show(c.strides)}; only stride 1 is supported`);
    if (c.padding !== 'same') fail(`${where} has padding ${show(c.padding)}; only 'same' is supported`);
    if (!isPair(c.dilation_rate ?? 1, 1)) fail(`${where} has dilation_rate ${show(c.dilation_rate)}; only 1 is supported`);
    if (c.groups !== undefined && c.groups !== null && c.groups !== 1) fail(`${where} has groups ${show(c.groups)}; only 1 is supported`);
    const activation = c.activation ?? 'linear';
    if (activation !== 'linear' && activation !== 'relu') fail(`${where} has activation ${show(activation)}; only relu (or linear followed by [BatchNormalization and] ReLU) is supported`);
    const spec: ConvSpec = { name, filters: c.filters, kernelSize: ks, useBias: c.use_bias !== false };
    if (activation === 'linear') {
      const next = peek();
      if (next?.cls === 'BatchNormalization') {
        i++;
        const bc = next.config;
        const bnName = layerName(bc, next.where);
        const axis = Array.isArray(bc.axis) && bc.axis.length === 1 ? bc.axis[0] : (bc.axis ?? -1);
        if (axis !== -1 && axis !== 3) fail(`${next.where} normalises axis ${show(bc.axis)}; only the channel axis (-1) is supported`);
        const epsilon = bc.epsilon ?? 1e-3;
        if (typeof epsilon !== 'number' || !(epsilon > 0) || !Number.isFinite(epsilon)) fail(`${next.where} has epsilon ${show(bc.epsilon)}`);
        checkDtype(bc, next.where);
        spec.bn = { name: bnName, epsilon, center: bc.center !== false, scale: bc.scale !== false };
      }
      if (!isRelu(peek())) fail(`${peek()?.where ?? 'the end of the model'} follows ${spec.bn ? 'BatchNormalization' : 'a linear Conv2D'} ${show(spec.bn?.name ?? name)}; expected a relu Activation or ReLU layer`);
      i++;
    }
    const p = peek();
    const kind: CnnPool | undefined = p?.cls === 'MaxPooling2D' ? 'max' : p?.cls === 'AveragePooling2D' ? 'avg' : undefined;
    if (!p || !kind) fail(`${p?.where ?? 'the end of the model'} follows conv block ${out.convs.length}; expected MaxPooling2D or AveragePooling2D`);
    i++;
    if (!isPair(p.config.pool_size, 2) || !isPair(p.config.strides ?? p.config.pool_size, 2) || (p.config.padding ?? 'valid') !== 'valid') {
      fail(`${p.where} has pool_size ${show(p.config.pool_size)}, strides ${show(p.config.strides)}, padding ${show(p.config.padding)}; only 2×2, stride 2, 'valid' is supported`);
    }
    checkChannelsLast(p.config, p.where);
    if (pool !== undefined && kind !== pool) fail(`${p.where} is a ${kind} pool but earlier blocks use ${pool} pools; one kind for every block`);
    pool = kind;
    out.convs.push(spec);
  }
  if (out.convs.length === 0) fail(`${peek()?.where ?? 'the model'} is not a Conv2D; a CNN starts with conv blocks (Conv2D [BatchNormalization] ReLU pool)`);
  out.pool = pool ?? 'max';
  const flatten = peek();
  if (flatten?.cls !== 'Flatten') fail(`${flatten?.where ?? 'the end of the model'} follows the conv blocks; expected Flatten`);
  checkChannelsLast(flatten.config, flatten.where);
  i++;
  while (i < layers.length) {
    const { cls, config: c, where } = layers[i] as (typeof layers)[number];
    i++;
    if (cls !== 'Dense') fail(`${where} is not Dense; after Flatten only Dense layers are supported`);
    if (!isSize(c.units)) fail(`${where} has units ${show(c.units)}`);
    if (c.use_bias === false) fail(`${where} has use_bias false; only Dense layers with a bias are supported`);
    checkDtype(c, where);
    out.dense.push({ name: layerName(c, where), units: c.units, activation: typeof c.activation === 'string' ? c.activation : 'linear' });
  }
  if (out.dense.length === 0) fail('the model has no Dense layers after Flatten');
  out.dense.forEach((d, j) => {
    const last = j + 1 === out.dense.length;
    if (!last && d.activation !== 'relu') fail(`Dense layer ${d.name} has activation ${d.activation}; hidden Dense layers use relu`);
    if (last && d.activation !== 'linear' && d.activation !== 'softmax') fail(`the output layer ${d.name} has activation ${d.activation}; expected linear or softmax`);
  });
  return out;
}

interface ManifestEntry {
  name: string;
  shape: number[];
  offset: number;
  count: number;
  skip: boolean;
}

function parseManifest(modelJson: Json): { entries: Map<string, ManifestEntry>; totalBytes: number } {
  const manifest = modelJson.weightsManifest;
  if (!Array.isArray(manifest) || manifest.length === 0) fail(`weightsManifest is ${show(manifest)}; expected a list of weight groups`);
  const entries = new Map<string, ManifestEntry>();
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
      if (!isObject(w) || typeof w.name !== 'string' || w.name === '') fail(`${where} has no name`);
      const shape = w.shape;
      if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 0 && d <= MAX_SIZE)) fail(`weight ${w.name} has shape ${show(shape)}`);
      if (w.quantization !== undefined && w.quantization !== null) fail(`weight ${w.name} is quantized; only plain float32 weights are supported`);
      if (w.dtype !== 'float32') fail(`weight ${w.name} has dtype ${show(w.dtype)}; only float32 is supported`);
      const count = (shape as number[]).reduce((n, d) => n * d, 1);
      if (count > MAX_SIZE * 64) fail(`weight ${w.name} has ${count} values`);
      if (entries.has(w.name)) fail(`the manifest lists weight ${w.name} twice`);
      entries.set(w.name, { name: w.name, shape: shape as number[], offset, count, skip: w.group === 'optimizer' });
      offset += count * 4;
    });
  });
  return { entries, totalBytes: offset };
}

/**
 * Parses and validates a TF.js layers CNN (`model.json` as an object or its text, and `weights.bin`).
 * With `expected`, the model must have exactly that architecture (which also supplies the input shape if
 * the model declares none). InputError says what is wrong.
 *
 * @example
 * const p = fromTfjsCnnModel(JSON.parse(readFileSync('model.json', 'utf8')), readFileSync('weights.bin'));
 */
export function fromTfjsCnnModel(modelJson: unknown, weightsBin: Uint8Array, expected?: CnnArchitecture): CnnParams {
  if (expected) checkCnnArchitecture(expected);
  let json: unknown = modelJson;
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json) as unknown;
    } catch {
      fail('model.json is not valid JSON');
    }
  }
  if (!isObject(json)) fail(`model.json is ${show(json)}; expected an object`);
  if (json.format !== TFJS_LAYERS_FORMAT) fail(`format is ${show(json.format)}; expected "${TFJS_LAYERS_FORMAT}"`);
  if (!(weightsBin instanceof Uint8Array)) fail('the weights are not bytes');
  const topology = parseTopology(json);
  const { entries, totalBytes } = parseManifest(json);
  if (weightsBin.length !== totalBytes) fail(`weights.bin has ${weightsBin.length} bytes but the manifest describes ${totalBytes} (${totalBytes / 4} float32 values)`);

  const used = new Set<string>();
  const take = (name: string, shape: number[]): Float32Array => {
    const e = entries.get(name);
    if (!e) fail(`weight ${name} is missing from the manifest`);
    if (e.skip) fail(`weight ${name} is in the optimizer group`);
    if (e.shape.length !== shape.length || e.shape.some((d, k) => d !== shape[k])) {
      fail(`weight ${name} has shape [${e.shape.join(', ')}] but the layers need [${shape.join(', ')}]`);
    }
    used.add(name);
    const values = new ByteReader(weightsBin.subarray(e.offset, e.offset + e.count * 4), WHAT).f32Array(e.count);
    for (let k = 0; k < values.length; k++) {
      if (!Number.isFinite(values[k])) fail(`non-finite value ${values[k]} in ${name} at index ${k}`);
    }
    return values;
  };

  const inputShape = topology.inputShape ?? expected?.inputShape;
  if (!inputShape) fail('the input shape is neither declared (batch_input_shape on the first layer or an InputLayer) nor given by the architecture');
  let cin = inputShape[2];
  let [h, w] = inputShape;
  const convs: CnnConvBlock[] = topology.convs.map((s) => {
    const cout = s.filters;
    const k = s.kernelSize;
    const block: CnnConvBlock = {
      kernelSize: k,
      inChannels: cin,
      outChannels: cout,
      kernel: take(`${s.name}/kernel`, [k, k, cin, cout]),
      bias: s.useBias ? take(`${s.name}/bias`, [cout]) : new Float32Array(cout),
    };
    if (s.bn) {
      const n = s.bn.name;
      const bn: CnnBatchNorm = {
        gamma: s.bn.scale ? take(`${n}/gamma`, [cout]) : new Float32Array(cout).fill(1),
        beta: s.bn.center ? take(`${n}/beta`, [cout]) : new Float32Array(cout),
        runningMean: take(`${n}/moving_mean`, [cout]),
        runningVar: take(`${n}/moving_variance`, [cout]),
      };
      // (x − μ)/√(σ² + ε) = (x − μ)/√((σ² + ε − ε₀) + ε₀): another ε folds into the variance exactly.
      const shift = s.bn.epsilon - BN_EPSILON;
      if (shift !== 0) {
        bn.runningVar = Float32Array.from(bn.runningVar, (v) => v + shift);
        const negative = bn.runningVar.findIndex((v) => v < 0);
        if (negative >= 0) fail(`${n}/moving_variance at index ${negative} is too small to refold epsilon ${s.bn.epsilon} into ours (${BN_EPSILON})`);
      }
      const negative = bn.runningVar.findIndex((v) => v < 0);
      if (negative >= 0) fail(`${n}/moving_variance holds the negative variance ${bn.runningVar[negative]} at index ${negative}`);
      block.bn = bn;
    }
    cin = cout;
    h = Math.floor(h / 2);
    w = Math.floor(w / 2);
    return block;
  });
  const withBn = convs.filter((c) => c.bn).length;
  if (withBn !== 0 && withBn !== convs.length) fail(`BatchNormalization follows ${withBn} of ${convs.length} Conv2D layers; it must follow every one or none`);
  if (h < 1 || w < 1) fail(`${convs.length} pooling blocks shrink the ${inputShape[0]}×${inputShape[1]} input to nothing`);
  let inSize = h * w * cin;
  const dense: MlpLayer[] = topology.dense.map((d) => {
    const layer: MlpLayer = { w: take(`${d.name}/kernel`, [inSize, d.units]), b: take(`${d.name}/bias`, [d.units]), inSize, outSize: d.units };
    inSize = d.units;
    return layer;
  });
  const unused = [...entries.values()].filter((e) => !e.skip && !used.has(e.name)).map((e) => e.name);
  if (unused.length > 0) fail(`weights ${unused.join(', ')} belong to no layer`);

  const params: CnnParams = { family: 'cnn', inputShape: [inputShape[0], inputShape[1], inputShape[2]], pool: topology.pool, convs, dense };
  validateCnnParams(params);
  if (expected) checkCnnParamsMatch(params, expected);
  return params;
}

// ---------------------------------------------------------------------------------------- directory

/**
 * Writes `dir/model.json` and `dir/weights.bin` (creating `dir`), each to a temporary name then renamed,
 * weights first: a reader never sees a half-written file, and a model.json is never newer than its
 * weights. `tf.loadLayersModel('file://<dir>/model.json')` (tfjs-node) loads the result.
 */
export async function writeTfjsCnnModelDir(dir: string, p: CnnParams): Promise<{ modelJsonPath: string; weightsBinPath: string }> {
  const { modelJson, weightsBin } = toTfjsCnnModel(p);
  await fs.mkdir(dir, { recursive: true });
  const weightsBinPath = path.join(dir, TFJS_WEIGHTS_BIN);
  const modelJsonPath = path.join(dir, TFJS_MODEL_JSON);
  await writeFileAtomic(weightsBinPath, weightsBin);
  await writeFileAtomic(modelJsonPath, Buffer.from(JSON.stringify(modelJson), 'utf8'));
  return { modelJsonPath, weightsBinPath };
}

/**
 * Reads a layers CNN from `dir` (or from the `model.json` path given): the manifest's weight files are
 * read relative to it and concatenated in order, as the TF.js loader does. Weight paths must stay inside
 * the model's directory.
 */
export async function readTfjsCnnModelDir(dirOrModelJson: string, expected?: CnnArchitecture): Promise<CnnParams> {
  const modelJsonPath = dirOrModelJson.endsWith('.json') ? dirOrModelJson : path.join(dirOrModelJson, TFJS_MODEL_JSON);
  const dir = path.dirname(modelJsonPath);
  let json: unknown;
  try {
    json = JSON.parse(await fs.readFile(modelJsonPath, 'utf8')) as unknown;
  } catch (err) {
    throw new InputError(err instanceof SyntaxError ? `${modelJsonPath} is not valid JSON` : `cannot read ${modelJsonPath}: ${(err as Error).message}`);
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
  return fromTfjsCnnModel(json, new Uint8Array(Buffer.concat(chunks)), expected);
}
