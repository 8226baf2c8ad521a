/**
 * Small Vision Transformers: architecture and host parameters, the functional forward pass, training,
 * head and MLP-unit alignment and averaging, the rows view for a WeightFormer, and the parameter file.
 */
export * from './architecture';
export { gelu, layerNorm, patchify } from './ops';
export * from './forward';
export * from './io';
export * from './rows';
export * from './align';
export * from './train';
