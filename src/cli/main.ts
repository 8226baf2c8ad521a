import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { loadPipelineFile, expandMatrix, validateFiles } from '../spec/load';
import { InputError, SpecError } from '../util/errors';
import { parseYaml } from '../spec/yaml';
import { MlflowClient } from '../tracking/mlflow';
import { checkWeightformerReuse } from '../../activities/registry';
import type { PipelineSpec } from '../spec/types';
import { startEmbeddedStack, type EmbeddedStack } from '../stack/embedded';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { createPipelineWorker, type TaskQueue } from '../worker/worker';
import { followPipeline, readLiveStatus } from './follow';
import { renderResultTable } from './table';
import { saveRunReport } from '../report/save';
import { cancelSignal } from '../../workflows/pipeline';
import { pollNowSignal, stopWatchSignal, watchStatusQuery } from '../../workflows/watch';
import { taskQueueName } from '../../workflows/queues';
import type { PipelineInput, PipelineResult, WatchInput } from '../../workflows/types';

/** Where local state (Temporal DB, MLflow store, artifacts) lives unless told otherwise. */
function stateDir(opt?: string): string {
  return path.resolve(opt ?? process.env.WEIGHTFORMER_STATE_DIR ?? '.weightformer');
}
function storeRoot(state: string): string {
  return path.resolve(process.env.WEIGHTFORMER_STORE ?? path.join(state, 'store'));
}

/** WEIGHTFORMER_QUEUE_PREFIX separates deployments sharing one namespace (empty: plain `cpu`/`gpu`). */
function queuePrefix(): string | undefined {
  return process.env.WEIGHTFORMER_QUEUE_PREFIX || undefined;
}

async function connectClient(address: string): Promise<Client> {
  const connection = await Connection.connect({ address });
  return new Client({ connection, namespace: process.env.TEMPORAL_NAMESPACE ?? 'default' });
}

interface RunOptions {
  cache: boolean;
  json: boolean;
  wait: boolean;
  stateDir?: string;
}

/**
 * `weightformer run FILE`: with TEMPORAL_ADDRESS unset, starts the embedded stack and an in-process
 * worker, follows the run and stops everything afterwards; with it set, submits to that cluster.
 */
