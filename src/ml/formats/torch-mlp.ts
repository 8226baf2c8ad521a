/**
 * MLP teachers as PyTorch `state_dict`s in safetensors files: the mapping between the tensors of an
 * `nn.Sequential` of `nn.Linear` layers and `MlpParams`.
 *
 * PyTorch's model is `nn.Sequential(Linear(d0, d1), Act(), Linear(d1, d2), Act(), …, Linear(dk-1, dk))`,
 * possibly held by a module under an attribute (`self.net = nn.Sequential(...)` gives the prefix `net.`;
 * DataParallel adds `module.`, torch.compile `_orig_mod.`). Its state_dict names each Linear by its index
 * in the Sequential; activations and Dropout have no parameters, so their indices are simply absent.
 *
 *   | state_dict key            | PyTorch shape | MlpParams                                              |
 *   |---------------------------|---------------|--------------------------------------------------------|
 *   | `<prefix><k_l>.weight`    | [out, in]     | `layers[l].w`, inSize × outSize: w[i·out + o] = W[o][i] |
 *   | `<prefix><k_l>.bias`      | [out]         | `layers[l].b` (zeros when absent: `bias=False`)        |
 *   | `<prefix><k>.num_batches_tracked` | [] int | ignored (a BatchNorm counter, no effect on outputs)   |
 *
 * where k_0 < k_1 < … are the Linear indices in numeric order (reading accepts any indices: `0, 2, 4` for
 * Linear/ReLU pairs, `0, 3` with Dropout between, …) and `<prefix>` is shared by every tensor. nn.Linear
 * computes `x Wᵀ + b`, our forward `x w + b`, hence the transpose. Writing uses k_l = 2l, the indices of
 * `nn.Sequential(Linear, Act, Linear, Act, …, Linear)`, no prefix, so PyTorch loads the file with
 * `model.load_state_dict(safetensors.torch.load_file(path))`.
 *
 * The activation is not in a state_dict (it has no parameters). Files written here carry it in
 * `__metadata__` as `weightformer.activation` (next to `format: pt`, which PyTorch's own `save_model`
 * writes); a file without it takes the activation of `expected`, else `relu`.
 *
 * Refused with an InputError naming the tensor: names that do not follow the pattern, mixed prefixes,
 * normalisation layers (BatchNorm/LayerNorm weights, running statistics: they would need folding into the
 * Linear layers with an eps the file does not record), non-float weights, shapes that are not 2-D/1-D or do
 * not chain (out of layer l = in of layer l+1), NaN or ±Infinity, and an architecture other than `expected`.
 */
import { promises as fs } from 'node:fs';
import type { ArchitectureSpec } from '../../spec/types';
import { writeFileAtomic } from '../../store/store';
import { InputError } from '../../util/errors';
import type { Activation, MlpLayer, MlpParams } from '../mlp';
import { checkArchitecture, checkParamsMatch } from '../mlp';
import { validateParams } from '../params-io';
import type { Float32TensorInput, Safetensors, SafetensorsTensor } from '../safetensors';
import { FLOAT_DTYPES, parseSafetensors, serializeSafetensors, tensorToFloat32 } from '../safetensors';

/** `__metadata__` key holding the hidden activation in files written here. */
export const ACTIVATION_METADATA_KEY = 'weightformer.activation';
/** Largest teacher file read into memory (a 784-wide MLP with millions of parameters is a few tens of MB). */
export const MAX_SAFETENSORS_TEACHER_BYTES = 1 << 30;

const ACTIVATIONS: readonly Activation[] = ['relu', 'tanh'];
const INTEGER_DTYPES = new Set(['I64', 'I32']);
/** Parameter names of normalisation layers, to say why such a state_dict is refused. */
const NORMALISATION_PARAMS = new Set(['running_mean', 'running_var']);

interface LinearTensors {
  index: number;
  weight?: SafetensorsTensor;
  bias?: SafetensorsTensor;
}

/**
 * `<prefix><index>.<param>` → its parts, or undefined when the name has no numeric module index right
 * before the parameter name.
 */
function splitName(name: string): { prefix: string; index: number; param: string } | undefined {
  const m = /^(.*?)(\d+)\.([^.]+)$/.exec(name);
  if (!m) return undefined;
  const [, prefix = '', digits = '', param = ''] = m;
  // The index must be a whole path component: `fc1.weight` has the digit but no Sequential index.
  if (prefix !== '' && !prefix.endsWith('.')) return undefined;
  if (digits.length > 1 && digits.startsWith('0')) return undefined;
  return { prefix, index: Number(digits), param };
}

