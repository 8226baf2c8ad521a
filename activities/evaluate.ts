import type { StageInput, StageOutput } from '../workflows/types';
import type { EvaluateJobResult } from '../src/runner/jobs';
import { cachedJob, trackedStage, type ActivityDeps } from './common';

/** `evaluate` stage: every model and baseline on the same test split; the run's headline metrics. */
export function evaluatePipelineActivity(deps: ActivityDeps) {
  return async function evaluatePipeline(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'evaluate', input, async () => {
      const ref = (name: string) => (input.inputs[name] as string | undefined) ?? null;
      const models = {
        teachers: input.inputs.teachers as string[],
        student: input.inputs.student as string,
        studentFinetuned: ref('studentFinetuned'),
        avgNaive: input.inputs.avgNaive as string,
        avgAligned: input.inputs.avgAligned as string,
        avgAlignedFinetuned: ref('avgAlignedFinetuned'),
        kd: ref('kd'),
        kdEpochCurve: ref('kdEpochCurve'),
        dataOnly: ref('dataOnly'),
        ablationStudent: ref('ablationStudent'),
      };
      const generate = input.metrics['seconds.weightformer_generate'];
      const finetune = input.metrics['seconds.finetune'];
      const consolidationSeconds = generate !== undefined && finetune !== undefined ? generate + finetune : null;
      // Timings are inputs of kd_to_match only; the accuracies are keyed by the models alone.
      const { result, cacheHit } = await cachedJob<EvaluateJobResult>(
        deps,
        input,
        'evaluate',
        { spec, models, consolidationSeconds },
        { data: spec.data, evaluate: spec.evaluate, architecture: spec.architecture, models, consolidationSeconds, backend: spec.compute.backend },
      );
      const metrics = { ...result.metrics };
      if (metrics['seconds.kd_to_match'] && consolidationSeconds !== null) {
        metrics['ratio.consolidate_over_kd_to_match'] = consolidationSeconds / metrics['seconds.kd_to_match'];
      }
      return { outputs: {}, metrics, cacheHit };
    });
  };
}
