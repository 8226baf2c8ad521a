/**
 * The ML library's public surface. Free of Temporal on purpose: activities call it, it calls nothing of
 * theirs, and it runs the same in a worker thread, a CLI or a test.
 */
export { tf } from './tf';
export * from './backend';
export * from './rng';
export * from './data';
export * from './mlp';
export { validateParams } from './params-io';
export * from './train';
export * from './align';
export { ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON } from './adam';
export * from './early-stopping';
export * from './tfjs-format';
export * from './weightformer';