function describeShape(t: SafetensorsTensor): string {
  return `[${t.shape.join(', ')}]`;
}

/**
 * An MLP from the tensors of a PyTorch `state_dict` (the mapping in the module comment). `what` names the
 * file in messages. With `expected`, the parameters must have exactly that architecture.
 *
 * @example
 * const teacher = mlpFromStateDict(parseSafetensors(bytes), spec.architecture);
 */
export function mlpFromStateDict(
  tensors: Safetensors | readonly SafetensorsTensor[],
  expected?: ArchitectureSpec,
  what = 'PyTorch state_dict',
): MlpParams {
  if (expected) checkArchitecture(expected);
  const fail = (message: string): never => {
    throw new InputError(`${what}: ${message}`);
  };
  const list = 'tensors' in tensors ? tensors.tensors : tensors;
  const metadata = 'tensors' in tensors ? tensors.metadata : undefined;

  let activation: Activation = expected?.activation ?? 'relu';
  const declared = metadata?.[ACTIVATION_METADATA_KEY];
  if (declared !== undefined) {
    if (!ACTIVATIONS.includes(declared as Activation)) fail(`${ACTIVATION_METADATA_KEY} is ${JSON.stringify(declared)}; expected relu or tanh`);
    activation = declared as Activation;
  }

  let prefix: string | undefined;
  let prefixFrom = '';
  const byIndex = new Map<number, LinearTensors>();
  for (const t of list) {
    const parts = splitName(t.name);
    if (!parts) {
      fail(`tensor ${JSON.stringify(t.name)} is not named like a parameter of an nn.Sequential of Linear layers ` +
        '(<prefix><index>.weight / .bias, e.g. "0.weight" or "net.2.bias")');
    }
    const { prefix: p, index, param } = parts as NonNullable<typeof parts>;
    if (prefix === undefined) {
      prefix = p;
      prefixFrom = t.name;
    } else if (p !== prefix) {
      fail(`tensors ${JSON.stringify(prefixFrom)} and ${JSON.stringify(t.name)} have different prefixes; one nn.Sequential is expected`);
    }
    if (param === 'num_batches_tracked' && INTEGER_DTYPES.has(t.dtype) && t.shape.length <= 1) continue;
    if (INTEGER_DTYPES.has(t.dtype) || !FLOAT_DTYPES.includes(t.dtype)) {
      fail(`tensor ${JSON.stringify(t.name)} has dtype ${t.dtype}; Linear weights and biases are floating point (${FLOAT_DTYPES.join(', ')})`);
    }
    if (NORMALISATION_PARAMS.has(param)) {
      fail(`tensor ${JSON.stringify(t.name)} belongs to a normalisation layer (BatchNorm); only Linear layers are supported`);
    }
    if (param !== 'weight' && param !== 'bias') {
      fail(`tensor ${JSON.stringify(t.name)} is a ${JSON.stringify(param)} parameter; a Linear layer has only weight and bias`);
    }
    const entry = byIndex.get(index) ?? { index };
    byIndex.set(index, entry);
    if (param === 'weight') {
      if (t.shape.length !== 2) {
        fail(`tensor ${JSON.stringify(t.name)} has shape ${describeShape(t)}; a Linear weight is [out, in]` +
          (t.shape.length === 1 ? ' (a 1-D weight belongs to a normalisation layer, which is not supported)' : ''));
      }
      entry.weight = t;
    } else {
      entry.bias = t;
    }
  }
  if (byIndex.size === 0) fail('no Linear layer weights found');

  const linears = [...byIndex.values()].sort((a, b) => a.index - b.index);
  const layers: MlpLayer[] = [];
  for (const { index, weight, bias } of linears) {
    const name = `${prefix ?? ''}${index}`;
    if (!weight) {
      fail(`${name}.bias has no ${name}.weight` + (bias && bias.shape.length === 1 ? ' (a lone 1-D parameter pair belongs to a normalisation layer)' : ''));
    }
    const w = weight as SafetensorsTensor;
    const [outSize = 0, inSize = 0] = w.shape;
    if (outSize < 1 || inSize < 1) fail(`${name}.weight has shape ${describeShape(w)}; a Linear layer needs at least one input and one output`);
    if (bias && (bias.shape.length !== 1 || bias.shape[0] !== outSize)) {
      fail(`${name}.bias has shape ${describeShape(bias)} but ${name}.weight ${describeShape(w)} has ${outSize} outputs`);
    }
    const previous = layers[layers.length - 1];
    if (previous && previous.outSize !== inSize) {
      fail(`${name}.weight takes ${inSize} inputs but the previous Linear layer gives ${previous.outSize} (shapes must chain)`);
    }
    const pytorchWeight = finite(tensorToFloat32(w, what), `${name}.weight`, fail);
    // [out, in] row-major → in × out row-major.
    const wOurs = new Float32Array(inSize * outSize);
    for (let o = 0; o < outSize; o++) {
      for (let i = 0; i < inSize; i++) wOurs[i * outSize + o] = pytorchWeight[o * inSize + i] ?? 0;
    }
    const b = bias ? finite(tensorToFloat32(bias, what), `${name}.bias`, fail) : new Float32Array(outSize);
    layers.push({ w: wOurs, b, inSize, outSize });
  }

  const params: MlpParams = { activation, layers };
  validateParams(params);
  if (expected) checkParamsMatch(params, expected);
  return params;
}

