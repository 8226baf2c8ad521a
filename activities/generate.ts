import type { StageInput, StageOutput } from '../workflows/types';
import type { GenerateJobResult } from '../src/runner/jobs';
import { alignmentKey } from '../src/runner/alignment';
import { cachedJob, trackedStage, type ActivityDeps } from './common';

/** Generates a student from teachers in one pass: the WeightFormer, or the aligned average without one. */
export async function generateFrom(deps: ActivityDeps, input: StageInput, teachers: string[], weightformer: string | null, unit: string) {
  const { spec } = input;
  return cachedJob<GenerateJobResult>(
    deps,
    input,
    'generateStudent',
    { spec, teachers, weightformer },
    // Both methods align the teachers: the alignment block is part of the key (absent: the key it always had).
    { method: spec.generate.method, architecture: spec.architecture, teachers, weightformer, backend: spec.compute.backend, ...alignmentKey(spec) },
    unit,
  );
}

/** `generate` stage: teachers' parameters → student parameters, one forward pass. */
export function generateStudentActivity(deps: ActivityDeps) {
  return async function generateStudent(input: StageInput): Promise<StageOutput> {
    return trackedStage(deps, 'generate', input, async () => {
      const weightformer = input.spec.generate.method === 'weightformer' ? ((input.inputs.weightformer as string | undefined) ?? null) : null;
      const { result, cacheHit } = await generateFrom(deps, input, input.inputs.teachers as string[], weightformer, 'generate');
      return {
        outputs: { student: result.student },
        metrics: { 'seconds.weightformer_generate': result.seconds },
        cacheHit,
      };
    });
  };
}
