import type { StageInput, StageOutput } from '../workflows/types';
import type { TrainJobResult } from '../src/runner/jobs';
import { cachedJob, trackedStage, type ActivityDeps } from './common';

/** `finetune` stage: a short CE + KD fine-tune of the generated student on the consolidation set. */
export function finetuneStudentActivity(deps: ActivityDeps) {
  return async function finetuneStudent(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'finetune', input, async () => {
      const teachers = input.inputs.teachers as string[];
      const student = input.inputs.student as string;
      const { result, cacheHit } = await cachedJob<TrainJobResult>(
        deps,
        input,
        'finetune',
        { spec, init: student, teachers },
        { finetune: spec.finetune, data: spec.data, seed: spec.seed, init: student, teachers, backend: spec.compute.backend },
      );
      return {
        outputs: { studentFinetuned: result.params },
        metrics: { 'seconds.finetune': result.seconds },
        curves: { 'finetune.loss': result.curve.map((p) => ({ step: p.step, value: p.loss })) },
        cacheHit,
      };
    });
  };
}
