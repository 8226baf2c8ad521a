import type { StageInput, StageOutput } from '../workflows/types';
import type { TeacherJobResult } from '../src/runner/jobs';
import { cacheKey, lookupCached, runHeartbeatedJob, storeCached, trackedStage, type ActivityDeps } from './common';

/** `teachers` stage: trains each teacher by seed on its own shard (cached per teacher, resumable). */
export function trainTeachersActivity(deps: ActivityDeps) {
  return async function trainTeachers(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'teachers', input, async () => {
      const teachers: string[] = [];
      const results: TeacherJobResult[] = [];
      const metrics: Record<string, number> = {};
      const curves: Record<string, Array<{ step: number; value: number }>> = {};
      let allCached = true;
      for (let index = 0; index < spec.teachers.count; index++) {
        const key = cacheKey('teacher', {
          data: spec.data,
          architecture: spec.architecture,
          train: spec.teachers.train,
          seed: spec.seed,
          index,
          shards: spec.teachers.count + spec.zoo.count,
          backend: spec.compute.backend,
        });
        let result = await lookupCached<TeacherJobResult>(deps, input, key);
        if (!result) {
          allCached = false;
          result = await runHeartbeatedJob<TeacherJobResult>(
            deps,
            'trainTeacher',
            { spec, index },
            (checkpoint) => (checkpoint as { teacher?: number }).teacher === index,
          );
          await storeCached(deps, input, key, result);
        }
        teachers.push(result.params);
        results.push(result);
        metrics[`acc_val.teacher_${index}`] = result.valAccuracy;
        curves[`teacher_${index}.loss`] = result.curve.map((p) => ({ step: p.step, value: p.loss }));
      }
      // The backend `auto` resolved to on this worker, logged with the run (cached results keep theirs).
      const backends = [...new Set(results.map((r) => r.backend))].join(',');
      return { outputs: { teachers }, metrics, curves, tags: { 'weightformer.backend': backends }, cacheHit: allCached };
    });
  };
}
