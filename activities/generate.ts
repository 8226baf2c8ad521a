import type { StageInput, StageOutput } from '../workflows/types';
import type { GenerateJobResult } from '../src/runner/jobs';
import { cachedJob, trackedStage, type ActivityDeps } from './common';

/** `generate` stage: teachers' parameters → student parameters (the aligned average until WeightFormer). */
export function generateStudentActivity(deps: ActivityDeps) {
  return async function generateStudent(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'generate', input, async () => {
      const teachers = input.inputs.teachers as string[];
      const { result, cacheHit } = await cachedJob<GenerateJobResult>(
        deps,
        input,
        'generateStudent',
        { spec, teachers },
        { method: spec.generate.method, architecture: spec.architecture, teachers, backend: spec.compute.backend },
      );
      return {
        outputs: { student: result.student },
        metrics: { 'seconds.weightformer_generate': result.seconds },
        cacheHit,
      };
    });
  };
}
