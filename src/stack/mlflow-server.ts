/**
 * A local MLflow tracking server: SQLite backend and proxied artifact store under one state folder.
 *
 * Runs on loopback only. MLflow 3.x's security middleware (allowed hosts, CORS) already accepts
 * 127.0.0.1/localhost with its defaults, so no security flag is relaxed. One uvicorn worker, and the
 * server's job runner (huey consumers for GenAI jobs, ~7 extra Python processes) is disabled via
 * MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false; telemetry is off.
 */
import fs from 'node:fs';
import path from 'node:path';
import { freePort, isPortFree } from './ports';
import { startServer } from './process';
import { ensurePythonTools } from './python-tools';

export interface MlflowServerOptions {
  /** Holds mlflow.db, mlartifacts/ and mlflow-server.log (created if missing). */
  stateDir: string;
  /** Default: a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 120 s (a cold start imports a lot of Python, and creates the DB schema the first time). */
  timeoutMs?: number;
  /** Default `<stateDir>/mlflow-server.log`. */
  logFile?: string;
}

export interface MlflowServer {
  /** e.g. http://127.0.0.1:5123 (no trailing slash). */
  url: string;
  port: number;
  pid: number;
  logFile: string;
  startupMs: number;
  stop(): Promise<void>;
}

/** Build the `mlflow server` argument list (exported for tests and for printing in diagnostics). */
export function mlflowServerArgs(stateDir: string, host: string, port: number): string[] {
  const dir = path.resolve(stateDir);
  return [
    'server',
    '--backend-store-uri', `sqlite:///${path.join(dir, 'mlflow.db')}`,
    '--artifacts-destination', path.join(dir, 'mlartifacts'),
    '--serve-artifacts',
    '--host', host,
    '--port', String(port),
    '--workers', '1',
  ];
}

export async function startMlflowServer(opts: MlflowServerOptions): Promise<MlflowServer> {
  const host = opts.host ?? '127.0.0.1';
  const stateDir = path.resolve(opts.stateDir);
  fs.mkdirSync(path.join(stateDir, 'mlartifacts'), { recursive: true });
  const tools = await ensurePythonTools();
  let port = opts.port;
  if (port === undefined) {
    port = await freePort(host);
  } else if (!(await isPortFree(port, host))) {
    // Otherwise the readiness probe could be answered by whatever already listens there.
    throw new Error(`cannot start MLflow on ${host}:${port}: the port is already in use`);
  }
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const logFile = opts.logFile ?? path.join(stateDir, 'mlflow-server.log');
  const server = await startServer({
    name: 'mlflow',
    command: tools.mlflow,
    args: mlflowServerArgs(stateDir, host, port),
    cwd: stateDir, // anything MLflow writes relative to its cwd stays in the state folder
    env: {
      MLFLOW_SERVER_ENABLE_JOB_EXECUTION: 'false',
      MLFLOW_DISABLE_TELEMETRY: 'true',
      DO_NOT_TRACK: 'true',
      PYTHONUNBUFFERED: '1',
    },
    logFile,
    ready: { tcpPort: port, tcpHost: host, httpUrl: `${url}/health` },
    timeoutMs: opts.timeoutMs ?? 120_000,
  });
  return { url, port, pid: server.pid, logFile, startupMs: server.startupMs, stop: server.stop };
}
