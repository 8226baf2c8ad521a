/**
 * CNN teachers as PyTorch `state_dict`s in safetensors files: the mapping between the tensors of an
 * `nn.Sequential` of conv blocks and a dense head, and `CnnParams`. Also the small helpers the ResNet and
 * ViT mappings (`torch-resnet.ts`, `torch-vit.ts`) share: one checked reader of state_dict tensors, the
 * conv/Linear layout conversions, metadata parsing and file reading.
 *
 * PyTorch's model (k odd, one k for every block; BN on every block or none; MaxPool2d or AvgPool2d, one
 * kind for every block):
 *
 *   nn.Sequential(
 *     nn.Conv2d(c, c1, k, padding=k // 2), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),   # block 0
 *     nn.Conv2d(c1, c2, k, padding=k // 2), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),  # block 1
 *     …,
 *     nn.Flatten(), nn.Linear(c_B·h_B·w_B, d1), nn.ReLU(), …, nn.Linear(d_L, classes))
 *
 * possibly under a prefix shared by every tensor (`net.` for `self.net = nn.Sequential(...)`, `module.`
 * for DataParallel, `_orig_mod.` for torch.compile), exactly as `torch-mlp.ts` reads MLPs. Modules without
 * parameters (ReLU, pools, Flatten, Dropout) have no tensors, so their indices are absent; reading accepts
 * any increasing indices and classifies each module by its tensors:
 *
 *   | state_dict key                  | PyTorch shape          | CnnParams                                           |
 *   |---------------------------------|------------------------|-----------------------------------------------------|
 *   | `<p><i>.weight` (Conv2d)        | [cout, cin, k, k]      | `convs[b].kernel` [k, k, cin, cout]:                |
 *   |                                 |                        |   kernel[((a·k + b')·cin + ci)·cout + co] = W[co][ci][a][b'] |
 *   | `<p><i>.bias` (Conv2d)          | [cout]                 | `convs[b].bias` (zeros when absent: `bias=False`)   |
 *   | `<p><j>.weight` (BatchNorm2d)   | [cout]                 | `convs[b].bn.gamma` (ones when absent: `affine=False`) |
 *   | `<p><j>.bias`                   | [cout]                 | `convs[b].bn.beta` (zeros when absent)              |
 *   | `<p><j>.running_mean`           | [cout]                 | `convs[b].bn.runningMean`                           |
 *   | `<p><j>.running_var`            | [cout]                 | `convs[b].bn.runningVar` (≥ 0)                      |
 *   | `<p><j>.num_batches_tracked`    | [] int64               | ignored (a counter; no effect on outputs)           |
 *   | `<p><m>.weight` (first Linear)  | [d1, c_B·h_B·w_B]      | `dense[0].w`, rows permuted CHW → HWC (below)       |
 *   | `<p><m>.weight` (other Linears) | [out, in]              | `dense[l].w`, in × out: w[i·out + o] = W[o][i]      |
 *   | `<p><m>.bias`                   | [out]                  | `dense[l].b` (zeros when absent)                    |
 *
 * A module with `running_mean`/`running_var` is a BatchNorm2d and must come right after its Conv2d; a 4-D
 * weight is a Conv2d, a 2-D one a Linear; convs come before Linears. Both Conv2d (cross-correlation,
 * symmetric zero padding k // 2 at stride 1) and `tf.conv2d` 'same' compute the same sum, so kernels are
 * only transposed. PyTorch flattens a [C, H, W] map as `c·H·W + i·W + j`, our head reads it as
 * `(i·W + j)·C + c` (channel fastest, TF's NHWC), so the first Linear's input columns are permuted:
 * `dense[0].w[((i·W + j)·C + c)·out + o] = W[o][c·H·W + i·W + j]`. Every other Linear is transposed as in
 * the MLP mapping. Our blocks are conv → BN → ReLU → pool, the order above (for a max pool the ReLU could
 * go either side; for an average pool it must come first, as here). BatchNorm2d's ε is PyTorch's default
 * 1e-5 (`BN_EPSILON`); the file does not record it.
 *
 * What a state_dict cannot say is in `__metadata__` (strings) of files written here, and taken from
 * `expected` (the pipeline's architecture) when a file lacks it:
 *   - `weightformer.input_shape`: `[h, w, c]` as JSON. Required (from the file or `expected`): the head's
 *     input width c_B·h_B·w_B does not determine the image's height and width, nor how to unflatten it;
 *   - `weightformer.pool`: `max` or `avg`; without it and without `expected`, `max`;
 *   - `weightformer.activation`: `relu`, the only one this family has (anything else is refused);
 *   - `weightformer.family`: `cnn`; a file written for another family is refused for that reason.
 * Writing uses the indices of the Sequential above without prefix (per block conv, [BN,] ReLU, pool; then
 * Flatten, then Linear/ReLU pairs), plus `format: pt`, so `model.load_state_dict(load_file(path))` loads
 * it into that Sequential. `num_batches_tracked` is not written (float32 only); BatchNorm's loader fills
 * it in when a state_dict without version metadata lacks it, so strict loading still succeeds.
 *
 * Refused with an InputError naming the tensor: names that do not follow the pattern, mixed prefixes,
 * non-float weights, wrong shapes or non-chaining channels, kernels that are not square and odd or differ
 * between blocks, BN on some blocks only, a BN that does not follow a conv, running statistics missing
 * (`track_running_stats=False`) or a negative running variance, NaN or ±Infinity, and an architecture
 * other than `expected`.
 */
