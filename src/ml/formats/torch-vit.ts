/**
 * ViT teachers as PyTorch `state_dict`s in safetensors files: the mapping between timm's
 * `VisionTransformer` names and `VitParams`.
 *
 * Our ViT (see `vit/architecture.ts`) is timm's `VisionTransformer(img_size=(h, w), patch_size=p,
 * in_chans=c, num_classes, embed_dim=dim, depth, num_heads=heads, mlp_ratio, qkv_bias=True,
 * class_token=False, global_pool='avg', fc_norm=False)`: no class token, the final `norm` applied to every
 * token and then the tokens averaged (`fc_norm=False`: timm's default for 'avg' would instead normalise
 * after pooling, a different model, refused below), pre-norm blocks with exact-erf GELU, LayerNorm ε 1e-6
 * (timm's; PyTorch's default is 1e-5).
 *
 *   | state_dict key                   | PyTorch shape       | VitParams                                         |
 *   |----------------------------------|---------------------|---------------------------------------------------|
 *   | `patch_embed.proj.weight`        | [dim, c, p, p]      | `patchEmbed.w`, (p²·c) × dim:                     |
 *   |   (Conv2d, kernel = stride = p)  |                     |   w[((a·p + b)·c + ch)·dim + d] = W[d][ch][a][b]  |
 *   |   or (Linear on flat patches)    | [dim, p²·c]         |   w[r·dim + d] = W[d][r'] (patch order below)     |
 *   | `patch_embed.proj.bias`          | [dim]               | `patchEmbed.b` (zeros when absent)                |
 *   | `pos_embed`                      | [1, tokens, dim]    | `posEmbed`, tokens × dim                          |
 *   | `blocks.{i}.norm1.weight`/`.bias`| [dim]               | `blocks[i].norm1.gamma` / `.beta`                 |
 *   | `blocks.{i}.attn.qkv.weight`     | [3·dim, dim]        | rows [0, dim) → `q.w`, [dim, 2·dim) → `k.w`,      |
 *   |                                  |                     |   [2·dim, 3·dim) → `v.w`, each transposed          |
 *   | `blocks.{i}.attn.qkv.bias`       | [3·dim]             | `q.b`, `k.b`, `v.b` likewise (zeros when absent: `qkv_bias=False`) |
 *   | `blocks.{i}.attn.proj.weight`/`.bias` | [dim, dim] / [dim] | `blocks[i].proj` (transposed)                 |
 *   | `blocks.{i}.norm2.weight`/`.bias`| [dim]               | `blocks[i].norm2`                                 |
 *   | `blocks.{i}.mlp.fc1.weight`/`.bias` | [hidden, dim] / [hidden] | `blocks[i].fc1` (transposed)             |
 *   | `blocks.{i}.mlp.fc2.weight`/`.bias` | [dim, hidden] / [dim]    | `blocks[i].fc2` (transposed)             |
 *   | `blocks.{i}.ls1.gamma`, `.ls2.gamma` | [dim]           | read only: LayerScale, folded into `proj` / `fc2` (their output columns scaled) |
 *   | `norm.weight` / `.bias`          | [dim]               | `norm`                                            |
 *   | `head.weight` / `.bias`          | [classes, dim] / [classes] | `head` (transposed)                        |
 *
 * A prefix shared by every tensor (`module.`, `model.`) is accepted. Why the heads line up: timm
 * reshapes qkv's output as [3, heads, dh] (`qkv.reshape(B, N, 3, heads, dh).permute(2, 0, 3, 1, 4)`), so
 * output feature `s·dim + h·dh + j` is component j of head h of q (s = 0), k (1) or v (2) — exactly our
 * q/k/v column layout (head h owns columns [h·dh, (h+1)·dh)), and `proj` reads the heads concatenated in
 * head order in both. Scores are scaled by dh^-½ in both. Patches: timm's Conv2d output [dim, h/p, w/p]
 * is flattened row-major into tokens (`flatten(2).transpose(1, 2)`), our token order; inside a patch our
 * rows are (row, column, channel), channel fastest, hence the conv transposition above. A Linear patch
 * embedding reads patches flattened as `weightformer.patch_order` says: `hwc` (the default; einops
 * `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`, vit-pytorch's order and ours, so no permutation) or `chw`
 * (`F.unfold`'s order, the Conv2d weight reshaped to [dim, c·p·p]: permuted as the Conv2d).
 *
 * What a state_dict cannot say is `__metadata__` in files written here, else taken from `expected`:
 *   - `weightformer.heads`: the number of attention heads (qkv's shape is the same for any). Required;
 *   - `weightformer.input_shape`: `[h, w, c]` as JSON. Without it or `expected`, a Conv2d patch embedding
 *     with a square number of tokens is read as a square image (timm's usual `img_size`); otherwise fails;
 *   - `weightformer.layer_norm_eps`: written `1e-6`; any other value is refused, since our LayerNorm's ε
 *     is fixed at timm's 1e-6 (a model trained with PyTorch's default 1e-5 differs slightly; declare
 *     nothing to accept it as is);
 *   - `weightformer.family`: `vit`, checked when present.
 * Writing uses the Conv2d form, biases everywhere and no LayerScale, so `timm.create_model(…)` as above
 * loads the file strictly; reading back gives the same parameters bit for bit.
 *
 * Refused with an InputError naming the tensor: missing tensors, wrong shapes or dtypes, NaN or
 * ±Infinity, blocks that skip a number or differ in MLP width, a class or register token (`cls_token`,
 * `reg_token`), `fc_norm`, `norm_pre`, q/k norms, any tensor the table does not list, and an architecture
 * other than `expected`.
 */
