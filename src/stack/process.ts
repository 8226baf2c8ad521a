/**
 * Long-running local server processes (MLflow tracking server, Temporal dev server).
 *
 * `startServer` spawns the command in its own process group with stdout and stderr appended to a log file,
 * waits until a TCP port and/or an HTTP URL answers, and hands back `stop()`. Stopping signals the whole
 * group (servers such as `mlflow server` fork workers): SIGTERM, then SIGKILL after a grace period. Every
 * server still running when this process exits (normally, or on SIGINT/SIGTERM/SIGHUP) is terminated too,
 * so a crashed test run or an interrupted CLI does not leave servers behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { tcpAnswers } from './ports';

export interface ReadyCheck {
  /** Ready once a TCP connection to `tcpHost:tcpPort` is accepted. */
  tcpPort?: number;
  /** Default 127.0.0.1. */
  tcpHost?: string;
  /** Ready once a GET of this URL answers with a 2xx status. */
  httpUrl?: string;
}

export interface StartServerOptions {
  /** Short name used in messages, e.g. `mlflow`. */
  name: string;
  command: string;
  args: string[];
  /** Added on top of this process's environment. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** stdout and stderr are appended here (the folder is created). */
  logFile: string;
  /** Every check given must pass; at least one is required. */
  ready: ReadyCheck;
  /** How long to wait for `ready` before giving up (the process is then stopped). */
  timeoutMs: number;
  /** SIGTERM → SIGKILL delay used by `stop()`; default 10 s. */
  stopGraceMs?: number;
  /** Delay between readiness probes; default 200 ms. */
  pollMs?: number;
}

export interface ServerHandle {
  name: string;
  pid: number;
  logFile: string;
  /** Milliseconds from spawn to ready. */
  startupMs: number;
  /** Resolves when the server's main process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  isRunning(): boolean;
  /** Idempotent: SIGTERM to the process group, SIGKILL after the grace period. */
  stop(): Promise<void>;
}

/** The server exited or did not become ready in time; the message ends with the tail of its log. */
export class ServerStartError extends Error {
  override name = 'ServerStartError';
  constructor(message: string, public readonly logFile: string, public readonly logTail: string) {
    super(logTail ? `${message}\n--- last lines of ${logFile} ---\n${logTail}` : `${message} (log: ${logFile})`);
  }
}

/** The last `maxLines` lines (at most `maxBytes` bytes) of a text file; '' when it cannot be read. */
export function tailFile(file: string, maxLines = 40, maxBytes = 8192): string {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const size = fs.fstatSync(fd).size;
    const len = Math.min(size, maxBytes);
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, size - len);
    const lines = buf.toString('utf8').split('\n');
    if (len < size) lines.shift(); // first line is probably cut
    while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    return lines.slice(-maxLines).join('\n');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Cleanup of servers still running when this process goes away.

const live = new Set<ChildProcess>();
const EXIT_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let hooksInstalled = false;

function signalGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, sig); // the whole group: the server and the workers it forked
  } catch {
    try {
      child.kill(sig);
    } catch {
      /* already gone */
    }
  }
}

function onProcessExit(): void {
  for (const child of live) signalGroup(child, 'SIGTERM');
  live.clear();
}

function onSignal(sig: NodeJS.Signals): void {
  onProcessExit();
  uninstallHooks();
  // If nobody else handles this signal, die of it as the default action would have.
  if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
}

const signalListeners = new Map<NodeJS.Signals, () => void>();

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', onProcessExit);
  for (const sig of EXIT_SIGNALS) {
    const fn = (): void => onSignal(sig);
    signalListeners.set(sig, fn);
    process.on(sig, fn);
  }
}

function uninstallHooks(): void {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  process.off('exit', onProcessExit);
  for (const [sig, fn] of signalListeners) process.off(sig, fn);
  signalListeners.clear();
}

// ---------------------------------------------------------------------------------------------------------

/** True if `p` settles within `ms`; the timer is cleared either way, so it never holds the process open. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function httpAnswers(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await res.arrayBuffer().catch(() => undefined);
    return res.ok;
  } catch {
    return false;
  }
}

/** Spawn a server, wait until it answers, return a handle to stop it. Throws `ServerStartError`. */
export async function startServer(opts: StartServerOptions): Promise<ServerHandle> {
  const { name, command, args, logFile, ready, timeoutMs } = opts;
  if (ready.tcpPort === undefined && ready.httpUrl === undefined) {
    throw new Error(`startServer(${name}): ready needs tcpPort and/or httpUrl`);
  }
  const stopGraceMs = opts.stopGraceMs ?? 10_000;
  const pollMs = opts.pollMs ?? 200;

  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const fd = fs.openSync(logFile, 'a');
  fs.writeSync(fd, `\n=== ${new Date().toISOString()} starting ${name}: ${command} ${args.join(' ')}\n`);
  const t0 = Date.now();
  let child: ChildProcess;
  try {
    child = spawn(command, args, {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', fd, fd],
      detached: true, // own process group, so stop() reaches forked workers too
    });
  } finally {
    fs.closeSync(fd); // the child has its own copy
  }
  child.unref(); // a forgotten server must not keep this process alive; the exit hook stops it

  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(child);
      if (live.size === 0) uninstallHooks();
      resolve(exitInfo);
    });
    child.once('error', (err) => {
      spawnError = err;
      if (child.pid === undefined) {
        exitInfo = { code: null, signal: null };
        resolve(exitInfo);
      }
    });
  });

  if (child.pid !== undefined) {
    live.add(child);
    installHooks();
  }

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.pid === undefined || exitInfo !== undefined) {
        signalGroup(child, 'SIGKILL'); // sweep workers the main process may have left behind
        return;
      }
      signalGroup(child, 'SIGTERM');
      const graceful = await within(exited, stopGraceMs);
      signalGroup(child, 'SIGKILL'); // stragglers of the group (or the main process itself if it hung)
      if (!graceful) await within(exited, 5000);
      live.delete(child);
      if (live.size === 0) uninstallHooks();
    })();
    return stopping;
  };

  const fail = async (message: string): Promise<never> => {
    await stop();
    throw new ServerStartError(`${name}: ${message}`, logFile, tailFile(logFile));
  };

  const what = [
    ready.tcpPort !== undefined ? `TCP ${ready.tcpHost ?? '127.0.0.1'}:${ready.tcpPort}` : undefined,
    ready.httpUrl !== undefined ? `GET ${ready.httpUrl}` : undefined,
  ].filter(Boolean).join(' and ');
  const deadline = t0 + timeoutMs;
  for (;;) {
    if (spawnError !== undefined && child.pid === undefined) {
      return fail(`could not start \`${command}\`: ${spawnError.message}`);
    }
    if (exitInfo !== undefined) {
      const how = exitInfo.signal ? `signal ${exitInfo.signal}` : `code ${exitInfo.code}`;
      return fail(`exited with ${how} before it answered ${what}`);
    }
    const tcpOk = ready.tcpPort === undefined || (await tcpAnswers(ready.tcpPort, ready.tcpHost ?? '127.0.0.1'));
    const httpOk = tcpOk && (ready.httpUrl === undefined || (await httpAnswers(ready.httpUrl)));
    if (tcpOk && httpOk && exitInfo === undefined) break;
    if (Date.now() >= deadline) {
      return fail(`did not answer ${what} within ${Math.round(timeoutMs / 1000)} s`);
    }
    await sleep(pollMs);
  }

  return {
    name,
    pid: child.pid as number,
    logFile,
    startupMs: Date.now() - t0,
    exited,
    isRunning: () => exitInfo === undefined,
    stop,
  };
}