import { writeFileAtomic } from '../../store/store';
import { InputError } from '../../util/errors';
import type { CnnArchitecture, CnnBatchNorm, CnnConvBlock, CnnParams, CnnPool } from '../cnn/architecture';
import { checkCnnArchitecture, checkCnnParamsMatch, cnnSpatialSizes, validateCnnParams } from '../cnn/architecture';
import type { MlpLayer } from '../mlp';
import type { Float32TensorInput, Safetensors, SafetensorsTensor } from '../safetensors';
import { FLOAT_DTYPES, parseSafetensors, serializeSafetensors, tensorToFloat32 } from '../safetensors';
import { ACTIVATION_METADATA_KEY, readSafetensorsFile } from './torch-mlp';

export { ACTIVATION_METADATA_KEY, readSafetensorsFile };
/** `__metadata__` key naming the family a file was written for (`cnn`, `resnet`, `vit`). */
export const FAMILY_METADATA_KEY = 'weightformer.family';
/** `__metadata__` key holding `[h, w, c]` (JSON) of one input example. */
export const INPUT_SHAPE_METADATA_KEY = 'weightformer.input_shape';
/** `__metadata__` key holding the CNN's pooling (`max` or `avg`). */
export const POOL_METADATA_KEY = 'weightformer.pool';

// -------------------------------------------------------------------------------- shared helpers

export type StateDictInput = Safetensors | readonly SafetensorsTensor[];

export function describeShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

const INTEGER_DTYPES = new Set(['I64', 'I32']);

/**
 * The tensors of one state_dict, looked up by name under a prefix, each checked as it is taken (float
 * dtype, exact shape, finite values) and recorded, so `finish` can refuse tensors nobody took — a
 * state_dict with parameters the mapping does not know is another model, not ours with extras. Every
 * message names the tensor by its full name.
 */
export class StateDictReader {
  readonly metadata: Record<string, string> | undefined;
  readonly list: readonly SafetensorsTensor[];
  private readonly byName = new Map<string, SafetensorsTensor>();
  private readonly used = new Set<string>();

