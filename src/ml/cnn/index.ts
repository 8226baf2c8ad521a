/**
 * VGG-style CNNs: architecture and host parameters, the functional forward pass, training, channel
 * alignment and averaging, the rows view for a WeightFormer, and the parameter file.
 */
export * from './architecture';
export { conv2dSame, pool2x2, batchNormTrain, batchNormEval } from './ops';
export type { BatchMoments } from './ops';
export * from './forward';
export * from './io';
export * from './rows';
export * from './align';
export * from './train';
