/**
 * Small ResNet-style nets (stem, post-activation basic blocks on a constant-width residual stream, max
 * pools between stages, global average pool, dense head): architecture and host parameters, the
 * functional forward pass, training, stream/block channel alignment and averaging, the rows view for a
 * WeightFormer, and the parameter file. Built on the CNN module's ops.
 */
export * from './architecture';
export * from './forward';
export * from './io';
export * from './rows';
export * from './align';
export * from './train';
