import type { StageInput, StageOutput } from '../workflows/types';
import { trainTeacherSet } from './teachers';
import { trackedStage, type ActivityDeps } from './common';

/**
 * `zoo` stage: the WeightFormer's meta-training pool, plus the held-out validation teachers whose
 * ensembles choose its checkpoint. Neither ever appears in an evaluated ensemble.
 */
export function trainZooActivity(deps: ActivityDeps) {
  return async function trainZoo(input: StageInput): Promise<StageOutput> {
    const { spec } = input;
    return trackedStage(deps, 'zoo', input, async () => {
      const zoo = await trainTeacherSet(deps, input, 'zoo', spec.zoo.count, spec.zoo.train);
      const validation = await trainTeacherSet(deps, input, 'validation', spec.weightformer.validationTeachers, spec.zoo.train);
      const accs = zoo.results.map((r) => r.valAccuracy);
      return {
        outputs: { zoo: zoo.refs, validationTeachers: validation.refs },
        metrics: {
          'zoo.count': zoo.refs.length,
          'zoo.acc_val_mean': accs.reduce((a, b) => a + b, 0) / Math.max(1, accs.length),
        },
        cacheHit: zoo.allCached && validation.allCached,
      };
    });
  };
}
