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
import { InputError } from '../../util/errors';
import type { CnnArchitecture, CnnBatchNorm, CnnConvBlock, CnnParams, CnnPool } from '../cnn/architecture';
import { BN_EPSILON, BN_MOMENTUM, checkCnnArchitecture, checkCnnParamsMatch, validateCnnParams } from '../cnn/architecture';
import type { MlpLayer } from '../mlp';
import type { Json, TfjsLayersModelJson, TfjsWeightEntry } from '../tfjs-layers';
import {
  checkFloat32Dtype,
  denseLayerConfig,
  GLOROT_NORMAL,
  isObject,
  manifestWeights,
  MAX_TFJS_SIZE,
  openLayersModel,
  readModelDir,
  sequentialLayers,
  sequentialModel,
  show,
  writeModelDir,
  ZEROS,
} from '../tfjs-layers';

/** Fixed (no versions, dates or hosts), so equal parameters always give equal bytes. */
const GENERATED_BY = 'weightformer-pipelines trainCnn (TensorFlow.js tfjs-core)';
const CONVERTED_BY = 'weightformer-pipelines toTfjsCnnModel v1';
const WHAT = 'TF.js CNN model';
/** Sanity bound: anything larger is damage, not a model we could run. */
const MAX_LAYERS = 1024;

export interface TfjsLayerJson {
  class_name: string;
  config: Record<string, unknown>;
}

/** The content of `model.json` as written here (a subset of tfjs-core's `io.ModelJSON`). */
export type TfjsCnnModelJson = TfjsLayersModelJson<TfjsLayerJson>;

export interface TfjsCnnModel {
  modelJson: TfjsCnnModelJson;
  weightsBin: Uint8Array;
}

// ------------------------------------------------------------------------------------------ writing

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
    const config = denseLayerConfig(`dense_Dense${i + 1}`, l.outSize, i + 1 === p.dense.length ? 'linear' : 'relu');
    layers.push({ class_name: 'Dense', config });
    trainable.push(entry(`${config.name as string}/kernel`, l.w, [l.inSize, l.outSize]));
    trainable.push(entry(`${config.name as string}/bias`, l.b, [l.outSize]));
  });
  return sequentialModel(layers, [...trainable, ...statistics], GENERATED_BY, CONVERTED_BY);
}

// ------------------------------------------------------------------------------------------ reading

function fail(message: string): never {
  throw new InputError(`${WHAT}: ${message}`);
}

function isSize(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_TFJS_SIZE;
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
  const raw = sequentialLayers(WHAT, modelJson, 'only a Sequential model is supported');
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
    checkFloat32Dtype(WHAT, first.config, first.where);
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
    checkFloat32Dtype(WHAT, c, where);
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
        checkFloat32Dtype(WHAT, bc, next.where);
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
    checkFloat32Dtype(WHAT, c, where);
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
  const json = openLayersModel(WHAT, modelJson, weightsBin);
  const topology = parseTopology(json);
  const weights = manifestWeights(WHAT, json, weightsBin);
  const { take } = weights;

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
  weights.finish();

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
  return writeModelDir(dir, modelJson, weightsBin);
}

/**
 * Reads a layers CNN from `dir` (or from the `model.json` path given): the manifest's weight files are
 * read relative to it and concatenated in order, as the TF.js loader does. Weight paths must stay inside
 * the model's directory.
 */
export async function readTfjsCnnModelDir(dirOrModelJson: string, expected?: CnnArchitecture): Promise<CnnParams> {
  const { modelJson, weightsBin } = await readModelDir(dirOrModelJson);
  return fromTfjsCnnModel(modelJson, weightsBin, expected);
}
