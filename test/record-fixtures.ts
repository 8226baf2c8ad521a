/**
 * Records the workflow history fixtures the replay test replays (`npm run record:fixtures`).
 * Run it again whenever the schema version changes; the file name carries that version.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sharedTemporal, stopSharedTemporal } from './helpers/temporal';
import { tinySpec } from './helpers/specs';
import { createPipelineWorker } from '../src/worker/worker';
import { historyFixturePath } from './helpers/fixtures';
import { execFileSync } from 'node:child_process';
import { ensurePythonTools } from '../src/stack/python-tools';

async function main(): Promise<void> {
  const env = await sharedTemporal();
  const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'record-store-'));
  const loaded = tinySpec('', 'replay-fixture');
  const worker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', storeRoot, mlflowUrl: null });
  const workflowId = await worker.runUntil(async () => {
    const handle = await env.client.workflow.start('pipeline', {
      taskQueue: 'cpu',
      workflowId: `replay-fixture-${Date.now()}`,
      args: [{ spec: loaded.spec, specHash: loaded.hash, noCache: true }],
    });
    await handle.result();
    return handle.workflowId;
  });
  // The Temporal CLI writes the history as proto3 JSON, the format the SDK's replayer reads.
  const tools = await ensurePythonTools();
  const json = execFileSync(tools.temporal, ['workflow', 'show', '--workflow-id', workflowId, '--address', env.address, '--output', 'json'], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  const history = JSON.parse(json) as { events?: unknown[] };
  const file = historyFixturePath(loaded.spec.version);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, `${JSON.stringify(history, null, 1)}\n`);
  process.stdout.write(`recorded ${history.events?.length} events to ${file}\n`);
  await stopSharedTemporal();
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