async function runCommand(file: string, opts: RunOptions): Promise<number> {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const progressOut = opts.json ? process.stderr : process.stdout;
  const loaded = loadPipelineFile(file);
  const cells = Object.keys(loaded.spec.matrix).length > 0 ? expandMatrix(loaded.spec) : undefined;
  const state = stateDir(opts.stateDir);
  const external = process.env.TEMPORAL_ADDRESS || undefined;
  let stack: EmbeddedStack | null = null;
  const stopAll: Array<() => Promise<void>> = [];
  const onSignal = () => {
    log('interrupted: stopping the local stack');
    void Promise.allSettled(stopAll.map((s) => s())).then(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (!external) {
      stack = await startEmbeddedStack({ stateDir: state, mlflowUrl: process.env.MLFLOW_TRACKING_URI || undefined, log });
      stopAll.push(() => stack!.stop());
    }
    const address = external ?? stack!.temporalAddress;
    const mlflowUrl = process.env.MLFLOW_TRACKING_URI || stack?.mlflowUrl || null;
    await checkReuseAt(file, loaded.spec, mlflowUrl);
    const client = await connectClient(address);
    let workerRun: Promise<void> | null = null;
    if (stack) {
      const worker = await createPipelineWorker({ temporalAddress: address, taskQueue: 'cpu', queuePrefix: queuePrefix(), storeRoot: storeRoot(state), mlflowUrl });
      workerRun = worker.run();
      stopAll.unshift(async () => {
        worker.shutdown();
        await workerRun;
      });
    }
    // One workflow id per spec: running the same file again while its pipeline is still running (say,
    // after this command was killed) attaches to that run, which resumes where it was, instead of
    // starting a second one. A finished pipeline's id may be reused by a new run.
    const workflowId = `${loaded.spec.name}-${loaded.hash.slice(0, 12)}`;
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, file: path.resolve(file), noCache: !opts.cache, cells, queuePrefix: queuePrefix() };
    const startedAt = Date.now();
    const handle = await client.workflow.start('pipeline', {
      taskQueue: taskQueueName('cpu', queuePrefix()),
      workflowId,
      args: [input],
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    });
    const startTime = (await handle.describe()).startTime.getTime();
    const attached = startTime < startedAt - 1000;
    log(`${attached ? 'attached to the running' : 'started'} workflow ${workflowId}${stack ? ` (Temporal UI ${stack.temporalUiUrl}/namespaces/default/workflows/${workflowId})` : ''}`);
    if (external && !opts.wait) {
      if (opts.json) process.stdout.write(`${JSON.stringify({ status: 'started', workflowId })}\n`);
      return 0;
    }
    let result: PipelineResult;
    try {
      result = await followPipeline(handle, progressOut);
    } catch (err) {
      const message = err instanceof WorkflowFailedError ? `${err.message}: ${failureChain(err)}` : String(err);
      if (opts.json) process.stdout.write(`${JSON.stringify({ status: 'failed', workflowId, error: message })}\n`);
      else log(`pipeline failed: ${message}`);
      return 1;
    }
    const links = {
      temporal: stack ? `${stack.temporalUiUrl}/namespaces/default/workflows/${workflowId}` : null,
      mlflow: mlflowUrl && result.mlflowRunId ? `${mlflowUrl}/#/experiments/${result.mlflowExperimentId}/runs/${result.mlflowRunId}` : null,
    };
    // The HTML report as a local file (its MLflow artifact is report/report.html of the run).
    const report = await saveRunReport(result, { stateDir: state, storeRoot: storeRoot(state), mlflowUrl }).catch((err: unknown) => ({
      file: null,
      note: `copying the report failed: ${err instanceof Error ? err.message : String(err)}`,
    }));
    if (opts.json) {
      process.stdout.write(
        `${JSON.stringify({ status: result.status, workflowId, mlflowRunId: result.mlflowRunId, backend: result.tags['weightformer.backend'] ?? result.cells?.[0]?.tags['weightformer.backend'], metrics: result.metrics, report: report.file ?? undefined, reportNote: report.note, reportRef: result.artifacts.report ?? undefined, cells: result.cells })}\n`,
      );
    } else {
      process.stdout.write(`${renderResultTable(result)}\n`);
      if (links.mlflow) process.stdout.write(`MLflow run:   ${links.mlflow}\n`);
      process.stdout.write(report.file ? `Report:       ${report.file}\n` : `Report:       not written: ${report.note}\n`);
      if (links.temporal) process.stdout.write(`Temporal UI:  ${links.temporal}\n`);
    }
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const stop of stopAll) await stop().catch(() => undefined);
  }
}

/**
 * `weightformer watch FILE`: starts the registry watcher of a pipeline file with a `trigger` (one watcher
 * per file and spec: its workflow id is `watch-<name>-<hash>`), or, when it already runs, signals it to
 * poll now (signal-with-start). With TEMPORAL_ADDRESS set it returns at once; without it, the embedded
 * stack and an in-process worker serve the watcher until Ctrl-C, printing each consolidation. `--stop`
 * ends a running watcher.
 */