  constructor(
    input: StateDictInput,
    readonly what: string,
    public prefix = '',
  ) {
    this.list = 'tensors' in input ? input.tensors : input;
    this.metadata = 'tensors' in input ? input.metadata : undefined;
    for (const t of this.list) {
      // parseSafetensors already refuses repeated names; a hand-built list might not.
      if (this.byName.has(t.name)) this.fail(`tensor ${JSON.stringify(t.name)} appears twice`);
      this.byName.set(t.name, t);
    }
  }

  fail(message: string): never {
    throw new InputError(`${this.what}: ${message}`);
  }

  /** The tensor `prefix + name`, or undefined. */
  get(name: string): SafetensorsTensor | undefined {
    return this.byName.get(this.prefix + name);
  }

  has(name: string): boolean {
    return this.byName.has(this.prefix + name);
  }

  /** Values of `prefix + name`, which must exist, be floating point, have exactly `shape`, and be finite. */
  take(name: string, shape: readonly number[], why = ''): Float32Array {
    const t = this.get(name);
    if (!t) this.fail(`tensor ${JSON.stringify(this.prefix + name)} is missing${why ? ` (${why})` : ''}`);
    return this.values(t, shape);
  }

  /** `take` for a tensor that may be absent (a bias of a `bias=False` layer): undefined then. */
  takeOptional(name: string, shape: readonly number[]): Float32Array | undefined {
    const t = this.get(name);
    return t ? this.values(t, shape) : undefined;
  }

  /** The checked float32 values of `t` (see `take`). */
  values(t: SafetensorsTensor, shape: readonly number[]): Float32Array {
    const full = JSON.stringify(t.name);
    if (!FLOAT_DTYPES.includes(t.dtype)) {
      this.fail(`tensor ${full} has dtype ${t.dtype}; weights are floating point (${FLOAT_DTYPES.join(', ')})`);
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      this.fail(`tensor ${full} has shape ${describeShape(t.shape)}; expected ${describeShape(shape)}`);
    }
    this.used.add(t.name);
    const values = tensorToFloat32(t, this.what);
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) this.fail(`tensor ${full} holds the non-finite value ${values[i]} at flat index ${i}`);
    }
    return values;
  }

  /** Marks BatchNorm's `num_batches_tracked` counter (an integer scalar) as read, if present. */
  skipCounter(name: string): void {
    const t = this.get(name);
    if (!t) return;
    if (!INTEGER_DTYPES.has(t.dtype) || t.shape.length > 1) {
      this.fail(`tensor ${JSON.stringify(t.name)} has dtype ${t.dtype} and shape ${describeShape(t.shape)}; a BatchNorm counter is an integer scalar`);
    }
    this.used.add(t.name);
  }

  /** Refuses the first tensor no mapping rule took; `explain` may say what it belongs to. */
  finish(explain: (localName: string) => string | undefined = () => undefined): void {
    for (const t of this.list) {
      if (this.used.has(t.name)) continue;
      const local = t.name.startsWith(this.prefix) ? t.name.slice(this.prefix.length) : t.name;
      const reason = explain(local);
      this.fail(`tensor ${JSON.stringify(t.name)} is not a parameter of this model${reason ? `: ${reason}` : ''}`);
    }
  }
}

/**
 * The prefix shared by a state_dict with fixed names (`module.` and the like), found from `anchors`
 * (names every such state_dict has, e.g. `fc.weight`): the shortest `X` such that some tensor is named
 * `X + anchor` with X empty or ending in a dot, and not matching `nested` (the path of a submodule whose
 * parameters share the anchor's local name). Every tensor must then start with it.
 */
