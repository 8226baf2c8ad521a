import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { MockActivityEnvironment } from '@temporalio/testing';
import { CancelledFailure } from '@temporalio/common';
import { createActivities } from '../activities';
import { ArtifactStore } from '../src/store/store';
import { tinySpec } from './helpers/specs';
import type { StageHeartbeat, StageInput, StageOutput } from '../workflows/types';

async function newStore(): Promise<ArtifactStore> {
  return new ArtifactStore(await fs.mkdtemp(path.join(os.tmpdir(), 'act-store-')));
}

function stageInput(overrides: string): StageInput {
  const loaded = tinySpec(overrides, 'test-activity');
  return { spec: loaded.spec, specHash: loaded.hash, noCache: true, tracking: null, workflowId: 'wf-test', inputs: {}, metrics: {} };
}

// One teacher, enough steps for several checkpoints.
const ONE_TEACHER = 'teachers: {count: 1, train: {epochs: 3, batchSize: 20, checkpointEvery: 5}}';

describe('stage activities (MockActivityEnvironment)', function () {
  this.timeout(120_000);

  it('heartbeats step, loss, ETA and a checkpoint reference, and resumes from heartbeatDetails to the same result', async () => {
    const input = stageInput(ONE_TEACHER);
    // Uninterrupted reference run.
    const reference = (await new MockActivityEnvironment().run(createActivities({ store: await newStore(), tracker: null }).trainTeachers, input)) as StageOutput;

    // First attempt: cancelled right after its second checkpoint, as if the worker died there.
    const store = await newStore();
    const activities = createActivities({ store, tracker: null });
    const first = new MockActivityEnvironment();
    let lastBeat: StageHeartbeat | undefined;
    let checkpoints = 0;
    first.on('heartbeat', (d: StageHeartbeat) => {
      if (d.checkpoint && d.checkpoint !== lastBeat?.checkpoint) checkpoints++;
      lastBeat = d;
      if (checkpoints === 2) first.cancel('CANCELLED');
    });
    await assert.rejects(first.run(activities.trainTeachers, input), (e: unknown) => e instanceof CancelledFailure);
    assert.ok(lastBeat, 'heartbeats were sent');
    assert.ok(lastBeat.step > 0 && lastBeat.totalSteps > lastBeat.step);
    assert.equal(typeof lastBeat.loss, 'number');
    const resumedFrom = lastBeat.checkpoint as { unit: string; resume: { state: string } };
    assert.equal(resumedFrom.unit, 'trainTeacher:teacher:0');
    assert.match(resumedFrom.resume.state, /^sha256:/);

    // Second attempt starts from the heartbeated checkpoint and must end bit-identical to the reference.
    const second = new MockActivityEnvironment({ heartbeatDetails: lastBeat, attempt: 2 });
    let firstStepSeen: number | undefined;
    second.on('heartbeat', (d: StageHeartbeat) => {
      if (firstStepSeen === undefined && d.step !== lastBeat!.step) firstStepSeen = d.step;
    });
    const resumed = (await second.run(activities.trainTeachers, input)) as StageOutput;
    assert.ok(firstStepSeen !== undefined && firstStepSeen > 5, `resumed at step ${firstStepSeen}, not from scratch`);
    assert.deepEqual(resumed.outputs.teachers, reference.outputs.teachers);
    assert.deepEqual(resumed.metrics, reference.metrics);
  });

  it('stops the training thread promptly when the activity is cancelled', async () => {
    const input = stageInput('teachers: {count: 1, train: {epochs: 500, batchSize: 10, checkpointEvery: 1000}}');
    const env = new MockActivityEnvironment();
    let beats = 0;
    env.on('heartbeat', () => {
      beats++;
      if (beats === 3) env.cancel('CANCELLED');
    });
    await assert.rejects(env.run(createActivities({ store: await newStore(), tracker: null }).trainTeachers, input), (e: unknown) => e instanceof CancelledFailure);
    // 500 epochs would take far longer than the test's timeout: returning proves the thread was stopped.
    assert.ok(beats >= 3);
  });
});
