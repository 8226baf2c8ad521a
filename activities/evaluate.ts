import type { StageInput, StageOutput } from '../workflows/types';
import type { EvaluateJobResult } from '../src/runner/jobs';
import { cachedJob, trackedStage, type ActivityDeps } from './common';

/** `evaluate` stage: every model and baseline on the same test split; the run's headline metrics. */
export function evaluatePipelineActivity(deps: ActivityDeps) {
  return async function evaluatePipeline(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'evaluate', input, async () => {
      const models = {
        teachers: input.inputs.teachers as string[],
        student: input.inputs.student as string,
        studentFinetuned: (input.inputs.studentFinetuned as string | undefined) ?? null,
        avgNaive: input.inputs.avgNaive as string,
        avgAligned: input.inputs.avgAligned as string,
      };
      const { result, cacheHit } = await cachedJob<EvaluateJobResult>(
        deps,
        input,
        'evaluate',
        { spec, models },
        { data: spec.data, evaluate: spec.evaluate, architecture: spec.architecture, models, backend: spec.compute.backend },
      );
      return { outputs: {}, metrics: result.metrics, cacheHit };
    });
  };
}