export function detectPrefix(reader: StateDictReader, anchors: readonly string[], nested?: RegExp): string {
  let best: string | undefined;
  let bestFrom = '';
  for (const t of reader.list) {
    for (const anchor of anchors) {
      if (!t.name.endsWith(anchor)) continue;
      const prefix = t.name.slice(0, t.name.length - anchor.length);
      if (prefix !== '' && !prefix.endsWith('.')) continue;
      // A submodule's parameter of the same local name (`layer1.0.conv1.weight`) says nothing about the prefix.
      if (nested?.test(prefix)) continue;
      if (best === undefined || prefix.length < best.length) {
        best = prefix;
        bestFrom = t.name;
      }
    }
  }
  const prefix = best ?? '';
  const outside = reader.list.find((t) => !t.name.startsWith(prefix));
  if (outside) {
    reader.fail(`tensors ${JSON.stringify(outside.name)} and ${JSON.stringify(bestFrom)} have different prefixes; one model is expected`);
  }
  return prefix;
}

/** PyTorch Linear [out, in] row-major → our in × out row-major. */
export function linearFromTorch(values: Float32Array, outSize: number, inSize: number): Float32Array {
  const w = new Float32Array(inSize * outSize);
  for (let o = 0; o < outSize; o++) {
    for (let i = 0; i < inSize; i++) w[i * outSize + o] = values[o * inSize + i] ?? 0;
  }
  return w;
}

/** Our in × out → PyTorch Linear [out, in]. */
export function linearToTorch(w: Float32Array, inSize: number, outSize: number): Float32Array {
  const out = new Float32Array(inSize * outSize);
  for (let o = 0; o < outSize; o++) {
    for (let i = 0; i < inSize; i++) out[o * inSize + i] = w[i * outSize + o] ?? 0;
  }
  return out;
}

/** PyTorch Conv2d weight [cout, cin, k, k] → our kernel [k, k, cin, cout] (both row-major). */
export function convFromTorch(values: Float32Array, cout: number, cin: number, k: number): Float32Array {
  const kernel = new Float32Array(k * k * cin * cout);
  for (let co = 0; co < cout; co++) {
    for (let ci = 0; ci < cin; ci++) {
      for (let a = 0; a < k; a++) {
        for (let b = 0; b < k; b++) kernel[((a * k + b) * cin + ci) * cout + co] = values[((co * cin + ci) * k + a) * k + b] ?? 0;
      }
    }
  }
  return kernel;
}

/** Our kernel [k, k, cin, cout] → PyTorch Conv2d weight [cout, cin, k, k]. */
export function convToTorch(kernel: Float32Array, k: number, cin: number, cout: number): Float32Array {
  const out = new Float32Array(k * k * cin * cout);
  for (let co = 0; co < cout; co++) {
    for (let ci = 0; ci < cin; ci++) {
      for (let a = 0; a < k; a++) {
        for (let b = 0; b < k; b++) out[((co * cin + ci) * k + a) * k + b] = kernel[((a * k + b) * cin + ci) * cout + co] ?? 0;
      }
    }
  }
  return out;
}

/** A 1-D float32 tensor input (a copy, so the written file never aliases live parameters). */
export function vector(a: Float32Array): Float32TensorInput {
  return { shape: [a.length], data: new Float32Array(a) };
}

/**
 * `[h, w, c]` from `weightformer.input_shape`, else `fallback` (the expected architecture's), else
 * undefined. A malformed value is an InputError: a file that says something wrong must not be guessed at.
 */
export function inputShapeFromMetadata(reader: StateDictReader, fallback: [number, number, number] | undefined): [number, number, number] | undefined {
  const raw = reader.metadata?.[INPUT_SHAPE_METADATA_KEY];
  if (raw === undefined) return fallback ? [fallback[0], fallback[1], fallback[2]] : undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw) as unknown;
  } catch {
    parsed = undefined;
  }
  if (!Array.isArray(parsed) || parsed.length !== 3 || !parsed.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 1 && d <= 1 << 24)) {
    reader.fail(`${INPUT_SHAPE_METADATA_KEY} is ${JSON.stringify(raw)}; expected [height, width, channels] as JSON, e.g. "[28,28,1]"`);
  }
  const [h, w, c] = parsed as [number, number, number];
  return [h, w, c];
}

