/**
 * ResNet teachers as PyTorch `state_dict`s in safetensors files: the mapping between torchvision-style
 * names and `ResnetParams`.
 *
 * Our ResNet (see `resnet/architecture.ts`) is torchvision's ResNet with `BasicBlock`s, stripped down:
 * every conv has stride 1, kernel k and 'same' padding (k // 2), the stream keeps `width` channels, so no
 * block has a `downsample` projection; there is no max pool after the stem, and stages after the first
 * start with a parameter-free 2×2 max pool (`nn.MaxPool2d(2)`) instead of a strided conv; the head is
 * `AdaptiveAvgPool2d(1)`, flatten, `fc`. The PyTorch module that matches holds, under exactly these
 * attribute names (torchvision's):
 *
 *   conv1 = Conv2d(c, width, k, padding=k // 2, bias=True); bn1 = BatchNorm2d(width)       # the stem
 *   layer{s} = nn.Sequential(BasicBlock, …)  for s = 1 … stages (1-based, as torchvision's layer1…layer4)
 *     BasicBlock: conv1, bn1, conv2, bn2 (Conv2d(width, width, k, padding=k // 2, bias=True), BatchNorm2d)
 *     forward: relu(x + bn2(conv2(relu(bn1(conv1(x))))))
 *   fc = Linear(width, classes)
 *
 *   | state_dict key                        | PyTorch shape       | ResnetParams                                 |
 *   |---------------------------------------|---------------------|----------------------------------------------|
 *   | `conv1.weight`                        | [width, c, k, k]    | `stem.kernel` [k, k, c, width] (transposed as the CNN's) |
 *   | `conv1.bias`                          | [width]             | `stem.bias` (zeros when absent: `bias=False`) |
 *   | `bn1.weight` / `.bias`                | [width]             | `stem.bn.gamma` / `.beta`                    |
 *   | `bn1.running_mean` / `.running_var`   | [width]             | `stem.bn.runningMean` / `.runningVar`        |
 *   | `layer{s}.{b}.conv{j}.weight`         | [width, width, k, k]| `stages[s-1][b].conv{j}.kernel`, j = 1, 2    |
 *   | `layer{s}.{b}.conv{j}.bias`           | [width]             | `stages[s-1][b].conv{j}.bias` (zeros when absent) |
 *   | `layer{s}.{b}.bn{j}.weight` / `.bias` / `.running_mean` / `.running_var` | [width] | `stages[s-1][b].conv{j}.bn` |
 *   | `….num_batches_tracked`               | [] int64            | ignored (a counter; no effect on outputs)    |
 *   | `fc.weight`                           | [classes, width]    | `head.w`, width × classes (transposed)       |
 *   | `fc.bias`                             | [classes]           | `head.b` (zeros when absent)                 |
 *
 * A prefix shared by every tensor (`module.`, `_orig_mod.`, `model.`) is accepted. BatchNorm2d's ε is
 * PyTorch's default 1e-5; the file does not record it. The global average pool makes the spatial size
 * unrecoverable from the shapes, so the input shape is `__metadata__` `weightformer.input_shape` (`[h, w,
 * c]` as JSON) in files written here, else the expected architecture's; without either, reading fails.
 * `weightformer.family` (`resnet`) is written too and checked when present. Everything else — width,
 * stages, blocks per stage, kernel size, classes — is read off the shapes.
 *
 * Written files carry every conv's bias (our convs have one; round trips are exact), so the PyTorch
 * module needs `bias=True` on its convs — torchvision's use `bias=False`, whose files read fine (zero
 * biases). `num_batches_tracked` is not written (float32 only); BatchNorm's loader fills it in.
 *
 * Refused with an InputError naming the tensor: missing tensors, wrong shapes or dtypes, NaN or
 * ±Infinity, negative running variances, stages that skip a number or differ in block count,
 * `downsample` projections and bottleneck blocks (`conv3`/`bn3`), any tensor the table does not list,
 * and an architecture other than `expected`.
 */
