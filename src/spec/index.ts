/** The pipeline spec: types, loading, defaults, hashing and matrix expansion. */
export * from './types.js';
export { loadPipelineFile, loadPipelineText, validateFiles } from './load.js';
export { expandMatrix, MAX_MATRIX_CELLS, type MatrixCell } from './matrix.js';
export { applyDefaults, type RawPipeline } from './defaults.js';
export { canonicalJson, specHash } from './hash.js';
export { PIPELINE_SCHEMA } from './schema.js';
export { MNIST_EMBEDDED_DIGITS } from './semantics.js';
