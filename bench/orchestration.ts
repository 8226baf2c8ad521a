/**
 * Orchestration overhead: a pipeline of trivial stages run as a Temporal workflow (a real dev server,
 * started the way `weightformer run` starts it, and an in-process worker), against the same stage function
 * called directly; reported in ms per stage. The difference is what Temporal adds per pipeline stage
 * (scheduling, history writes, the activity round trip), to set against stages that take seconds to minutes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker, bundleWorkflowCode } from '@temporalio/worker';
import { startTemporalDevServer } from '../src/stack/temporal-server';
import { trivialActivities } from './orchestration-activities';

export interface OrchestrationResult {
  stages: number;
  runs: number;
  msPerStageTemporal: number;
  msPerStageDirect: number;
  overheadMsPerStage: number;
  /** Server start, bundling and worker start: paid once per process, not per stage. */
  secondsSetup: number;
}

let runtimeInstalled = false;

export async function runOrchestration(stages: number, runs: number, log: (line: string) => void = () => undefined): Promise<OrchestrationResult> {
  const d0 = performance.now();
  for (let r = 0; r < runs; r++) {
    let v = 0;
    for (let i = 0; i < stages; i++) v = await trivialActivities.trivialStage(v);
  }
  const msPerStageDirect = (performance.now() - d0) / (runs * stages);

  const s0 = performance.now();
  if (!runtimeInstalled) {
    // Keep the SDK's per-task logging out of the bench output.
    try {
      Runtime.install({ logger: new DefaultLogger('WARN') });
    } catch {
      // a runtime exists already (the suite imported something that installed one)
    }
    runtimeInstalled = true;
  }
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'wf-bench-orchestration-'));
  const server = await startTemporalDevServer({ stateDir });
  let worker: Worker | null = null;
  let running: Promise<void> | null = null;
  try {
    const connection = await NativeConnection.connect({ address: server.address });
    const taskQueue = `bench-orchestration-${process.pid}`;
    worker = await Worker.create({
      connection,
      taskQueue,
      workflowBundle: await bundleWorkflowCode({
        workflowsPath: path.resolve(__dirname, 'orchestration-workflows.js'),
        logger: { trace() {}, debug() {}, info() {}, warn() {}, error() {}, log() {} } as never,
      }),
      activities: trivialActivities,
    });
    running = worker.run();
    const client = new Client({ connection: await Connection.connect({ address: server.address }) });
    const secondsSetup = (performance.now() - s0) / 1000;
    log(`orchestration: dev server + worker ready in ${secondsSetup.toFixed(1)} s`);
    // One untimed run warms the workflow cache and the connections.
    await client.workflow.execute('trivialPipeline', { taskQueue, workflowId: `bench-warmup-${process.pid}`, args: [stages] });
    const t0 = performance.now();
    for (let r = 0; r < runs; r++) {
      const out = await client.workflow.execute('trivialPipeline', { taskQueue, workflowId: `bench-${process.pid}-${r}`, args: [stages] });
      if (out !== stages) throw new Error(`the trivial pipeline returned ${String(out)}, expected ${stages}`);
    }
    const msPerStageTemporal = (performance.now() - t0) / (runs * stages);
    await client.connection.close();
    return { stages, runs, msPerStageTemporal, msPerStageDirect, overheadMsPerStage: msPerStageTemporal - msPerStageDirect, secondsSetup };
  } finally {
    if (worker) {
      worker.shutdown();
      await running?.catch(() => undefined);
    }
    await server.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
}
