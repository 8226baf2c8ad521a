import type { StageInput, StageOutput } from '../workflows/types';
import type { MetaTrainJobResult } from '../src/runner/jobs';
import { architectureKey } from '../src/runner/families';
import type { PipelineSpec } from '../src/spec/types';
import { InputError } from '../src/util/errors';
import { cacheKey, cachedJob, trackedStage, type ActivityDeps } from './common';

/**
 * The cache key of a trained WeightFormer: the architecture family (layer-shape signature), the zoo and
 * validation teachers, the model and training hyper-parameters, the data split it may read, and (through
 * cacheKey) the code version. The evaluated teachers are not part of it: one WeightFormer serves every
 * ensemble of its family.
 */
export function weightformerKeyInputs(spec: PipelineSpec, zoo: string[], validation: string[], teacherInput: boolean) {
  return {
    // The MLP's key string is the one it always had; other families key by their shape signature.
    family: architectureKey(spec.architecture),
    zoo,
    validation,
    validationEnsembles: spec.weightformer.validationEnsembles,
    ensembleSize: spec.teachers.count,
    model: spec.weightformer.model,
    train: spec.weightformer.train,
    data: { ...spec.data, shardSize: undefined },
    seed: spec.seed,
    teacherInput,
    backend: spec.compute.backend,
  };
}

/** Meta-trains (or, on a cache hit, reuses) a WeightFormer or its teacher ablation. */
export async function obtainWeightformer(deps: ActivityDeps, input: StageInput, teacherInput: boolean) {
  const { spec } = input;
  const zoo = input.inputs.zoo as string[];
  const validation = input.inputs.validationTeachers as string[];
  const keyInputs = weightformerKeyInputs(spec, zoo, validation, teacherInput);
  if (spec.weightformer.mode === 'reuse') {
    // `reuse` never trains: a missing model is a configuration problem, not something a retry fixes.
    const cached = await deps.store.getCached<MetaTrainJobResult>(cacheKey('metaTrain', keyInputs));
    if (!cached) {
      throw new InputError(
        `weightformer.mode is 'reuse' but no trained ${teacherInput ? 'WeightFormer' : 'teacher ablation'} with this key is in the store ` +
          `${deps.store.root} (architecture, zoo, hyper-parameters and code version must match); run once with mode 'train'`,
      );
    }
    return { result: cached, cacheHit: true };
  }
  const unit = teacherInput ? 'metaTrain:weightformer' : 'metaTrain:ablation';
  return cachedJob<MetaTrainJobResult>(deps, input, 'metaTrain', { spec, zoo, validation, teacherInput }, keyInputs, unit);
}

/** `weightformer` stage: meta-train on the zoo (or reuse the cached model whose key matches). */
export function trainWeightformerActivity(deps: ActivityDeps) {
  return async function trainWeightformer(input: StageInput): Promise<StageOutput> {
    return trackedStage(deps, 'weightformer', input, async () => {
      const { result, cacheHit } = await obtainWeightformer(deps, input, true);
      const best = result.valCurve.find((p) => p.step === result.bestStep);
      return {
        outputs: { weightformer: result.model },
        metrics: {
          'weightformer.steps': result.steps,
          'weightformer.best_step': result.bestStep,
          ...(best ? { 'weightformer.val_acc_best': best.accuracy } : {}),
          'seconds.weightformer_train': result.seconds,
        },
        curves: {
          'weightformer.loss': result.curve.map((p) => ({ step: p.step, value: p.loss })),
          'weightformer.val_acc': result.valCurve.map((p) => ({ step: p.step, value: p.accuracy })),
        },
        cacheHit,
      };
    });
  };
}
