/**
 * Multi-layer perceptrons as plain host arrays, and their functional forward pass in TF.js.
 *
 * Parameters live on the host (Float32Array per layer) so they are easy to hash, store, send to a worker,
 * permute for alignment and average; they become tensors only inside a computation. The forward pass is a
 * function of the parameter tensors (no tfjs-layers model), so WeightFormer can later run a student with
 * *generated* parameters and back-propagate into the generator.
 *
 * Layout: `w` is row-major inSize × outSize (`w[i * outSize + o]`), i.e. `x @ w + b`. Hidden unit j of
 * layer l is column j of `w`, entry j of `b`, and row j of the next layer's `w`.
 */
import type { ArchitectureSpec } from '../spec/types';
import { InputError } from '../util/errors';
import type { Dataset } from './data';
import { featureSize } from './data';
import { mapChunks, withTensors } from './evaluate';
import { Rng } from './rng';
import { tf } from './tf';

export type Activation = ArchitectureSpec['activation'];

export interface MlpLayer {
  /** inSize × outSize, row-major. */
  w: Float32Array;
  b: Float32Array;
  inSize: number;
  outSize: number;
}

/** A self-describing MLP: the activation travels with the weights, so a loaded teacher needs nothing else. */
export interface MlpParams {
  activation: Activation;
  layers: MlpLayer[];
}

/** The same parameters as tensors, for one computation. The caller disposes them. */
export interface MlpTensors {
  activation: Activation;
  layers: Array<{ w: tf.Tensor2D; b: tf.Tensor1D }>;
}

/** Rows per forward pass when evaluating: bounds memory on every backend, whatever the dataset size. */
const EVAL_CHUNK = 1000;

/** Throws InputError unless `arch` describes a buildable MLP. */
export function checkArchitecture(arch: ArchitectureSpec): void {
  if (arch.family !== 'mlp') throw new InputError(`architecture family ${String(arch.family)} is not an MLP`);
  const sizes = [arch.inputSize, ...arch.hidden, arch.outputSize];
  for (const s of sizes) {
    if (!Number.isInteger(s) || s < 1) throw new InputError(`layer sizes must be positive integers, got ${sizes.join('-')}`);
  }
  if (arch.activation !== 'relu' && arch.activation !== 'tanh') {
    throw new InputError(`activation must be relu or tanh, got ${String(arch.activation)}`);
  }
}

/** The architecture these parameters have. */
export function architectureOf(params: MlpParams): ArchitectureSpec {
  const first = params.layers[0];
  const last = params.layers[params.layers.length - 1];
  if (!first || !last) throw new InputError('an MLP needs at least one layer');
  return {
    family: 'mlp',
    inputSize: first.inSize,
    hidden: params.layers.slice(0, -1).map((l) => l.outSize),
    outputSize: last.outSize,
    activation: params.activation,
  };
}

/** A short key of the layer shapes, e.g. `mlp:784-64-10:relu`: models with equal keys can be aligned and averaged. */
export function architectureSignature(arch: ArchitectureSpec | MlpParams): string {
  const a = 'layers' in arch ? architectureOf(arch) : arch;
  return `mlp:${[a.inputSize, ...a.hidden, a.outputSize].join('-')}:${a.activation}`;
}

/** Throws InputError unless `params` has exactly the shapes `arch` asks for. */
export function checkParamsMatch(params: MlpParams, arch: ArchitectureSpec): void {
  const have = architectureSignature(params);
  const want = architectureSignature(arch);
  if (have !== want) throw new InputError(`parameters are ${have} but the architecture is ${want}`);
}

/**
 * Fresh parameters drawn from `seed`: He-normal for ReLU hidden layers (keeps activation variance through
 * ReLUs), Glorot-normal for tanh layers and for the output layer; zero biases.
 *
 * @example
 * const p = initMlp({ family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' }, 7);
 */
export function initMlp(arch: ArchitectureSpec, seed: number): MlpParams {
  checkArchitecture(arch);
  const rng = new Rng(seed);
  const sizes = [arch.inputSize, ...arch.hidden, arch.outputSize];
  const layers: MlpLayer[] = [];
  for (let l = 0; l + 1 < sizes.length; l++) {
    const inSize = sizes[l] ?? 0;
    const outSize = sizes[l + 1] ?? 0;
    const isOutput = l + 2 === sizes.length;
    const std = !isOutput && arch.activation === 'relu' ? Math.sqrt(2 / inSize) : Math.sqrt(2 / (inSize + outSize));
    const w = new Float32Array(inSize * outSize);
    for (let i = 0; i < w.length; i++) w[i] = rng.normal(0, std);
    layers.push({ w, b: new Float32Array(outSize), inSize, outSize });
  }
  return { activation: arch.activation, layers };
}

/** A deep copy. */
export function cloneParams(p: MlpParams): MlpParams {
  return {
    activation: p.activation,
    layers: p.layers.map((l) => ({ w: new Float32Array(l.w), b: new Float32Array(l.b), inSize: l.inSize, outSize: l.outSize })),
  };
}

/** Total number of scalars. */
export function paramCount(p: MlpParams): number {
  return p.layers.reduce((n, l) => n + l.w.length + l.b.length, 0);
}

/** Uploads parameters (copies, so later host mutations cannot reach the tensors). */
export function paramsToTensors(p: MlpParams): MlpTensors {
  return {
    activation: p.activation,
    layers: p.layers.map((l) => ({
      w: tf.tensor2d(new Float32Array(l.w), [l.inSize, l.outSize], 'float32'),
      b: tf.tensor1d(new Float32Array(l.b), 'float32'),
    })),
  };
}