async function watchCommand(file: string, opts: { stop: boolean; stateDir?: string }): Promise<number> {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const loaded = loadPipelineFile(file);
  if (!loaded.spec.trigger) {
    log(`${file}: no trigger block: \`weightformer watch\` needs trigger.registeredModel and teacherTag or teacherAlias`);
    return 2;
  }
  const workflowId = `watch-${loaded.spec.name}-${loaded.hash.slice(0, 12)}`;
  const external = process.env.TEMPORAL_ADDRESS || undefined;
  if (opts.stop) {
    if (!external) {
      // Without a cluster the watcher lives in the embedded stack of its own `weightformer watch` process.
      log('weightformer watch --stop needs TEMPORAL_ADDRESS (the cluster the watcher runs on); a local watcher is served by its `weightformer watch` process until Ctrl-C');
      return 2;
    }
    const client = await connectClient(external);
    await client.workflow.getHandle(workflowId).signal(stopWatchSignal);
    log(`stop signal sent to ${workflowId}`);
    return 0;
  }
  let stack: EmbeddedStack | null = null;
  const stops: Array<() => Promise<void>> = [];
  try {
    if (!external) {
      stack = await startEmbeddedStack({ stateDir: stateDir(opts.stateDir), mlflowUrl: process.env.MLFLOW_TRACKING_URI || undefined, log });
      stops.push(() => stack!.stop());
    }
    const address = external ?? stack!.temporalAddress;
    const client = await connectClient(address);
    if (stack) {
      const worker = await createPipelineWorker({
        temporalAddress: address, taskQueue: 'cpu', queuePrefix: queuePrefix(), storeRoot: storeRoot(stateDir(opts.stateDir)),
        mlflowUrl: process.env.MLFLOW_TRACKING_URI || stack.mlflowUrl,
      });
      const running = worker.run();
      stops.unshift(async () => {
        worker.shutdown();
        await running;
      });
    }
    await checkReuseAt(file, loaded.spec, process.env.MLFLOW_TRACKING_URI || stack?.mlflowUrl || null);
    const input: WatchInput = { spec: loaded.spec, specHash: loaded.hash, file: path.resolve(file), queuePrefix: queuePrefix() };
    const handle = await client.workflow.signalWithStart('watch', {
      taskQueue: taskQueueName('cpu', queuePrefix()),
      workflowId,
      args: [input],
      signal: pollNowSignal,
      signalArgs: [],
    });
    const trigger = loaded.spec.trigger;
    const marks = trigger.teacherTag ? `tag ${trigger.teacherTag.key}=${trigger.teacherTag.value}` : `alias ${trigger.teacherAlias}`;
    log(`watching ${trigger.registeredModel} (teachers: ${marks}) every ${trigger.pollInterval} in workflow ${workflowId}`);
    if (!stack) return 0;
    // Local mode: report each consolidation until interrupted.
    // By child workflow id: the status keeps only the newest consolidations, so a count would stop at that cap.
    const reported = new Set<string>();
    let lastError: string | undefined;
    let interrupted = false;
    const onSignal = () => {
      interrupted = true;
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    while (!interrupted) {
      const status = await handle.query(watchStatusQuery).catch(() => null);
      for (const c of status?.consolidations ?? []) {
        if (reported.has(c.workflowId)) continue;
        reported.add(c.workflowId);
        log(`consolidated ${c.teacherVersions.join(', ')} → student ${c.studentVersion ?? '(not registered)'} with WeightFormer ${c.weightformerVersion ?? '(none)'} (${c.workflowId})`);
      }
      // Said once when it appears (the status keeps it until the next consolidation or successful poll).
      if (status && status.lastError !== lastError) {
        if (status.lastError) log(`watcher error: ${status.lastError}`);
        lastError = status.lastError;
      }
      // A watcher that ended (a configuration error, a cancel) is not waited on forever.
      const run = await handle.describe().catch(() => null);
      if (run && run.status.name !== 'RUNNING' && run.status.name !== 'CONTINUED_AS_NEW') {
        const outcome = await handle.result().then(
          () => null,
          (err: unknown) => (err instanceof WorkflowFailedError ? `${err.message}: ${failureChain(err)}` : String(err)),
        );
        log(`watcher ${workflowId} ended (${run.status.name})${outcome ? `: ${outcome}` : ''}`);
        return outcome ? 1 : 0;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
    return 0;
  } finally {
    for (const stop of stops) await stop().catch(() => undefined);
  }
}

/**
 * With `weightformer.reuse` set and an MLflow server known, checks the registered WeightFormer before
 * anything is submitted, so a missing or incompatible one is reported at its line (exit 2), not after the
 * teachers have trained.
 */
async function checkReuseAt(file: string, spec: PipelineSpec, mlflowUrl: string | null): Promise<void> {
  if (!mlflowUrl || spec.weightformer.reuse === undefined) return;
  try {
    await checkWeightformerReuse(new MlflowClient(mlflowUrl), spec);
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    const { source } = parseYaml(fs.readFileSync(file, 'utf8'), file);
    throw new SpecError([source.diagnostic('/weightformer/reuse', err.message.replace(/^weightformer\.reuse: /, ''), 'value')]);
  }
}

async function workerCommand(opts: { queue: TaskQueue; stateDir?: string }): Promise<number> {
  const address = process.env.TEMPORAL_ADDRESS;
  if (!address) throw new Error('TEMPORAL_ADDRESS is not set: a standalone worker needs a Temporal server (or use `weightformer dev`)');
  const worker = await createPipelineWorker({
    temporalAddress: address,
    taskQueue: opts.queue,
    queuePrefix: queuePrefix(),
    storeRoot: storeRoot(stateDir(opts.stateDir)),
    mlflowUrl: process.env.MLFLOW_TRACKING_URI || null,
    identity: process.env.WEIGHTFORMER_WORKER_IDENTITY || undefined,
    heartbeatInterval: process.env.WEIGHTFORMER_HEARTBEAT_INTERVAL || undefined,
    outboxReplayInterval: process.env.WEIGHTFORMER_OUTBOX_REPLAY_INTERVAL || undefined,
    namespace: process.env.TEMPORAL_NAMESPACE || undefined,
  });
  process.stderr.write(`worker polling task queue '${taskQueueName(opts.queue, queuePrefix())}' on ${address}\n`);
  const stop = () => worker.shutdown();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await worker.run();
  return 0;
}

async function statusCommand(id: string, opts: { json: boolean }): Promise<number> {
  const client = await connectClient(requireAddress());
  const handle = client.workflow.getHandle(id);
  const description = await handle.describe();
  const live = await readLiveStatus(handle);
  const summary = { workflowId: id, status: description.status.name, progress: live.progress, heartbeat: live.heartbeat, attempt: live.attempt, lastFailure: live.lastFailure };
  process.stdout.write(opts.json ? `${JSON.stringify(summary)}\n` : `${JSON.stringify(summary, null, 2)}\n`);
  return 0;
}

async function cancelCommand(id: string, opts: { reason?: string }): Promise<number> {
  const client = await connectClient(requireAddress());
  await client.workflow.getHandle(id).signal(cancelSignal, opts.reason ?? 'cancelled from the CLI');
  process.stderr.write(`cancel signal sent to ${id}\n`);
  return 0;
}

async function devCommand(opts: { stateDir?: string }): Promise<number> {
  const stack = await startEmbeddedStack({ stateDir: stateDir(opts.stateDir), mlflowUrl: process.env.MLFLOW_TRACKING_URI || undefined, log: (l) => process.stderr.write(`${l}\n`) });
  process.stdout.write(
    `TEMPORAL_ADDRESS=${stack.temporalAddress}\nMLFLOW_TRACKING_URI=${stack.mlflowUrl}\n# Temporal UI: ${stack.temporalUiUrl}\n# Ctrl-C stops both servers.\n`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await stack.stop();
  return 0;
}

function requireAddress(): string {
  const address = process.env.TEMPORAL_ADDRESS;
  if (!address) throw new Error('TEMPORAL_ADDRESS is not set (start a server with `weightformer dev`)');
  return address;
}

export async function main(argv: string[]): Promise<void> {
  // The SDK logs every worker state change and each failed attempt (with its stack) at INFO/WARN; the CLI
  // reports failures itself, so only errors come through unless WEIGHTFORMER_LOG_LEVEL asks for more.
  Runtime.install({ logger: new DefaultLogger((process.env.WEIGHTFORMER_LOG_LEVEL as 'WARN' | undefined) ?? 'ERROR') });
  const program = new Command('weightformer')
    .description('Consolidate an ensemble into one student model from a declarative pipeline file')
    .showHelpAfterError();
  let exitCode = 0;
  program
    .command('validate')
    .argument('<files...>', 'pipeline files')
    .description('validate pipeline files against the schema (exit 2 on any error)')
    .action((files: string[]) => {
      const { ok, output } = validateFiles(files);
      process.stdout.write(`${output}\n`);
      exitCode = ok ? 0 : 2;
    });
  program
    .command('run')
    .argument('<file>', 'pipeline file')
    .description('run a pipeline (embedded local stack unless TEMPORAL_ADDRESS is set)')
    .option('--no-cache', 'recompute every stage even when its output is cached')
    .option('--json', 'print one JSON object on stdout; progress goes to stderr', false)
    .option('--wait', 'with TEMPORAL_ADDRESS set, follow the run until it ends', false)
    .option('--state-dir <dir>', 'local state directory (default .weightformer or WEIGHTFORMER_STATE_DIR)')
    .action(async (file: string, opts: RunOptions) => {
      exitCode = await runCommand(file, opts);
    });
  program
    .command('watch')
    .argument('<file>', 'pipeline file with a trigger block')
    .description('start (or signal) the registry watcher that consolidates new teacher versions (embedded local stack unless TEMPORAL_ADDRESS is set)')
    .option('--stop', 'stop the running watcher of this file', false)
    .option('--state-dir <dir>', 'local state directory (default .weightformer or WEIGHTFORMER_STATE_DIR)')
    .action(async (file: string, opts: { stop: boolean; stateDir?: string }) => {
      exitCode = await watchCommand(file, opts);
    });
  program
    .command('worker')
    .description('run a worker for one task queue against TEMPORAL_ADDRESS')
    .addOption(new Option('--queue <queue>', 'task queue').choices(['cpu', 'gpu']).default('cpu'))
    .option('--state-dir <dir>', 'local state directory')
    .action(async (opts: { queue: TaskQueue; stateDir?: string }) => {
      exitCode = await workerCommand(opts);
    });
  program
    .command('status')
    .argument('<id>', 'workflow id')
    .option('--json', 'one-line JSON', false)
    .action(async (id: string, opts: { json: boolean }) => {
      exitCode = await statusCommand(id, opts);
    });
  program
    .command('cancel')
    .argument('<id>', 'workflow id')
    .option('--reason <text>')
    .action(async (id: string, opts: { reason?: string }) => {
      exitCode = await cancelCommand(id, opts);
    });
  program
    .command('bench')
    .description('run the benchmark suite (quality, teacher scaling, compute per backend, orchestration); writes bench/results/bench-<date>-<host>-<hhmm>.json and .md')
    .option('--quick', 'reduced settings: under 5 minutes on 2 cores', false)
    .option('--only <sections>', 'comma-separated subset of quality,scaling,compute,orchestration')
    .option('--out <dir>', 'results folder (default bench/results)')
    .action(async (opts: { quick: boolean; only?: string; out?: string }) => {
      // Loaded only here: the suite pulls in the whole ML library and the bench rigs.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      let suite: typeof import('../../bench/suite');
      try {
        suite = require('../../bench/suite') as typeof import('../../bench/suite');
      } catch (err) {
        // The worker images ship no bench/: say so instead of a module-resolution stack trace.
        process.stderr.write(`the benchmark suite is not installed here (bench/ is not part of this build): ${err instanceof Error ? err.message.split('\n')[0] : String(err)}\n`);
        exitCode = 2;
        return;
      }
      const { benchMain, parseSuiteArgs } = suite;
      const args = [...(opts.quick ? ['--quick'] : []), ...(opts.only ? ['--only', opts.only] : []), ...(opts.out ? ['--out', opts.out] : [])];
      try {
        parseSuiteArgs(args);
      } catch (err) {
        // A bad --only: say which, exit 2 like any other usage error.
        process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
        exitCode = 2;
        return;
      }
      exitCode = await benchMain(args);
    });
  program
    .command('dev')
    .description('start the local Temporal and MLflow servers and keep them up')
    .option('--state-dir <dir>', 'local state directory')
    .action(async (opts: { stateDir?: string }) => {
      exitCode = await devCommand(opts);
    });
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof SpecError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  process.exit(exitCode);
}

/** The innermost causes of a failure, e.g. `Activity task failed: InputError: ...`. */
function failureChain(err: Error): string {
  const parts: string[] = [];
  let cause: unknown = err.cause;
  while (cause instanceof Error) {
    parts.push(cause.message);
    cause = cause.cause;
  }
  return parts.join(': ');
}