import { writeFileAtomic } from '../../store/store';
import type { MlpLayer } from '../mlp';
import type { Float32TensorInput } from '../safetensors';
import { parseSafetensors, serializeSafetensors } from '../safetensors';
import type { VitArchitecture, VitBlock, VitLayerNorm, VitParams } from '../vit/architecture';
import { checkVitArchitecture, checkVitParamsMatch, LN_EPSILON, validateVitParams, vitTokens } from '../vit/architecture';
import type { StateDictInput } from './torch-cnn';
import {
  checkFamilyMetadata,
  convFromTorch,
  convToTorch,
  describeShape,
  detectPrefix,
  FAMILY_METADATA_KEY,
  INPUT_SHAPE_METADATA_KEY,
  inputShapeFromMetadata,
  linearFromTorch,
  linearToTorch,
  readSafetensorsFile,
  StateDictReader,
  vector,
} from './torch-cnn';

/** `__metadata__` key holding the number of attention heads. */
export const HEADS_METADATA_KEY = 'weightformer.heads';
/** `__metadata__` key holding the LayerNorm ε (only timm's 1e-6 is accepted). */
export const LAYER_NORM_EPS_METADATA_KEY = 'weightformer.layer_norm_eps';
/** `__metadata__` key: how a Linear patch embedding flattens a patch, `hwc` (default) or `chw`. */
export const PATCH_ORDER_METADATA_KEY = 'weightformer.patch_order';

type PatchOrder = 'hwc' | 'chw';

/** `name.weight` [out, in] and optional `name.bias` [out] as our in × out layer. */
function readLinear(reader: StateDictReader, name: string, inSize: number, outSize: number): MlpLayer {
  return {
    w: linearFromTorch(reader.take(`${name}.weight`, [outSize, inSize]), outSize, inSize),
    b: reader.takeOptional(`${name}.bias`, [outSize]) ?? new Float32Array(outSize),
    inSize,
    outSize,
  };
}

function readNorm(reader: StateDictReader, name: string, dim: number): VitLayerNorm {
  return { gamma: reader.take(`${name}.weight`, [dim]), beta: reader.take(`${name}.bias`, [dim]) };
}

/** LayerScale folded into the layer before it: y·γ = x·(w·γ) + b·γ, column by column. */
function foldLayerScale(layer: MlpLayer, gamma: Float32Array): void {
  for (let i = 0; i < layer.inSize; i++) {
    for (let o = 0; o < layer.outSize; o++) layer.w[i * layer.outSize + o] = (layer.w[i * layer.outSize + o] ?? 0) * (gamma[o] ?? 0);
  }
  for (let o = 0; o < layer.outSize; o++) layer.b[o] = (layer.b[o] ?? 0) * (gamma[o] ?? 0);
}

/** Why a tensor the table does not list is refused, when its name says. */
function explainUnknown(local: string): string | undefined {
  if (local === 'cls_token' || local === 'reg_token') return 'this ViT mean-pools its patch tokens and has no class or register tokens (timm class_token=False)';
  if (local.startsWith('fc_norm.')) return "a LayerNorm after pooling (timm's fc_norm) is not supported; the final norm applies to every token before pooling (fc_norm=False)";
  if (local.startsWith('norm_pre.')) return 'a LayerNorm before the blocks (pre_norm=True) is not supported';
  if (/^blocks\.\d+\.attn\.(q_norm|k_norm)\./.test(local)) return 'q/k normalisation (qk_norm=True) is not supported';
  if (/^blocks\.\d+\./.test(local)) return 'a block has norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2 (and optionally ls1/ls2) only';
  return undefined;
}