import { writeFileAtomic } from '../../store/store';
import type { CnnBatchNorm } from '../cnn/architecture';
import type { ResnetArchitecture, ResnetBlock, ResnetConv, ResnetParams } from '../resnet/architecture';
import { checkResnetArchitecture, checkResnetParamsMatch, validateResnetParams } from '../resnet/architecture';
import type { Float32TensorInput } from '../safetensors';
import { parseSafetensors, serializeSafetensors } from '../safetensors';
import type { StateDictInput } from './torch-cnn';
import {
  checkFamilyMetadata,
  checkReluMetadata,
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

/** Reads `<name>.weight` (a conv), its optional bias and the BatchNorm `<bnName>`. */
function readConv(reader: StateDictReader, name: string, bnName: string, cin: number, width: number, k: number): ResnetConv {
  const kernel = convFromTorch(reader.take(`${name}.weight`, [width, cin, k, k]), width, cin, k);
  const bias = reader.takeOptional(`${name}.bias`, [width]) ?? new Float32Array(width);
  const bn: CnnBatchNorm = {
    gamma: reader.takeOptional(`${bnName}.weight`, [width]) ?? new Float32Array(width).fill(1),
    beta: reader.takeOptional(`${bnName}.bias`, [width]) ?? new Float32Array(width),
    runningMean: reader.take(`${bnName}.running_mean`, [width], 'track_running_stats=False is not supported'),
    runningVar: reader.take(`${bnName}.running_var`, [width], 'track_running_stats=False is not supported'),
  };
  const negative = bn.runningVar.findIndex((v) => v < 0);
  if (negative >= 0) reader.fail(`tensor ${JSON.stringify(`${reader.prefix}${bnName}.running_var`)} holds the negative variance ${bn.runningVar[negative]} at index ${negative}`);
  reader.skipCounter(`${bnName}.num_batches_tracked`);
  return { kernelSize: k, inChannels: cin, outChannels: width, kernel, bias, bn };
}

/** Why a tensor the table does not list is refused, when its name says. */
function explainUnknown(local: string): string | undefined {
  if (/^layer\d+\.\d+\.downsample\./.test(local)) return 'projection shortcuts (downsample) are not supported: every block keeps the stream width';
  if (/^layer\d+\.\d+\.(conv3|bn3)\./.test(local)) return 'bottleneck blocks (conv3/bn3) are not supported; blocks are BasicBlocks';
  if (/^layer\d+\./.test(local)) return 'a BasicBlock has conv1, bn1, conv2 and bn2 only';
  return undefined;
}

/**
 * A ResNet from the tensors of a PyTorch `state_dict` (the mapping in the module comment). With
 * `expected`, the parameters must have exactly that architecture; it also supplies the input shape a
 * file without metadata cannot. `what` names the file in messages.
 */
export function resnetFromStateDict(tensors: StateDictInput, expected?: ResnetArchitecture, what = 'PyTorch state_dict'): ResnetParams {
  if (expected) checkResnetArchitecture(expected);
  const reader: StateDictReader = new StateDictReader(tensors, what);
  checkFamilyMetadata(reader, 'resnet');
  checkReluMetadata(reader);
  reader.prefix = detectPrefix(reader, ['fc.weight', 'conv1.weight', 'bn1.running_mean'], /(^|\.)layer\d+\.\d+\.$/);

  const stem = reader.get('conv1.weight');
  if (!stem) reader.fail(`tensor ${JSON.stringify(`${reader.prefix}conv1.weight`)} (the stem conv) is missing`);
  const [width = 0, c = 0, k = 0, kw = 0] = stem.shape;
  if (stem.shape.length !== 4 || k !== kw || k % 2 !== 1 || width < 1 || c < 1) {
    reader.fail(`tensor ${JSON.stringify(stem.name)} has shape ${describeShape(stem.shape)}; expected [width, channels, k, k] with k odd`);
  }
  const inputShape = inputShapeFromMetadata(reader, expected?.inputShape);
  if (!inputShape) {
    reader.fail(`the input's height and width are not in a state_dict: pass the architecture, or set __metadata__ ${INPUT_SHAPE_METADATA_KEY} (e.g. "[28,28,1]")`);
  }
  if (inputShape[2] !== c) reader.fail(`tensor ${JSON.stringify(stem.name)} takes ${c} input channels but the input shape ${JSON.stringify(inputShape)} has ${inputShape[2]}`);

  // Stages and blocks from the names: layer1…layerS, blocks 0…B-1 each.
  const blocksOf = new Map<number, Set<number>>();
  for (const t of reader.list) {
    const m = /^layer(\d+)\.(\d+)\./.exec(t.name.slice(reader.prefix.length));
    if (!m) continue;
    const s = Number(m[1]);
    const set = blocksOf.get(s) ?? new Set<number>();
    set.add(Number(m[2]));
    blocksOf.set(s, set);
  }
  const stageCount = blocksOf.size;
  if (stageCount === 0) reader.fail(`no ${reader.prefix}layer1.* tensors: a ResNet has at least one stage`);
  for (let s = 1; s <= stageCount; s++) {
    if (!blocksOf.has(s)) reader.fail(`stages are numbered layer1…layer${stageCount} but ${reader.prefix}layer${s} is missing`);
  }
  const blocksPerStage = blocksOf.get(1)?.size ?? 0;
  for (let s = 1; s <= stageCount; s++) {
    const blocks = blocksOf.get(s) ?? new Set<number>();
    for (let b = 0; b < blocks.size; b++) {
      if (!blocks.has(b)) reader.fail(`${reader.prefix}layer${s} has blocks ${[...blocks].sort((x, y) => x - y).join(', ')}; expected 0…${blocks.size - 1}`);
    }
    if (blocks.size !== blocksPerStage) reader.fail(`${reader.prefix}layer${s} has ${blocks.size} blocks but layer1 has ${blocksPerStage}; every stage has the same number`);
  }

  const params: ResnetParams = {
    family: 'resnet',
    inputShape,
    stem: readConv(reader, 'conv1', 'bn1', c, width, k),
    stages: [],
    head: { w: new Float32Array(0), b: new Float32Array(0), inSize: width, outSize: 0 },
  };
  for (let s = 1; s <= stageCount; s++) {
    const stage: ResnetBlock[] = [];
    for (let b = 0; b < blocksPerStage; b++) {
      const at = `layer${s}.${b}`;
      stage.push({ conv1: readConv(reader, `${at}.conv1`, `${at}.bn1`, width, width, k), conv2: readConv(reader, `${at}.conv2`, `${at}.bn2`, width, width, k) });
    }
    params.stages.push(stage);
  }
  const fc = reader.get('fc.weight');
  if (!fc) reader.fail(`tensor ${JSON.stringify(`${reader.prefix}fc.weight`)} (the head) is missing`);
  const [classes = 0] = fc.shape;
  if (fc.shape.length !== 2 || classes < 1) reader.fail(`tensor ${JSON.stringify(fc.name)} has shape ${describeShape(fc.shape)}; expected [classes, ${width}]`);
  params.head = {
    w: linearFromTorch(reader.take('fc.weight', [classes, width]), classes, width),
    b: reader.takeOptional('fc.bias', [classes]) ?? new Float32Array(classes),
    inSize: width,
    outSize: classes,
  };
  reader.finish(explainUnknown);

  validateResnetParams(params);
  if (expected) checkResnetParamsMatch(params, expected);
  return params;
}

function writeConv(out: Record<string, Float32TensorInput>, c: ResnetConv, name: string, bnName: string): void {
  out[`${name}.weight`] = { shape: [c.outChannels, c.inChannels, c.kernelSize, c.kernelSize], data: convToTorch(c.kernel, c.kernelSize, c.inChannels, c.outChannels) };
  out[`${name}.bias`] = vector(c.bias);
  out[`${bnName}.weight`] = vector(c.bn.gamma);
  out[`${bnName}.bias`] = vector(c.bn.beta);
  out[`${bnName}.running_mean`] = vector(c.bn.runningMean);
  out[`${bnName}.running_var`] = vector(c.bn.runningVar);
}

/** The PyTorch `state_dict` of `params` (the module comment's names). Refuses what `validateResnetParams` refuses. */
export function resnetToStateDict(params: ResnetParams): Record<string, Float32TensorInput> {
  validateResnetParams(params);
  const out: Record<string, Float32TensorInput> = {};
  writeConv(out, params.stem, 'conv1', 'bn1');
  params.stages.forEach((stage, s) =>
    stage.forEach((block, b) => {
      const at = `layer${s + 1}.${b}`;
      writeConv(out, block.conv1, `${at}.conv1`, `${at}.bn1`);
      writeConv(out, block.conv2, `${at}.conv2`, `${at}.bn2`);
    }),
  );
  out['fc.weight'] = { shape: [params.head.outSize, params.head.inSize], data: linearToTorch(params.head.w, params.head.inSize, params.head.outSize) };
  out['fc.bias'] = vector(params.head.b);
  return out;
}

/** The metadata written with a ResNet: what its state_dict cannot say. */
export function resnetStateDictMetadata(params: ResnetParams): Record<string, string> {
  return { format: 'pt', [FAMILY_METADATA_KEY]: 'resnet', [INPUT_SHAPE_METADATA_KEY]: JSON.stringify(params.inputShape) };
}

/** The safetensors bytes of `params`: its state_dict plus `resnetStateDictMetadata`. */
export function serializeSafetensorsResnet(params: ResnetParams): Uint8Array {
  return serializeSafetensors(resnetToStateDict(params), resnetStateDictMetadata(params));
}

/** Parses a safetensors ResNet (`parseSafetensors` then `resnetFromStateDict`). */
export function safetensorsResnetFromBytes(bytes: Uint8Array, expected?: ResnetArchitecture, what = 'safetensors ResNet'): ResnetParams {
  return resnetFromStateDict(parseSafetensors(bytes, what), expected, what);
}

/** Reads and validates a `.safetensors` ResNet file; InputError says what is wrong with it. */
export async function readSafetensorsResnet(file: string, expected?: ResnetArchitecture): Promise<ResnetParams> {
  return resnetFromStateDict(await readSafetensorsFile(file), expected, file);
}

/** Writes `params` as a safetensors file PyTorch loads, to a temporary name beside `file` then renamed. */
export async function writeSafetensorsResnet(file: string, params: ResnetParams): Promise<void> {
  await writeFileAtomic(file, serializeSafetensorsResnet(params));
}
