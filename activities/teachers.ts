import * as path from 'node:path';
import type { StageInput, StageOutput } from '../workflows/types';
import { resolveTeacherSource } from '../src/teachers/sources';
import type { DatasetDescription, TeacherJobResult, TeacherRole } from '../src/runner/jobs';
import type { TrainOptions } from '../src/spec/types';
import { cacheKey, computeCached, runHeartbeatedJob, trackedStage, type ActivityDeps } from './common';

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
    const { result, cacheHit } = await computeCached(deps, input, key, () =>
      runHeartbeatedJob<TeacherJobResult>(deps, 'trainTeacher', { spec, role, index }, `trainTeacher:${role}:${index}`),
    );
    if (!cacheHit) allCached = false;
    refs.push(result.params);
    results.push(result);
  }
  return { refs, results, allCached };
}

/**
 * Reads the teachers a pipeline lists in `teachers.files`: each is fetched to a local file here (downloads
 * are I/O, and `models:/` needs the MLflow client), then read, checked and scored in a job thread. Not
 * cached: a path's file may change, and reading it again is cheap; the stages after it are cached by the
 * teachers' content.
 */
async function importTeacherSet(deps: ActivityDeps, input: StageInput, files: string[]): Promise<TeacherSetResult> {
  const { spec } = input;
  const refs: string[] = [];
  const results: TeacherJobResult[] = [];
  for (const [index, source] of files.entries()) {
    const resolved = await resolveTeacherSource(source, {
      // Paths were resolved and checked against the allowed roots when the pipeline file was loaded (where
      // its folder is known); here they are absolute, and only their own folder may be read (a model.json
      // names its weight files beside it).
      baseDir: path.dirname(source),
      allowedRoots: [path.dirname(source)],
      cacheDir: path.join(deps.store.root, 'downloads'),
      // Read (and so checked) as the pipeline's family: its safetensors or TF.js reader.
      expected: spec.architecture,
      mlflow: deps.tracker?.client,
      field: `teachers.files[${index}]`,
    });
    const result = await runHeartbeatedJob<TeacherJobResult>(deps, 'importTeacher', { spec, file: resolved.file, format: resolved.format }, `importTeacher:${index}`);
    refs.push(result.params);
    results.push(result);
  }
  return { refs, results, allCached: false };
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
      const set = spec.teachers.source === 'files'
        ? await importTeacherSet(deps, input, spec.teachers.files ?? [])
        : await trainTeacherSet(deps, input, 'teacher', spec.teachers.count, spec.teachers.train);
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