function positiveIntOrUndefined(raw: string | undefined): number | undefined {
  if (raw === undefined || !/^[1-9]\d{0,7}$/.test(raw)) return undefined;
  return Number(raw);
}

/**
 * A ViT from the tensors of a PyTorch `state_dict` (the mapping in the module comment). With `expected`,
 * the parameters must have exactly that architecture; it also supplies the heads and input shape a file
 * without metadata cannot. `what` names the file in messages.
 */
export function vitFromStateDict(tensors: StateDictInput, expected?: VitArchitecture, what = 'PyTorch state_dict'): VitParams {
  if (expected) checkVitArchitecture(expected);
  const reader: StateDictReader = new StateDictReader(tensors, what);
  checkFamilyMetadata(reader, 'vit');
  const metadata = reader.metadata ?? {};
  const eps = metadata[LAYER_NORM_EPS_METADATA_KEY];
  if (eps !== undefined && !(Math.abs(Number(eps) - LN_EPSILON) <= 1e-12)) {
    reader.fail(`${LAYER_NORM_EPS_METADATA_KEY} is ${JSON.stringify(eps)}; our ViT's LayerNorm ε is ${LN_EPSILON} (timm's)`);
  }
  const order = metadata[PATCH_ORDER_METADATA_KEY] ?? 'hwc';
  if (order !== 'hwc' && order !== 'chw') reader.fail(`${PATCH_ORDER_METADATA_KEY} is ${JSON.stringify(order)}; expected hwc or chw`);
  const patchOrder: PatchOrder = order;
  reader.prefix = detectPrefix(reader, ['pos_embed', 'patch_embed.proj.weight', 'head.weight']);
  const at = (local: string): string => JSON.stringify(reader.prefix + local);

  // Width and patch geometry from the patch embedding.
  const pe = reader.get('patch_embed.proj.weight');
  if (!pe) reader.fail(`tensor ${at('patch_embed.proj.weight')} (the patch embedding) is missing`);
  const [dim = 0] = pe.shape;
  if (dim < 1 || (pe.shape.length !== 4 && pe.shape.length !== 2) || (pe.shape.length === 4 && (pe.shape[2] !== pe.shape[3] || (pe.shape[2] ?? 0) < 1))) {
    reader.fail(`tensor ${JSON.stringify(pe.name)} has shape ${describeShape(pe.shape)}; expected a Conv2d [dim, c, p, p] or a Linear [dim, p²·c]`);
  }
  const isConv = pe.shape.length === 4;
  const declaredHeads = metadata[HEADS_METADATA_KEY];
  const heads = declaredHeads !== undefined ? positiveIntOrUndefined(declaredHeads) : expected?.heads;
  if (heads === undefined) {
    reader.fail(declaredHeads !== undefined
      ? `${HEADS_METADATA_KEY} is ${JSON.stringify(declaredHeads)}; expected a positive integer`
      : `the number of attention heads is not in a state_dict: pass the architecture, or set __metadata__ ${HEADS_METADATA_KEY}`);
  }
  if (dim % heads !== 0) reader.fail(`${heads} heads do not divide the width ${dim} of ${JSON.stringify(pe.name)}`);

  const pos = reader.get('pos_embed');
  if (!pos) reader.fail(`tensor ${at('pos_embed')} is missing`);
  const tokens = pos.shape[1] ?? 0;
  if (pos.shape.length !== 3 || pos.shape[0] !== 1 || pos.shape[2] !== dim || tokens < 1) {
    reader.fail(`tensor ${JSON.stringify(pos.name)} has shape ${describeShape(pos.shape)}; expected [1, tokens, ${dim}]`);
  }
  let inputShape = inputShapeFromMetadata(reader, expected?.inputShape);
  if (!inputShape && isConv) {
    const side = Math.round(Math.sqrt(tokens));
    const p = pe.shape[2] ?? 0;
    if (side * side === tokens) inputShape = [side * p, side * p, pe.shape[1] ?? 0];
  }
  if (!inputShape) {
    reader.fail(`the input shape is not in this state_dict: pass the architecture, or set __metadata__ ${INPUT_SHAPE_METADATA_KEY} (e.g. "[28,28,1]")`);
  }
  const [h, w, c] = inputShape;
  let patchSize: number;
  if (isConv) {
    patchSize = pe.shape[2] ?? 0;
    if (pe.shape[1] !== c) reader.fail(`tensor ${JSON.stringify(pe.name)} takes ${pe.shape[1]} channels but the input shape ${JSON.stringify(inputShape)} has ${c}`);
  } else {
    const perPatch = (pe.shape[1] ?? 0) / c;
    patchSize = Math.round(Math.sqrt(perPatch));
    if (patchSize < 1 || patchSize * patchSize !== perPatch) {
      reader.fail(`tensor ${JSON.stringify(pe.name)} has shape ${describeShape(pe.shape)}: ${pe.shape[1]} inputs are not p²·${c} for a ${c}-channel input`);
    }
  }
  if (h % patchSize !== 0 || w % patchSize !== 0) {
    reader.fail(`tensor ${JSON.stringify(pe.name)} cuts ${patchSize}×${patchSize} patches, which do not tile the ${h}×${w} input`);
  }
  const wantTokens = vitTokens({ inputShape, patchSize });
  if (tokens !== wantTokens) {
    reader.fail(`tensor ${JSON.stringify(pos.name)} has shape ${describeShape(pos.shape)}; a ${h}×${w} input in ${patchSize}×${patchSize} patches has ${wantTokens} tokens`);
  }
  const patchIn = patchSize * patchSize * c;
  const peValues = reader.take('patch_embed.proj.weight', pe.shape);
  const patchEmbed: MlpLayer = {
    // A Conv2d weight and a chw-ordered Linear weight are the same [dim, c, p, p] array.
    w: isConv || patchOrder === 'chw' ? convFromTorch(peValues, dim, c, patchSize) : linearFromTorch(peValues, dim, patchIn),
    b: reader.takeOptional('patch_embed.proj.bias', [dim]) ?? new Float32Array(dim),
    inSize: patchIn,
    outSize: dim,
  };
  const posEmbed = reader.take('pos_embed', [1, tokens, dim]);

  // Blocks 0…depth-1 from the names.
  const indices = new Set<number>();
  for (const t of reader.list) {
    const m = /^blocks\.(\d+)\./.exec(t.name.slice(reader.prefix.length));
    if (m) indices.add(Number(m[1]));
  }
  const depth = indices.size;
  if (depth === 0) reader.fail(`no ${reader.prefix}blocks.* tensors: a ViT has at least one block`);
  for (let i = 0; i < depth; i++) {
    if (!indices.has(i)) reader.fail(`blocks are numbered ${[...indices].sort((a, b) => a - b).join(', ')}; expected 0…${depth - 1} (${reader.prefix}blocks.${i} is missing)`);
  }
  const fc1 = reader.get('blocks.0.mlp.fc1.weight');
  if (!fc1) reader.fail(`tensor ${at('blocks.0.mlp.fc1.weight')} is missing`);
  const hidden = fc1.shape[0] ?? 0;
  if (fc1.shape.length !== 2 || hidden < 1) reader.fail(`tensor ${JSON.stringify(fc1.name)} has shape ${describeShape(fc1.shape)}; expected [hidden, ${dim}]`);

  const blocks: VitBlock[] = [];
  for (let i = 0; i < depth; i++) {
    const b = `blocks.${i}`;
    const norm1 = readNorm(reader, `${b}.norm1`, dim);
    const qkvW = reader.take(`${b}.attn.qkv.weight`, [3 * dim, dim]);
    const qkvB = reader.takeOptional(`${b}.attn.qkv.bias`, [3 * dim]) ?? new Float32Array(3 * dim);
    // Rows [s·dim, (s+1)·dim) of the fused weight are q (s = 0), k (1), v (2).
    const part = (s: number): MlpLayer => ({
      w: linearFromTorch(qkvW.subarray(s * dim * dim, (s + 1) * dim * dim), dim, dim),
      b: qkvB.slice(s * dim, (s + 1) * dim),
      inSize: dim,
      outSize: dim,
    });
    const proj = readLinear(reader, `${b}.attn.proj`, dim, dim);
    const norm2 = readNorm(reader, `${b}.norm2`, dim);
    const fc1Layer = readLinear(reader, `${b}.mlp.fc1`, dim, hidden);
    const fc2 = readLinear(reader, `${b}.mlp.fc2`, hidden, dim);
    const ls1 = reader.takeOptional(`${b}.ls1.gamma`, [dim]);
    const ls2 = reader.takeOptional(`${b}.ls2.gamma`, [dim]);
    if (ls1) foldLayerScale(proj, ls1);
    if (ls2) foldLayerScale(fc2, ls2);
    blocks.push({ norm1, q: part(0), k: part(1), v: part(2), proj, norm2, fc1: fc1Layer, fc2 });
  }
  const norm = readNorm(reader, 'norm', dim);
  const head = reader.get('head.weight');
  if (!head) reader.fail(`tensor ${at('head.weight')} (the classifier) is missing`);
  const classes = head.shape[0] ?? 0;
  if (head.shape.length !== 2 || classes < 1) reader.fail(`tensor ${JSON.stringify(head.name)} has shape ${describeShape(head.shape)}; expected [classes, ${dim}]`);
  const headLayer = readLinear(reader, 'head', dim, classes);
  reader.finish(explainUnknown);

  const params: VitParams = { family: 'vit', inputShape: [h, w, c], patchSize, heads, patchEmbed, posEmbed, blocks, norm, head: headLayer };
  validateVitParams(params);
  if (expected) checkVitParamsMatch(params, expected);
  return params;
}