/** Refuses a file whose `weightformer.family` names another family. */
export function checkFamilyMetadata(reader: StateDictReader, family: string): void {
  const declared = reader.metadata?.[FAMILY_METADATA_KEY];
  if (declared !== undefined && declared !== family) {
    reader.fail(`${FAMILY_METADATA_KEY} is ${JSON.stringify(declared)}: the file holds a ${declared} model, not a ${family}`);
  }
}

/** Refuses a declared activation other than ReLU (the only one the CNN and ResNet families have). */
export function checkReluMetadata(reader: StateDictReader): void {
  const declared = reader.metadata?.[ACTIVATION_METADATA_KEY];
  if (declared !== undefined && declared !== 'relu') {
    reader.fail(`${ACTIVATION_METADATA_KEY} is ${JSON.stringify(declared)}; this family's activation is relu`);
  }
}

// ------------------------------------------------------------------------------------------ the CNN

const POOLS: readonly CnnPool[] = ['max', 'avg'];
const BN_PARAMS = new Set(['running_mean', 'running_var', 'num_batches_tracked']);
const KNOWN_PARAMS = new Set(['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']);

interface SequentialModule {
  index: number;
  params: Map<string, SafetensorsTensor>;
}

/** `<prefix><index>.<param>` → its parts, or undefined (the index must be a whole path component). */
function splitSequentialName(name: string): { prefix: string; index: number; param: string } | undefined {
  const m = /^(.*?)(\d+)\.([^.]+)$/.exec(name);
  if (!m) return undefined;
  const [, prefix = '', digits = '', param = ''] = m;
  if (prefix !== '' && !prefix.endsWith('.')) return undefined;
  if (digits.length > 1 && digits.startsWith('0')) return undefined;
  return { prefix, index: Number(digits), param };
}

/**
 * A CNN from the tensors of a PyTorch `state_dict` (the mapping in the module comment). With `expected`,
 * the parameters must have exactly that architecture; it also supplies the input shape and pooling a
 * file without metadata cannot. `what` names the file in messages.
 *
 * @example
 * const teacher = cnnFromStateDict(parseSafetensors(bytes), architecture);
 */
