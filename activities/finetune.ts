import type { StageInput, StageOutput } from '../workflows/types';
import type { TrainJobResult } from '../src/runner/jobs';
import { cachedJob, trackedStage, type ActivityDeps } from './common';

/**
 * The short CE + KD fine-tune on the consolidation set, from `init`. Keyed by its inputs alone, so the
 * fine-tuned aligned average and a student that *is* the aligned average share one result.
 */
export async function finetuneFrom(deps: ActivityDeps, input: StageInput, init: string, unit: string) {
  const { spec } = input;
  const teachers = input.inputs.teachers as string[];
  return cachedJob<TrainJobResult>(
    deps,
    input,
    'finetune',
    { spec, init, teachers },
    { finetune: spec.finetune, data: spec.data, seed: spec.seed, init, teachers, backend: spec.compute.backend },
    unit,
  );
}

/** `finetune` stage: a short CE + KD fine-tune of the generated student on the consolidation set. */
export function finetuneStudentActivity(deps: ActivityDeps) {
  return async function finetuneStudent(input: StageInput): Promise<StageOutput> {
    return trackedStage(deps, 'finetune', input, async () => {
      const { result, cacheHit } = await finetuneFrom(deps, input, input.inputs.student as string, 'finetune');
      return {
        outputs: { studentFinetuned: result.params },
        metrics: { 'seconds.finetune': result.seconds },
        curves: { 'finetune.loss': result.curve.map((p) => ({ step: p.step, value: p.loss })) },
        cacheHit,
      };
    });
  };
}
