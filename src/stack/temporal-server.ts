import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { freePort, isPortFree } from './ports';
import { startServer, type ServerHandle } from './process';
import { ensurePythonTools } from './python-tools';

export interface TemporalDevServer {
  address: string;
  uiUrl: string;
  port: number;
  dbFile: string;
  stop(): Promise<void>;
}

/**
 * Starts `temporal server start-dev` on free loopback ports, persisting to a SQLite file in `stateDir`,
 * so a killed server restarted on the same file carries on with every workflow it had.
 */
export async function startTemporalDevServer(opts: { stateDir: string; port?: number; uiPort?: number }): Promise<TemporalDevServer> {
  const tools = await ensurePythonTools();
  await fs.mkdir(opts.stateDir, { recursive: true });
  const port = opts.port ?? (await freePort());
  const uiPort = opts.uiPort ?? (await freeUiPort(port));
  const dbFile = path.join(opts.stateDir, 'temporal.db');
  const server: ServerHandle = await startServer({
    name: 'temporal',
    command: tools.temporal,
    args: [
      'server', 'start-dev',
      '--db-filename', dbFile,
      '--ip', '127.0.0.1',
      '--port', String(port),
      '--ui-port', String(uiPort),
      '--log-level', 'warn',
      // Sweeps and tests start many workflows quickly; the dev server's defaults are fine otherwise.
      '--dynamic-config-value', 'frontend.enableUpdateWorkflowExecution=true',
    ],
    logFile: path.join(opts.stateDir, 'temporal.log'),
    ready: { tcpPort: port },
    timeoutMs: 60_000,
  });
  return {
    address: `127.0.0.1:${port}`,
    uiUrl: `http://127.0.0.1:${uiPort}`,
    port,
    dbFile,
    stop: () => server.stop(),
  };
}

/** The UI's conventional port is gRPC port + 1000; fall back to any free port when that one is taken. */
async function freeUiPort(grpcPort: number): Promise<number> {
  const preferred = grpcPort + 1000;
  return preferred < 65536 && (await isPortFree(preferred)) ? preferred : freePort();
}
