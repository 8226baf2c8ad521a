import { trainTeachersActivity } from './teachers';
import { generateStudentActivity } from './generate';
import { finetuneStudentActivity } from './finetune';
import { computeBaselinesActivity } from './baselines';
import { evaluatePipelineActivity } from './evaluate';
import { trackingActivities } from './tracking';
import { trainZooActivity } from './zoo';
import { reuseWeightformerActivity, trainWeightformerActivity } from './weightformer';
import { registryActivities } from './registry';
import { reportActivities } from './report';
import type { ActivityDeps } from './common';

export type { ActivityDeps } from './common';

/** All activities of the `pipeline` workflow, bound to one worker's store and tracker. */
export function createActivities(deps: ActivityDeps) {
  return {
    trainTeachers: trainTeachersActivity(deps),
    trainZoo: trainZooActivity(deps),
    trainWeightformer: trainWeightformerActivity(deps),
    reuseRegisteredWeightformer: reuseWeightformerActivity(deps),
    generateStudent: generateStudentActivity(deps),
    finetuneStudent: finetuneStudentActivity(deps),
    computeBaselines: computeBaselinesActivity(deps),
    evaluatePipeline: evaluatePipelineActivity(deps),
    ...trackingActivities(deps),
    ...registryActivities(deps),
    ...reportActivities(deps),
  };
}

export type Activities = ReturnType<typeof createActivities>;