export function cnnFromStateDict(tensors: StateDictInput, expected?: CnnArchitecture, what = 'PyTorch state_dict'): CnnParams {
  if (expected) checkCnnArchitecture(expected);
  const reader: StateDictReader = new StateDictReader(tensors, what);
  checkFamilyMetadata(reader, 'cnn');
  checkReluMetadata(reader);
  const declaredPool = reader.metadata?.[POOL_METADATA_KEY];
  if (declaredPool !== undefined && !POOLS.includes(declaredPool as CnnPool)) {
    reader.fail(`${POOL_METADATA_KEY} is ${JSON.stringify(declaredPool)}; expected max or avg`);
  }
  const pool: CnnPool = (declaredPool as CnnPool | undefined) ?? expected?.pool ?? 'max';

  // Group the tensors by module index, under one prefix.
  let prefixFrom: string | undefined;
  const modules = new Map<number, SequentialModule>();
  for (const t of reader.list) {
    const parts = splitSequentialName(t.name);
    if (!parts) {
      reader.fail(`tensor ${JSON.stringify(t.name)} is not named like a parameter of an nn.Sequential (<prefix><index>.<param>, e.g. "0.weight" or "net.4.running_mean")`);
    }
    if (prefixFrom === undefined) {
      prefixFrom = t.name;
      reader.prefix = parts.prefix;
    } else if (parts.prefix !== reader.prefix) {
      reader.fail(`tensors ${JSON.stringify(prefixFrom)} and ${JSON.stringify(t.name)} have different prefixes; one nn.Sequential is expected`);
    }
    if (!KNOWN_PARAMS.has(parts.param)) {
      reader.fail(`tensor ${JSON.stringify(t.name)} is a ${JSON.stringify(parts.param)} parameter; Conv2d, BatchNorm2d and Linear have weight, bias and running statistics only`);
    }
    const m = modules.get(parts.index) ?? { index: parts.index, params: new Map() };
    m.params.set(parts.param, t);
    modules.set(parts.index, m);
  }
  if (modules.size === 0) reader.fail('no tensors: an empty state_dict');

  const inputShape = inputShapeFromMetadata(reader, expected?.inputShape);
  const convs: CnnConvBlock[] = [];
  const linears: Array<{ name: string; weight: SafetensorsTensor; bias?: SafetensorsTensor }> = [];
  /** The conv the next BatchNorm2d may normalise: the previous module, when it is a conv without BN. */
  let openConv: CnnConvBlock | undefined;
  let kernelSize: number | undefined;
  let firstConvName = '';
  for (const m of [...modules.values()].sort((a, b) => a.index - b.index)) {
    const local = String(m.index);
    const name = `${reader.prefix}${local}`;
    const weight = m.params.get('weight');
    const isBn = [...m.params.keys()].some((p) => BN_PARAMS.has(p));
    if (isBn) {
      if (!openConv) {
        reader.fail(`${name} is a BatchNorm layer that does not follow a Conv2d` + (linears.length > 0 ? ' (BatchNorm1d in the head is not supported)' : ''));
      }
      const conv = openConv;
      const c = conv.outChannels;
      const bn: CnnBatchNorm = {
        gamma: reader.takeOptional(`${local}.weight`, [c]) ?? new Float32Array(c).fill(1),
        beta: reader.takeOptional(`${local}.bias`, [c]) ?? new Float32Array(c),
        // Without them (track_running_stats=False) BN normalises with batch statistics: no teacher can.
        runningMean: reader.take(`${local}.running_mean`, [c], 'track_running_stats=False is not supported'),
        runningVar: reader.take(`${local}.running_var`, [c], 'track_running_stats=False is not supported'),
      };
      const negative = bn.runningVar.findIndex((v) => v < 0);
      if (negative >= 0) reader.fail(`tensor ${JSON.stringify(`${name}.running_var`)} holds the negative variance ${bn.runningVar[negative]} at index ${negative}`);
      reader.skipCounter(`${local}.num_batches_tracked`);
      conv.bn = bn;
      openConv = undefined;
      continue;
    }
    if (!weight) reader.fail(`${name}.bias has no ${name}.weight`);
    const bias = m.params.get('bias');
    if (weight.shape.length === 4) {
      if (linears.length > 0) reader.fail(`${name}.weight is a Conv2d weight after the Linear layers; convs come first`);
      const [cout = 0, cin = 0, kh = 0, kw = 0] = weight.shape;
      if (kh !== kw || kh % 2 !== 1) reader.fail(`tensor ${JSON.stringify(`${name}.weight`)} has shape ${describeShape(weight.shape)}; kernels are square with an odd side ('same' padding)`);
      if (kernelSize === undefined) {
        kernelSize = kh;
        firstConvName = `${name}.weight`;
      } else if (kh !== kernelSize) {
        reader.fail(`tensor ${JSON.stringify(`${name}.weight`)} has kernel size ${kh} but ${firstConvName} has ${kernelSize}; every block has the same`);
      }
      const wantIn = convs[convs.length - 1]?.outChannels ?? inputShape?.[2] ?? cin;
      if (cin !== wantIn || cout < 1) {
        reader.fail(`tensor ${JSON.stringify(`${name}.weight`)} has shape ${describeShape(weight.shape)}; expected [cout, ${wantIn}, ${kh}, ${kh}] (${convs.length === 0 ? 'the input has' : 'the previous conv gives'} ${wantIn} channels)`);
      }
      const block: CnnConvBlock = {
        kernelSize: kh,
        inChannels: cin,
        outChannels: cout,
        kernel: convFromTorch(reader.values(weight, weight.shape), cout, cin, kh),
        bias: bias ? reader.values(bias, [cout]) : new Float32Array(cout),
      };
      convs.push(block);
      openConv = block;
    } else if (weight.shape.length === 2) {
      linears.push({ name, weight, ...(bias ? { bias } : {}) });
      openConv = undefined;
    } else {
      reader.fail(`tensor ${JSON.stringify(`${name}.weight`)} has shape ${describeShape(weight.shape)}; expected a Conv2d [cout, cin, k, k] or Linear [out, in] weight` +
        (weight.shape.length === 1 ? ' (a 1-D weight without running statistics is a LayerNorm/GroupNorm, not supported)' : ''));
    }
  }
  if (convs.length === 0) reader.fail('no Conv2d weights found (a 4-D <index>.weight); for a plain MLP use the MLP mapping');
  if (linears.length === 0) reader.fail('no Linear weights found after the convs; the model needs a dense head');
  const withBn = convs.filter((c) => c.bn).length;
  if (withBn !== 0 && withBn !== convs.length) reader.fail(`BatchNorm follows ${withBn} of ${convs.length} convs; it must follow every conv or none`);
  if (!inputShape) {
    reader.fail(`the input's height and width are not in a state_dict: pass the architecture, or set __metadata__ ${INPUT_SHAPE_METADATA_KEY} (e.g. "[28,28,1]")`);
  }
  if (inputShape[2] !== convs[0]?.inChannels) {
    reader.fail(`tensor ${JSON.stringify(firstConvName)} takes ${convs[0]?.inChannels} input channels but the input shape ${JSON.stringify(inputShape)} has ${inputShape[2]}`);
  }

  // The head: the first Linear reads the flattened last feature map, CHW in PyTorch, HWC here.
  const sizes = cnnSpatialSizes({ inputShape, channels: convs.map((c) => c.outChannels) });
  const [fh, fw] = sizes[sizes.length - 1] ?? [0, 0];
  const fc = convs[convs.length - 1]?.outChannels ?? 0;
  if (fh < 1 || fw < 1) reader.fail(`${convs.length} pooling blocks shrink the ${inputShape[0]}×${inputShape[1]} input to nothing`);
  const dense: MlpLayer[] = [];
  let inSize = fc * fh * fw;
  for (const [l, { name, weight, bias }] of linears.entries()) {
    const [outSize = 0, actualIn = 0] = weight.shape;
    if (actualIn !== inSize || outSize < 1) {
      reader.fail(`tensor ${JSON.stringify(`${name}.weight`)} has shape ${describeShape(weight.shape)}; expected [out, ${inSize}] (` +
        (l === 0 ? `the flattened ${fc}×${fh}×${fw} map of the last block, for a ${inputShape.join('×')} input` : 'the previous Linear\'s outputs') + ')');
    }
    const values = reader.values(weight, weight.shape);
    let w: Float32Array;
    if (l === 0) {
      w = new Float32Array(inSize * outSize);
      for (let c = 0; c < fc; c++) {
        for (let i = 0; i < fh; i++) {
          for (let j = 0; j < fw; j++) {
            const torchCol = (c * fh + i) * fw + j;
            const ourRow = (i * fw + j) * fc + c;
            for (let o = 0; o < outSize; o++) w[ourRow * outSize + o] = values[o * inSize + torchCol] ?? 0;
          }
        }
      }
    } else {
      w = linearFromTorch(values, outSize, inSize);
    }
    dense.push({ w, b: bias ? reader.values(bias, [outSize]) : new Float32Array(outSize), inSize, outSize });
    inSize = outSize;
  }
  reader.finish();

  const params: CnnParams = { family: 'cnn', inputShape, pool, convs, dense };
  validateCnnParams(params);
  if (expected) checkCnnParamsMatch(params, expected);
  return params;
}

