import { Context } from '@temporalio/activity';
import type { StageInput, StageOutput } from '../workflows/types';
import type { MetaTrainJobResult } from '../src/runner/jobs';
import { alignmentKey } from '../src/runner/alignment';
import { architectureKey } from '../src/runner/families';
import type { PipelineSpec } from '../src/spec/types';
import { InputError } from '../src/util/errors';
import { cacheKey, cachedJob, trackedStage, type ActivityDeps } from './common';
import { fetchRegisteredWeightformer, registerWeightformer } from './registry';

/**
 * The cache key of a trained WeightFormer: the architecture family (layer-shape signature), the zoo and
 * validation teachers, the model and training hyper-parameters, the data split it may read, the alignment
 * block when the pipeline has one, and (through
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
    // How the zoo is aligned (absent block: weight matching, and the key it always had).
    ...alignmentKey(spec),
  };
}

/**
 * Meta-trains (or, on a cache hit, reuses) a WeightFormer or its teacher ablation. With
 * `weightformer.reuse` it is downloaded from the MLflow registry instead and nothing is trained; otherwise a
 * tracked pipeline registers what it trained (once per model) so other pipelines can reuse it.
 */
export async function obtainWeightformer(
  deps: ActivityDeps,
  input: StageInput,
  teacherInput: boolean,
): Promise<{ result: MetaTrainJobResult; cacheHit: boolean; registered: string | null; fromRegistry: boolean }> {
  const { spec } = input;
  const what = teacherInput ? 'WeightFormer' : 'teacher ablation';
  if (spec.weightformer.reuse !== undefined) {
    if (!deps.tracker) {
      throw new InputError(`weightformer.reuse: ${spec.weightformer.reuse} names the MLflow registry, but this worker has no MLflow server (set MLFLOW_TRACKING_URI)`);
    }
    const { result, registered } = await fetchRegisteredWeightformer(deps.tracker.client, deps.store, spec, teacherInput);
    Context.current().log.info(`weightformer cache hit: reusing the registered ${what} ${registered} (weightformer.reuse: ${spec.weightformer.reuse}); nothing is trained`, { registered, model: result.model });
    return { result, cacheHit: true, registered, fromRegistry: true };
  }
  const zoo = input.inputs.zoo as string[];
  const validation = input.inputs.validationTeachers as string[];
  const keyInputs = weightformerKeyInputs(spec, zoo, validation, teacherInput);
  let obtained: { result: MetaTrainJobResult; cacheHit: boolean };
  if (spec.weightformer.mode === 'reuse') {
    // `reuse` never trains: a missing model is a configuration problem, not something a retry fixes.
    const cached = await deps.store.getCached<MetaTrainJobResult>(cacheKey('metaTrain', keyInputs));
    if (!cached) {
      throw new InputError(
        `weightformer.mode is 'reuse' but no trained ${what} with this key is in the store ` +
          `${deps.store.root} (architecture, zoo, hyper-parameters and code version must match); run once with mode 'train'`,
      );
    }
    obtained = { result: cached, cacheHit: true };
  } else {
    const unit = teacherInput ? 'metaTrain:weightformer' : 'metaTrain:ablation';
    obtained = await cachedJob<MetaTrainJobResult>(deps, input, 'metaTrain', { spec, zoo, validation, teacherInput }, keyInputs, unit);
  }
  let registered: string | null = null;
  if (deps.tracker && input.tracking) {
    registered = await registerWeightformer(deps.tracker.client, deps.store, {
      runId: input.tracking.runId, spec, specHash: input.specHash, workflowId: input.workflowId, result: obtained.result, zoo, teacherInput,
    });
  }
  return { ...obtained, registered, fromRegistry: false };
}

/** The `weightformer` stage's body, whether it trains or takes the model from the registry. */
async function weightformerStage(deps: ActivityDeps, input: StageInput): Promise<StageOutput> {
  return trackedStage(deps, 'weightformer', input, async () => {
    const { result, cacheHit, registered, fromRegistry } = await obtainWeightformer(deps, input, true);
    const best = result.valCurve.find((p) => p.step === result.bestStep);
    return {
      outputs: { weightformer: result.model },
      metrics: <Record<string, number>>{
        'weightformer.steps': result.steps,
        'weightformer.best_step': result.bestStep,
        ...(best ? { 'weightformer.val_acc_best': best.accuracy } : {}),
        // A model from the registry took no training time here (its own run has the figure).
        ...(fromRegistry ? {} : { 'seconds.weightformer_train': result.seconds }),
      },
      // Curves belong to the run that trained the model.
      curves: fromRegistry ? {} : <Record<string, Array<{ step: number; value: number }>>>{
        'weightformer.loss': result.curve.map((p) => ({ step: p.step, value: p.loss })),
        'weightformer.val_acc': result.valCurve.map((p) => ({ step: p.step, value: p.accuracy })),
      },
      tags: {
        'weightformer.cache': cacheHit ? 'hit' : 'miss',
        ...(registered ? { 'weightformer.registered_version': registered } : {}),
        ...(fromRegistry ? { 'weightformer.reuse': input.spec.weightformer.reuse! } : {}),
      },
      cacheHit,
    };
  });
}

/** `weightformer` stage: meta-train on the zoo (or reuse the cached model whose key matches). */
export function trainWeightformerActivity(deps: ActivityDeps) {
  return async function trainWeightformer(input: StageInput): Promise<StageOutput> {
    return weightformerStage(deps, input);
  };
}

/**
 * `weightformer` stage of a pipeline with `weightformer.reuse`: downloads the registered model and never
 * trains. A separate activity so a workflow's history shows which of the two happened.
 */
export function reuseWeightformerActivity(deps: ActivityDeps) {
  return async function reuseRegisteredWeightformer(input: StageInput): Promise<StageOutput> {
    if (input.spec.weightformer.reuse === undefined) throw new InputError('weightformer.reuse is not set: this activity only downloads registered WeightFormers');
    return weightformerStage(deps, input);
  };
}
