import {
  continueAsNew,
  condition,
  defineQuery,
  defineSignal,
  executeChild,
  CancellationScope,
  proxyActivities,
  setHandler,
  workflowInfo,
  ActivityFailure,
  ApplicationFailure,
} from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import type { Activities } from '../activities';
import { NON_RETRYABLE, pipeline, stageActivityOptions } from './pipeline';
import type { ConsolidationRecord, PipelineResult, TeacherPoll, WatchInput, WatchStatus } from './types';

export const watchStatusQuery = defineQuery<WatchStatus>('watchStatus');
/** Poll the registry now instead of at the next interval (`weightformer watch FILE` sends it when the watcher already runs). */
export const pollNowSignal = defineSignal('pollNow');
/** End the watcher after the consolidation in progress, if any. */
export const stopWatchSignal = defineSignal('stopWatch');

/** Prefix of `lastError` when the registry poll itself failed (not a consolidation). */
const POLL_ERROR = 'registry poll: ';

/** Finished consolidations carried across continue-as-new (the newest; older ones are in MLflow). */
const KEPT_RECORDS = 20;

/** Run tags of a consolidation's pipeline run (the registered version gets the same lineage as version tags). */
const RUN_LINEAGE_TAGS = {
  teacherVersions: 'weightformer.lineage.teacher_versions',
  watcherWorkflowId: 'weightformer.lineage.watcher_workflow_id',
};

/**
 * The `watch` workflow: polls the trigger's registered model for teacher versions (an activity) and, when
 * the newest `teachers.count` of them differ from the set consolidated last, runs the consolidation as a
 * child `pipeline` workflow (teachers from those versions, the WeightFormer from the registry, the student
 * registered), then tags the registered student with its lineage. A failed consolidation is reported in
 * the status and not retried until the teacher set changes. After `trigger.pollsPerRun` polls (or when
 * Temporal suggests it) it continues as new, so its history stays bounded however long it watches.
 */
export async function watch(input: WatchInput): Promise<WatchStatus> {
  const { spec } = input;
  const trigger = spec.trigger;
  if (!trigger) throw ApplicationFailure.nonRetryable('the pipeline has no trigger block: nothing to watch', 'InputError');
  const watcherId = workflowInfo().workflowId;
  const registry = proxyActivities<Activities>(stageActivityOptions({ ...spec.stages.track, resources: { gpu: false } }, input.queuePrefix));

  const status: WatchStatus = {
    state: 'watching',
    polls: input.pollsBefore ?? 0,
    teacherVersions: [],
    consolidations: [...(input.consolidations ?? [])],
  };
  let last: string[] | null = input.lastTeacherVersions ?? null;
  let stopRequested = false;
  let pollRequested = false;
  setHandler(watchStatusQuery, () => status);
  setHandler(pollNowSignal, () => {
    pollRequested = true;
  });
  setHandler(stopWatchSignal, () => {
    stopRequested = true;
  });

  for (let pollsThisRun = 0; pollsThisRun < trigger.pollsPerRun && !stopRequested; pollsThisRun++) {
    pollRequested = false;
    let poll: TeacherPoll;
    try {
      poll = await registry.pollTeacherVersions({ spec });
    } catch (err) {
      // A registry that stays down past the retry policy is waited out; a configuration error (or the
      // watcher's cancellation) ends the watcher.
      if (cancelled() || isNonRetryable(err)) throw err;
      status.polls++;
      status.lastError = `${POLL_ERROR}${failureText(err)}`;
      await condition(() => stopRequested || pollRequested, trigger.pollInterval as Duration);
      continue;
    }
    status.polls++;
    // A poll error is stale once a poll succeeds (a consolidation's error stays until the next consolidation).
    if (status.lastError?.startsWith(POLL_ERROR)) delete status.lastError;
    status.teacherVersions = poll.teacherVersions;
    const plan = poll.plan;
    if (plan && !sameList(plan.teacherVersions, last)) {
      status.state = 'consolidating';
      const childId = `${watcherId}-consolidate-${plan.teacherVersions.map((v) => v.slice(v.lastIndexOf('/') + 1)).join('-')}`;
      const record: ConsolidationRecord = { teacherVersions: plan.teacherVersions, workflowId: childId, studentVersion: null, weightformerVersion: null };
      try {
        const result: PipelineResult = await executeChild(pipeline, {
          workflowId: childId,
          args: [{
            spec: plan.spec,
            specHash: plan.specHash,
            file: input.file,
            noCache: false,
            queuePrefix: input.queuePrefix,
            tags: {
              [RUN_LINEAGE_TAGS.teacherVersions]: plan.teacherVersions.map((v) => `models:/${v}`).join(','),
              [RUN_LINEAGE_TAGS.watcherWorkflowId]: watcherId,
            },
          }],
        });
        const version = result.metrics['registry.model_version'];
        record.weightformerVersion = result.tags['weightformer.registered_version'] ?? null;
        if (version !== undefined) {
          record.studentVersion = `${spec.tracking.registerModel}/${version}`;
          await registry.recordStudentLineage({
            registeredModel: spec.tracking.registerModel,
            version: String(version),
            lineage: {
              teacherVersions: plan.teacherVersions,
              weightformerVersion: record.weightformerVersion,
              specHash: plan.specHash,
              workflowId: childId,
              watcherWorkflowId: watcherId,
            },
          });
        }
        delete status.lastError;
      } catch (err) {
        // Cancelling the watcher cancels its consolidation: that ends the watcher, it is not a failure to
        // report. (A consolidation cancelled on its own is one: the watcher goes on.)
        if (cancelled()) throw err;
        // The watcher outlives a failed consolidation: it is reported here (and in the child's history)
        // and tried again only when the teacher set changes.
        status.lastError = `${childId}: ${failureText(err)}`;
      }
      status.consolidations = [...status.consolidations, record].slice(-KEPT_RECORDS);
      last = plan.teacherVersions;
      status.state = 'watching';
    }
    if (stopRequested || workflowInfo().continueAsNewSuggested) break;
    await condition(() => stopRequested || pollRequested, trigger.pollInterval as Duration);
  }
  if (stopRequested) {
    status.state = 'stopped';
    return status;
  }
  return continueAsNew<typeof watch>({ ...input, lastTeacherVersions: last ?? undefined, consolidations: status.consolidations, pollsBefore: status.polls });
}

/** Whether this watcher was asked to cancel (not merely a child or an activity of it). */
function cancelled(): boolean {
  return CancellationScope.current().consideredCancelled;
}

function sameList(a: string[], b: string[] | null): boolean {
  return b !== null && a.length === b.length && a.every((v, i) => v === b[i]);
}

function isNonRetryable(err: unknown): boolean {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure && (cause.nonRetryable || NON_RETRYABLE.includes(cause.type ?? ''));
}

/** The innermost cause's message (a child's failure wraps the activity's, which wraps the error). */
function failureText(err: unknown): string {
  let e: unknown = err;
  while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  return e instanceof Error ? e.message : String(err);
}