function finite(values: Float32Array, name: string, fail: (message: string) => never): Float32Array {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) fail(`tensor ${JSON.stringify(name)} holds the non-finite value ${values[i]} at flat index ${i}`);
  }
  return values;
}

/**
 * The PyTorch `state_dict` of `params` as float32 tensors: `0.weight` [out, in], `0.bias`, `2.weight`, …
 * (the module comment's mapping, k_l = 2l). Refuses (InputError) what `validateParams` refuses.
 */
export function mlpToStateDict(params: MlpParams): Record<string, Float32TensorInput> {
  validateParams(params);
  const out: Record<string, Float32TensorInput> = {};
  params.layers.forEach((l, i) => {
    const w = new Float32Array(l.inSize * l.outSize);
    for (let o = 0; o < l.outSize; o++) {
      for (let j = 0; j < l.inSize; j++) w[o * l.inSize + j] = l.w[j * l.outSize + o] ?? 0;
    }
    out[`${2 * i}.weight`] = { shape: [l.outSize, l.inSize], data: w };
    out[`${2 * i}.bias`] = { shape: [l.outSize], data: new Float32Array(l.b) };
  });
  return out;
}

/** The safetensors bytes of `params`: its state_dict plus `format: pt` and the activation as metadata. */
export function serializeSafetensorsTeacher(params: MlpParams): Uint8Array {
  return serializeSafetensors(mlpToStateDict(params), { format: 'pt', [ACTIVATION_METADATA_KEY]: params.activation });
}

/** Parses a safetensors teacher (`parseSafetensors` then `mlpFromStateDict`). */
export function safetensorsTeacherFromBytes(bytes: Uint8Array, expected?: ArchitectureSpec, what = 'safetensors teacher'): MlpParams {
  return mlpFromStateDict(parseSafetensors(bytes, what), expected, what);
}

/**
 * Reads a safetensors file into memory (InputError when it cannot be read, is not a file, or is larger
 * than `MAX_SAFETENSORS_TEACHER_BYTES`) and parses it.
 */
export async function readSafetensorsFile(file: string): Promise<Safetensors> {
  let bytes: Buffer;
  try {
    const stat = await fs.stat(file);
    if (!stat.isFile()) throw new InputError(`${file} is not a file`);
    if (stat.size > MAX_SAFETENSORS_TEACHER_BYTES) {
      throw new InputError(`${file} has ${stat.size} bytes, more than the ${MAX_SAFETENSORS_TEACHER_BYTES}-byte limit for a teacher`);
    }
    bytes = await fs.readFile(file);
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`cannot read ${file}: ${(err as Error).message}`);
  }
  return parseSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), file);
}

/**
 * Reads and validates a `.safetensors` teacher file. InputError when it cannot be read, is larger than
 * MAX_SAFETENSORS_TEACHER_BYTES, or fails any check of `parseSafetensors` / `mlpFromStateDict`.
 */
export async function readSafetensorsTeacher(file: string, expected?: ArchitectureSpec): Promise<MlpParams> {
  return mlpFromStateDict(await readSafetensorsFile(file), expected, file);
}

/**
 * Writes `params` as a safetensors file PyTorch loads (see the module comment), to a temporary name beside
 * `file` then renamed: a reader never sees a half-written file.
 */
export async function writeSafetensorsTeacher(file: string, params: MlpParams): Promise<void> {
  await writeFileAtomic(file, serializeSafetensorsTeacher(params));
}