/**
 * The PyTorch `state_dict` of `params` as float32 tensors, named as the module comment's Sequential
 * (per block conv, [BN,] ReLU, pool; Flatten; Linear/ReLU pairs). Refuses (InputError) what
 * `validateCnnParams` refuses.
 */
export function cnnToStateDict(params: CnnParams): Record<string, Float32TensorInput> {
  validateCnnParams(params);
  const out: Record<string, Float32TensorInput> = {};
  let index = 0;
  for (const c of params.convs) {
    out[`${index}.weight`] = { shape: [c.outChannels, c.inChannels, c.kernelSize, c.kernelSize], data: convToTorch(c.kernel, c.kernelSize, c.inChannels, c.outChannels) };
    out[`${index}.bias`] = vector(c.bias);
    index++;
    if (c.bn) {
      out[`${index}.weight`] = vector(c.bn.gamma);
      out[`${index}.bias`] = vector(c.bn.beta);
      out[`${index}.running_mean`] = vector(c.bn.runningMean);
      out[`${index}.running_var`] = vector(c.bn.runningVar);
      index++;
    }
    index += 2; // ReLU, pool
  }
  index++; // Flatten
  const sizes = cnnSpatialSizes({ inputShape: params.inputShape, channels: params.convs.map((c) => c.outChannels) });
  const [fh, fw] = sizes[sizes.length - 1] ?? [0, 0];
  const fc = params.convs[params.convs.length - 1]?.outChannels ?? 0;
  params.dense.forEach((l, i) => {
    let w: Float32Array;
    if (i === 0) {
      // The inverse of the reader's HWC ← CHW permutation.
      w = new Float32Array(l.inSize * l.outSize);
      for (let c = 0; c < fc; c++) {
        for (let y = 0; y < fh; y++) {
          for (let x = 0; x < fw; x++) {
            const torchCol = (c * fh + y) * fw + x;
            const ourRow = (y * fw + x) * fc + c;
            for (let o = 0; o < l.outSize; o++) w[o * l.inSize + torchCol] = l.w[ourRow * l.outSize + o] ?? 0;
          }
        }
      }
    } else {
      w = linearToTorch(l.w, l.inSize, l.outSize);
    }
    out[`${index}.weight`] = { shape: [l.outSize, l.inSize], data: w };
    out[`${index}.bias`] = vector(l.b);
    index += 2; // Linear, ReLU
  });
  return out;
}

