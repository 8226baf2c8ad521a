/**
 * WeightFormer: reads an ensemble's aligned parameters, writes one student's. Student families: MLP and
 * CNN (`family.ts`), chosen by `arch.family`; the model, its file and meta-training are the same for both.
 */
export type { WeightformerConfig } from './config';
export { DEFAULT_WEIGHTFORMER_CONFIG, weightformerConfig, checkWeightformerConfig } from './config';
export type { WeightformerModel, ParamSpec } from './model';
export { initWeightformer, paramSpecs, paramCountOf } from './model';
export { generateStudent } from './generate';
export { zooReference, zooReferenceWith } from './reference';
export { serializeWeightformer, deserializeWeightformer } from './io';
export type { MetaTrainOptions, MetaTrainHooks, MetaTrainResult, MetaStepInfo } from './meta-train';
export { metaTrain, MetaTrainingAbortedError, flattenWeightformerParams, withFlatParams, probeBatch } from './meta-train';
export type { MetaTrainState, ValPoint } from './meta-state';
export { serializeMetaTrainState, deserializeMetaTrainState } from './meta-state';
export type { ZooStats, ProbeStats } from './tokens';
export type { StudentArch, StudentParams, ParamsOf, StudentBnMode, StudentFamily, AlignmentRecord, AlignmentContext } from './family';
export { familyOf, isStudentArch, recomputeStudentBn, alignTeachers, alignmentContext, ACTIVATION_ALIGNMENT_FAMILIES } from './family';