function linear(out: Record<string, Float32TensorInput>, name: string, l: MlpLayer): void {
  out[`${name}.weight`] = { shape: [l.outSize, l.inSize], data: linearToTorch(l.w, l.inSize, l.outSize) };
  out[`${name}.bias`] = vector(l.b);
}

function layerNorm(out: Record<string, Float32TensorInput>, name: string, n: VitLayerNorm): void {
  out[`${name}.weight`] = vector(n.gamma);
  out[`${name}.bias`] = vector(n.beta);
}

/** The PyTorch `state_dict` of `params` (timm's names, Conv2d patch embedding). Refuses what `validateVitParams` refuses. */
export function vitToStateDict(params: VitParams): Record<string, Float32TensorInput> {
  validateVitParams(params);
  const out: Record<string, Float32TensorInput> = {};
  const p = params.patchSize;
  const c = params.inputShape[2];
  const dim = params.patchEmbed.outSize;
  // Our (p²·c) × dim patch embedding is the [p, p, c, dim] kernel the conv transposition expects.
  out['patch_embed.proj.weight'] = { shape: [dim, c, p, p], data: convToTorch(params.patchEmbed.w, p, c, dim) };
  out['patch_embed.proj.bias'] = vector(params.patchEmbed.b);
  out.pos_embed = { shape: [1, params.posEmbed.length / dim, dim], data: new Float32Array(params.posEmbed) };
  params.blocks.forEach((b, i) => {
    const at = `blocks.${i}`;
    layerNorm(out, `${at}.norm1`, b.norm1);
    const qkvW = new Float32Array(3 * dim * dim);
    const qkvB = new Float32Array(3 * dim);
    [b.q, b.k, b.v].forEach((l, s) => {
      qkvW.set(linearToTorch(l.w, dim, dim), s * dim * dim);
      qkvB.set(l.b, s * dim);
    });
    out[`${at}.attn.qkv.weight`] = { shape: [3 * dim, dim], data: qkvW };
    out[`${at}.attn.qkv.bias`] = { shape: [3 * dim], data: qkvB };
    linear(out, `${at}.attn.proj`, b.proj);
    layerNorm(out, `${at}.norm2`, b.norm2);
    linear(out, `${at}.mlp.fc1`, b.fc1);
    linear(out, `${at}.mlp.fc2`, b.fc2);
  });
  layerNorm(out, 'norm', params.norm);
  linear(out, 'head', params.head);
  return out;
}

