import type { StageInput, StageOutput } from '../workflows/types';
import type { DatasetDescription, TeacherJobResult, TeacherRole } from '../src/runner/jobs';
import type { TrainOptions } from '../src/spec/types';
import { cacheKey, lookupCached, runHeartbeatedJob, storeCached, trackedStage, type ActivityDeps } from './common';

interface TeacherSetResult {
  refs: string[];
  results: TeacherJobResult[];
  allCached: boolean;
}

/**
 * Trains `count` teachers of one role, each cached on its own (so a retry or a sweep cell reuses every
 * teacher already trained) and each resumable from its own checkpoint.
 */
export async function trainTeacherSet(
  deps: ActivityDeps,
  input: StageInput,
  role: TeacherRole,
  count: number,
  train: TrainOptions,
): Promise<TeacherSetResult> {
  const { spec } = input;
  const refs: string[] = [];
  const results: TeacherJobResult[] = [];
  let allCached = true;
  for (let index = 0; index < count; index++) {
    const key = cacheKey('teacher', {
      role,
      index,
      // Evaluated teachers train on disjoint shard groups; the others draw from the whole teacher pool.
      ensembleIndex: role === 'teacher' ? spec.teachers.ensembleIndex : null,
      groupSize: role === 'teacher' ? spec.teachers.count : null,
      data: spec.data,
      architecture: spec.architecture,
      train,
      seed: spec.seed,
      backend: spec.compute.backend,
    });
    let result = await lookupCached<TeacherJobResult>(deps, input, key);
    if (!result) {
      allCached = false;
      result = await runHeartbeatedJob<TeacherJobResult>(deps, 'trainTeacher', { spec, role, index }, `trainTeacher:${role}:${index}`);
      await storeCached(deps, input, key, result);
    }
    refs.push(result.params);
    results.push(result);
  }
  return { refs, results, allCached };
}

/** The backends the jobs resolved to (`auto` may differ per worker), for the run's tags. */
export function backendsOf(results: Array<{ backend: string }>): string {
  return [...new Set(results.map((r) => r.backend))].join(',');
}

/** `teachers` stage: trains each evaluated teacher by seed on its own shard. */
export function trainTeachersActivity(deps: ActivityDeps) {
  return async function trainTeachers(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'teachers', input, async () => {
      if (deps.tracker && input.tracking) {
        // Who may see what: every data part with its digest, as dataset inputs of the pipeline's run.
        const datasets = await runHeartbeatedJob<DatasetDescription[]>(deps, 'describeData', { spec });
        await deps.tracker.client.logInputs(
          input.tracking.runId,
          datasets.map((d) => ({
            name: d.name,
            digest: d.digest,
            sourceType: d.sourceType,
            source: d.source,
            profile: { examples: d.examples, role: d.role },
            context: d.context,
          })),
        );
      }
      const set = await trainTeacherSet(deps, input, 'teacher', spec.teachers.count, spec.teachers.train);
      const metrics: Record<string, number> = {};
      const curves: Record<string, Array<{ step: number; value: number }>> = {};
      set.results.forEach((result, index) => {
        metrics[`acc_val.teacher_${index}`] = result.valAccuracy;
        curves[`teacher_${index}.loss`] = result.curve.map((p) => ({ step: p.step, value: p.loss }));
      });
      return { outputs: { teachers: set.refs }, metrics, curves, tags: { 'weightformer.backend': backendsOf(set.results) }, cacheHit: set.allCached };
    });
  };
}
