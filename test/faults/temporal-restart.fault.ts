import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { tinySpec } from '../helpers/specs';
import { startTemporalDevServer, type TemporalDevServer } from '../../src/stack/temporal-server';
import { readLiveStatus } from '../../src/cli/follow';
import type { PipelineInput, PipelineResult } from '../../workflows/types';
import { taskQueueName } from '../../workflows/queues';
import { recordFault } from './rows';
import { killProcess, startWorkerProcess, type WorkerProcess } from './harness';

const PREFIX = 'faults-temporal';
const QUEUE = taskQueueName('cpu', PREFIX);
const SPEC = tinySpec(`teachers: {count: 3, train: {epochs: 30, batchSize: 10, checkpointEvery: 100}}\ngenerate: {method: aligned-average}\nweightformer: {mode: none}`, 'faults-temporal');

/** Pids of the processes started with `needle` on their command line (only the server this test started). */
function pidsWith(needle: string): number[] {
  const pids: number[] = [];
  for (const d of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').includes(needle)) pids.push(Number(d));
    } catch {
      /* gone meanwhile */
    }
  }
  return pids;
}

describe('fault: Temporal server killed mid-pipeline', function () {
  this.timeout(900_000);

  it('SIGKILLed and restarted on its SQLite file: the pipeline completes', async () => {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-temporal-'));
    const storeRoot = path.join(stateDir, 'store');
    let server: TemporalDevServer | undefined = await startTemporalDevServer({ stateDir });
    const workers: WorkerProcess[] = [];
    let connection: Connection | undefined;
    try {
      workers.push(startWorkerProcess({ temporalAddress: server.address, store: storeRoot, prefix: PREFIX, mlflowUrl: null }));
      connection = await Connection.connect({ address: server.address });
      const client = new Client({ connection });
      const input: PipelineInput = { spec: SPEC.spec, specHash: SPEC.hash, noCache: true, queuePrefix: PREFIX };
      const handle = await client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: `faults-temporal-${Date.now()}`, args: [input] });
      // Killed while a teacher trains (after the first has been recorded as done).
      let stepBefore = 0;
      for (;;) {
        const live = await readLiveStatus(handle);
        if (live.heartbeat && live.heartbeat.step > 0 && live.progress?.stage === 'teachers') {
          stepBefore = live.heartbeat.step;
          break;
        }
        if (live.progress && live.progress.state !== 'running') assert.fail(`pipeline ${live.progress.state} before the kill`);
        await new Promise((r) => setTimeout(r, 250));
      }
      const pids = pidsWith(server.dbFile);
      assert.ok(pids.length > 0, 'the dev server process was not found');
      for (const pid of pids) process.kill(pid, 'SIGKILL');
      const port = server.port;
      server = undefined;
      await new Promise((r) => setTimeout(r, 5_000));
      server = await startTemporalDevServer({ stateDir, port });
      // A worker whose connection died with the server is restarted, as a supervisor would.
      const restartedWorkers = workers.filter((w) => w.exitCode !== null || w.signalCode !== null).length;
      if (restartedWorkers > 0) workers.push(startWorkerProcess({ temporalAddress: server.address, store: storeRoot, prefix: PREFIX, mlflowUrl: null }));
      const result = (await handle.result()) as PipelineResult;
      const stagesDone = Object.values(result.stages).filter((s) => s.state === 'completed' || s.state === 'skipped').length;
      const ok = result.status === 'completed' && stagesDone === Object.keys(result.stages).length && Object.keys(result.metrics).length >= 10;
      recordFault({
        scenario: 'Temporal dev server SIGKILLed mid-pipeline, restarted on its SQLite file',
        tried: 1,
        survived: ok ? 1 : 0,
        work_redone_steps: 0,
        checkpoint_interval_steps: 0,
        data_lost: ok ? 0 : 1,
        note: `killed at teacher step ${stepBefore}; ${restartedWorkers} worker(s) had to be restarted; ${Object.keys(result.metrics).length} metrics`,
      });
      assert.ok(ok, JSON.stringify(result.stages));
    } finally {
      for (const w of workers) await killProcess(w);
      await connection?.close().catch(() => undefined);
      await server?.stop();
      fs.rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
