import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import { Worker } from '@temporalio/worker';
import { historyFixturePath } from './helpers/fixtures';
import { workflowBundle } from '../src/worker/worker';
import schema from '../schemas/pipeline.schema.json';

describe('workflow determinism (replay of a recorded history)', function () {
  this.timeout(120_000);

  it('has a fixture recorded for the current schema version', async () => {
    const version = (schema as { properties: { version: { const: number } } }).properties.version.const;
    await fs.access(historyFixturePath(version));
  });

  it('replays the recorded pipeline history without nondeterminism', async () => {
    const version = (schema as { properties: { version: { const: number } } }).properties.version.const;
    const history = JSON.parse(await fs.readFile(historyFixturePath(version), 'utf8'));
    assert.ok(history.events.length > 10);
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, 'replay-fixture');
  });
});
