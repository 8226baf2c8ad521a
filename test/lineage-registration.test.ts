import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { ArtifactStore } from '../src/store/store';
import { MlflowClient } from '../src/tracking/mlflow';
import { StageTracker, type FinishInput } from '../activities/tracking';
import { LINEAGE_TAGS, lineageFromRunTags } from '../activities/registry';
import { MLP_RUNTIME } from '../src/runner/families';
import type { ArchitectureSpec } from '../src/spec/types';
import { sharedMlflow } from './helpers/mlflow';
import { tinySpec } from './helpers/specs';

/*
 * A watcher's consolidation tags its pipeline run with the teacher versions and the watcher; the student is
 * registered with its lineage from those tags. So the lineage is part of the registration, also when MLflow
 * was down at the finish and the registration happens later, replayed from the store's outbox (when the
 * watcher never learnt the version and so could not tag it).
 */
describe('a consolidation registers its student with its lineage, also from the outbox (real MLflow server)', function () {
  this.timeout(180_000);
  let url: string;
  let dir: string;

  before(async () => {
    url = (await sharedMlflow()).url;
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lineage-registration-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** A started pipeline run and the finish a watcher's consolidation (or a plain run) would send. */
  async function startedRun(store: ArtifactStore, watched: boolean) {
    const name = `lineage-${randomUUID().slice(0, 8)}`;
    const loaded = tinySpec(`tracking: {enabled: true, experiment: ${name}, registerModel: ${name}-student}`, name);
    const workflowId = `wf-${randomUUID()}`;
    const handle = await new StageTracker(new MlflowClient(url), store).startPipelineRun({ spec: loaded.spec, specHash: loaded.hash, workflowId, file: null, parentRunId: null });
    const arch = loaded.spec.architecture as ArchitectureSpec;
    const student = await store.putBytes(MLP_RUNTIME.pack(MLP_RUNTIME.init(arch, 1)));
    const runTags: Record<string, string> = watched
      ? {
          [LINEAGE_TAGS.teacherVersions]: `models:/${name}-teachers/3,models:/${name}-teachers/4`,
          [LINEAGE_TAGS.watcherWorkflowId]: `watch-${name}`,
          'weightformer.registered_version': `models:/${name}-wf/2`,
        }
      : {};
    const finish: FinishInput = {
      spec: loaded.spec,
      specHash: loaded.hash,
      noCache: false,
      tracking: handle,
      workflowId,
      inputs: { student },
      status: 'FINISHED',
      metrics: { 'acc.student_zero_shot': 0.5 },
      tags: runTags,
    };
    return { name, finish };
  }

  async function versionTags(client: MlflowClient, model: string, version: string): Promise<Record<string, string>> {
    const mv = await client.getModelVersion(model, version);
    return Object.fromEntries(mv.tags.map((t) => [t.key, t.value]));
  }

  function assertLineage(tags: Record<string, string>, name: string, finish: FinishInput): void {
    assert.equal(tags[LINEAGE_TAGS.teacherVersions], `models:/${name}-teachers/3,models:/${name}-teachers/4`);
    assert.equal(tags[LINEAGE_TAGS.weightformerVersion], `models:/${name}-wf/2`);
    assert.equal(tags[LINEAGE_TAGS.specHash], finish.specHash);
    assert.equal(tags[LINEAGE_TAGS.workflowId], finish.workflowId);
    assert.equal(tags[LINEAGE_TAGS.watcherWorkflowId], `watch-${name}`);
  }

  it('registered at once: the version carries teacher versions, WeightFormer version, spec hash, workflow and watcher ids', async () => {
    const store = new ArtifactStore(path.join(dir, 'at-once'));
    const client = new MlflowClient(url);
    const { name, finish } = await startedRun(store, true);
    const { modelVersion, buffered } = await new StageTracker(client, store).finishPipelineRun(finish);
    assert.equal(buffered, false);
    assert.ok(modelVersion);
    assertLineage(await versionTags(client, `${name}-student`, modelVersion), name, finish);
  });

  it('MLflow down at the finish: it waits in the outbox, and the version its replay registers carries the lineage', async () => {
    const store = new ArtifactStore(path.join(dir, 'outbox'));
    const client = new MlflowClient(url);
    const { name, finish } = await startedRun(store, true);
    // Nothing listens on port 9 (discard) here: every attempt is refused, as when the server is down.
    const down = new MlflowClient('http://127.0.0.1:9', { retry: { attempts: 2, initialDelayMs: 1, maxDelayMs: 2 } });
    const result = await new StageTracker(down, store).finishPipelineRun(finish);
    assert.deepEqual(result, { modelVersion: null, buffered: true });
    assert.equal((await client.searchModelVersions({ filter: `name = '${name}-student'` })).length, 0, 'registered while MLflow was down');

    const tracker = new StageTracker(client, store);
    await tracker.replayOutbox();
    assert.equal(await tracker.outbox.pendingCount(), 0);
    const versions = await client.searchModelVersions({ filter: `name = '${name}-student'` });
    assert.equal(versions.length, 1);
    assertLineage(await versionTags(client, `${name}-student`, versions[0]!.version), name, finish);
  });

  it('a run no watcher started is registered without lineage tags', async () => {
    const store = new ArtifactStore(path.join(dir, 'plain'));
    const client = new MlflowClient(url);
    const { name, finish } = await startedRun(store, false);
    const { modelVersion } = await new StageTracker(client, store).finishPipelineRun(finish);
    const tags = await versionTags(client, `${name}-student`, modelVersion!);
    assert.deepEqual(Object.keys(tags).filter((k) => k.startsWith('weightformer.lineage.')), []);
    assert.equal(tags['weightformer.workflow_id'], finish.workflowId);
  });

  it('reads the lineage from run tags only when both the teachers and the watcher are named', () => {
    assert.deepEqual(lineageFromRunTags({ [LINEAGE_TAGS.teacherVersions]: 'models:/t/1' }, 'h', 'w'), {});
    const tags = lineageFromRunTags({ [LINEAGE_TAGS.teacherVersions]: 'models:/t/1,models:/t/2', [LINEAGE_TAGS.watcherWorkflowId]: 'watch' }, 'h', 'w');
    assert.equal(tags[LINEAGE_TAGS.teacherVersions], 'models:/t/1,models:/t/2');
    assert.equal(tags[LINEAGE_TAGS.weightformerVersion], 'none');
  });
});