/** Downloads parameter tensors (asynchronously: synchronous reads fail on webgpu in Node). */
export async function tensorsToParams(t: MlpTensors): Promise<MlpParams> {
  const layers: MlpLayer[] = [];
  for (const l of t.layers) {
    const [inSize = 0, outSize = 0] = l.w.shape;
    layers.push({ w: new Float32Array(await l.w.data()), b: new Float32Array(await l.b.data()), inSize, outSize });
  }
  return { activation: t.activation, layers };
}

export function disposeMlpTensors(t: MlpTensors): void {
  for (const l of t.layers) {
    l.w.dispose();
    l.b.dispose();
  }
}

/**
 * Logits of `x` (batch × inputSize). Purely functional in the parameter tensors, so `tf.grads` can
 * differentiate with respect to them. Strictly 2-D matMuls: on wasm, the gradient of a 3-D × 2-D matMul
 * is wrong (see DESIGN.md).
 */
export function mlpLogits(t: MlpTensors, x: tf.Tensor2D): tf.Tensor2D {
  let h: tf.Tensor2D = x;
  t.layers.forEach((layer, l) => {
    const z = tf.add(tf.matMul(h, layer.w), layer.b) as tf.Tensor2D;
    h = l + 1 < t.layers.length ? (t.activation === 'relu' ? tf.relu(z) : tf.tanh(z)) : z;
  });
  return h;
}

/** Runs `fn` over `ds` in chunks with already-uploaded parameters; collects n × outSize floats. */
async function mapChunksWithTensors(
  t: MlpTensors,
  ds: Dataset,
  fn: (t: MlpTensors, x: tf.Tensor2D) => tf.Tensor2D,
): Promise<Float32Array> {
  const d = featureSize(ds);
  const want = t.layers[0]?.w.shape[0] ?? 0;
  if (ds.n > 0 && d !== want) throw new InputError(`data has ${d} features per example but the model takes ${want}`);
  const classes = t.layers[t.layers.length - 1]?.b.shape[0] ?? 0;
  return mapChunks(ds, EVAL_CHUNK, classes, (x) => fn(t, x));
}

/** Uploads the parameters once, runs `fn` over `ds` in chunks, and frees them. */
function mapParamChunks(params: MlpParams, ds: Dataset, fn: (t: MlpTensors, x: tf.Tensor2D) => tf.Tensor2D): Promise<Float32Array> {
  return withTensors(paramsToTensors(params), disposeMlpTensors, (t) => mapChunksWithTensors(t, ds, fn));
}

/** Top-1 accuracy of parameters that are already tensors (the trainer's per-epoch validation). */
export async function accuracyOfTensors(t: MlpTensors, ds: Dataset): Promise<number> {
  return accuracyOfScores(await mapChunksWithTensors(t, ds, mlpLogits), ds.y);
}

/** Logits, n × outSize. */
export async function predictLogits(params: MlpParams, ds: Dataset): Promise<Float32Array> {
  return mapParamChunks(params, ds, mlpLogits);
}

/** softmax(logits / temperature), n × outSize. */
export async function predictProbs(params: MlpParams, ds: Dataset, temperature = 1): Promise<Float32Array> {
  if (!(temperature > 0)) throw new InputError(`temperature must be positive, got ${temperature}`);
  return mapParamChunks(params, ds, (t, x) => tf.softmax(tf.div<tf.Tensor2D>(mlpLogits(t, x), temperature)));
}

/**
 * The ensemble's prediction: the mean of the members' softmax(logits / temperature), n × outSize.
 * With temperature τ > 1 this is the soft target of knowledge distillation (`TrainMlpOptions.kd`).
 */
export async function ensembleProbs(paramsList: MlpParams[], ds: Dataset, temperature = 1): Promise<Float32Array> {
  if (paramsList.length === 0) throw new InputError('an ensemble needs at least one model');
  let sum: Float64Array | undefined;
  for (const p of paramsList) {
    const probs = await predictProbs(p, ds, temperature);
    if (!sum) sum = new Float64Array(probs.length);
    else if (sum.length !== probs.length) throw new InputError('ensemble members disagree on the number of classes');
    for (let i = 0; i < probs.length; i++) sum[i] = (sum[i] ?? 0) + (probs[i] ?? 0);
  }
  const mean = new Float32Array(sum?.length ?? 0);
  for (let i = 0; i < mean.length; i++) mean[i] = (sum?.[i] ?? 0) / paramsList.length;
  return mean;
}

/** Fraction of rows of `scores` (n × classes) whose first maximal entry is the label. */
export function accuracyOfScores(scores: Float32Array, labels: Int32Array): number {
  const n = labels.length;
  if (n === 0) return 0;
  const classes = scores.length / n;
  let correct = 0;
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if ((scores[i * classes + c] ?? 0) > (scores[i * classes + best] ?? 0)) best = c;
    if (best === labels[i]) correct++;
  }
  return correct / n;
}

/** Top-1 accuracy on `ds`, on whatever backend is active. */
export async function accuracy(params: MlpParams, ds: Dataset): Promise<number> {
  return accuracyOfScores(await predictLogits(params, ds), ds.y);
}

/** Top-1 accuracy of the averaged softmax of `paramsList`. */
export async function ensembleAccuracy(paramsList: MlpParams[], ds: Dataset): Promise<number> {
  return accuracyOfScores(await ensembleProbs(paramsList, ds), ds.y);
}

export { serializeParams, deserializeParams, paramsDigest } from './params-io';
