import type { StageInput, StageOutput } from '../workflows/types';
import type { BaselinesJobResult } from '../src/runner/jobs';
import { cachedJob, trackedStage, type ActivityDeps } from './common';

/** `baselines` stage: the parameter-space baselines (naive and aligned weight averages). */
export function computeBaselinesActivity(deps: ActivityDeps) {
  return async function computeBaselines(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'baselines', input, async () => {
      const teachers = input.inputs.teachers as string[];
      const { result, cacheHit } = await cachedJob<BaselinesJobResult>(
        deps,
        input,
        'baselines',
        { spec, teachers },
        { baselines: spec.baselines, architecture: spec.architecture, teachers, backend: spec.compute.backend },
      );
      return { outputs: { avgNaive: result.avgNaive, avgAligned: result.avgAligned }, metrics: {}, cacheHit };
    });
  };
}
