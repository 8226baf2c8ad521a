import type { StageInput, StageOutput } from '../workflows/types';
import type { BaselinesJobResult, EarlyStoppedJobResult } from '../src/runner/jobs';
import { alignmentKey } from '../src/runner/alignment';
import { cachedJob, trackedStage, type ActivityDeps } from './common';
import { finetuneFrom } from './finetune';
import { generateFrom } from './generate';
import { obtainWeightformer } from './weightformer';

/**
 * `baselines` stage: everything the student is compared with, each piece cached and resumable on its own:
 * the naive and aligned weight averages, the aligned average with the student's fine-tune, KD from
 * scratch, data-only, and the teacher ablation (the WeightFormer trained identically without teacher input).
 */
export function computeBaselinesActivity(deps: ActivityDeps) {
  return async function computeBaselines(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    const include = new Set(spec.baselines.include);
    const teachers = input.inputs.teachers as string[];
    return trackedStage(deps, 'baselines', input, async () => {
      const outputs: Record<string, string> = {};
      const metrics: Record<string, number> = {};
      const curves: Record<string, Array<{ step: number; value: number }>> = {};
      const hits: boolean[] = [];

      const averages = await cachedJob<BaselinesJobResult>(
        deps,
        input,
        'weightAverages',
        { spec, teachers },
        // The aligned average depends on the alignment block (absent: the key it always had).
        { architecture: spec.architecture, teachers, backend: spec.compute.backend, ...alignmentKey(spec) },
      );
      hits.push(averages.cacheHit);
      outputs.avgNaive = averages.result.avgNaive;
      outputs.avgAligned = averages.result.avgAligned;

      if (include.has('avg_aligned_finetuned') && spec.finetune.enabled) {
        const ft = await finetuneFrom(deps, input, averages.result.avgAligned, 'finetune:avg_aligned');
        hits.push(ft.cacheHit);
        outputs.avgAlignedFinetuned = ft.result.params;
      }
      if (include.has('kd')) {
        const kd = await cachedJob<EarlyStoppedJobResult>(
          deps,
          input,
          'kdFromScratch',
          { spec, teachers },
          { kd: spec.baselines.kd, data: spec.data, architecture: spec.architecture, seed: spec.seed, teachers, backend: spec.compute.backend },
        );
        hits.push(kd.cacheHit);
        outputs.kd = kd.result.params;
        outputs.kdEpochCurve = kd.result.epochCurve;
        metrics['seconds.kd_total'] = kd.result.seconds;
        metrics['kd.best_epoch'] = kd.result.bestEpoch;
        curves['kd.loss'] = kd.result.curve.map((p) => ({ step: p.step, value: p.loss }));
      }
      // Data-only and the ablation are sized by meta-training: they exist only when a WeightFormer does.
      if (spec.weightformer.mode !== 'none') {
        if (include.has('data_only')) {
          const dataOnly = await cachedJob<EarlyStoppedJobResult>(
            deps,
            input,
            'dataOnly',
            { spec },
            { dataOnly: spec.baselines.dataOnly, steps: spec.weightformer.train.steps, data: spec.data, architecture: spec.architecture, seed: spec.seed, backend: spec.compute.backend },
          );
          hits.push(dataOnly.cacheHit);
          outputs.dataOnly = dataOnly.result.params;
        }
        if (include.has('teacher_ablation')) {
          const ablation = await obtainWeightformer(deps, input, false);
          hits.push(ablation.cacheHit);
          outputs.ablationModel = ablation.result.model;
          curves['teacher_ablation.loss'] = ablation.result.curve.map((p) => ({ step: p.step, value: p.loss }));
          const generated = await generateFrom(deps, { ...input, spec: { ...spec, generate: { method: 'weightformer' } } }, teachers, ablation.result.model, 'generate:ablation');
          hits.push(generated.cacheHit);
          outputs.ablationStudent = generated.result.student;
        }
      }
      return { outputs, metrics, curves, cacheHit: hits.every(Boolean) };
    });
  };
}