/** The metadata written with a ViT: what its state_dict cannot say. */
export function vitStateDictMetadata(params: VitParams): Record<string, string> {
  return {
    format: 'pt',
    [FAMILY_METADATA_KEY]: 'vit',
    [INPUT_SHAPE_METADATA_KEY]: JSON.stringify(params.inputShape),
    [HEADS_METADATA_KEY]: String(params.heads),
    [LAYER_NORM_EPS_METADATA_KEY]: LN_EPSILON.toExponential(),
  };
}

/** The safetensors bytes of `params`: its state_dict plus `vitStateDictMetadata`. */
export function serializeSafetensorsVit(params: VitParams): Uint8Array {
  return serializeSafetensors(vitToStateDict(params), vitStateDictMetadata(params));
}

/** Parses a safetensors ViT (`parseSafetensors` then `vitFromStateDict`). */
export function safetensorsVitFromBytes(bytes: Uint8Array, expected?: VitArchitecture, what = 'safetensors ViT'): VitParams {
  return vitFromStateDict(parseSafetensors(bytes, what), expected, what);
}

/** Reads and validates a `.safetensors` ViT file; InputError says what is wrong with it. */
export async function readSafetensorsVit(file: string, expected?: VitArchitecture): Promise<VitParams> {
  return vitFromStateDict(await readSafetensorsFile(file), expected, file);
}

/** Writes `params` as a safetensors file timm loads, to a temporary name beside `file` then renamed. */
export async function writeSafetensorsVit(file: string, params: VitParams): Promise<void> {
  await writeFileAtomic(file, serializeSafetensorsVit(params));
}