/** The metadata written with a CNN: what its state_dict cannot say. */
export function cnnStateDictMetadata(params: CnnParams): Record<string, string> {
  return {
    format: 'pt',
    [FAMILY_METADATA_KEY]: 'cnn',
    [INPUT_SHAPE_METADATA_KEY]: JSON.stringify(params.inputShape),
    [POOL_METADATA_KEY]: params.pool,
    [ACTIVATION_METADATA_KEY]: 'relu',
  };
}

/** The safetensors bytes of `params`: its state_dict plus the metadata of `cnnStateDictMetadata`. */
export function serializeSafetensorsCnn(params: CnnParams): Uint8Array {
  return serializeSafetensors(cnnToStateDict(params), cnnStateDictMetadata(params));
}

/** Parses a safetensors CNN (`parseSafetensors` then `cnnFromStateDict`). */
export function safetensorsCnnFromBytes(bytes: Uint8Array, expected?: CnnArchitecture, what = 'safetensors CNN'): CnnParams {
  return cnnFromStateDict(parseSafetensors(bytes, what), expected, what);
}

/** Reads and validates a `.safetensors` CNN file; InputError says what is wrong with it. */
export async function readSafetensorsCnn(file: string, expected?: CnnArchitecture): Promise<CnnParams> {
  return cnnFromStateDict(await readSafetensorsFile(file), expected, file);
}

/** Writes `params` as a safetensors file PyTorch loads, to a temporary name beside `file` then renamed. */
export async function writeSafetensorsCnn(file: string, params: CnnParams): Promise<void> {
  await writeFileAtomic(file, serializeSafetensorsCnn(params));
}
