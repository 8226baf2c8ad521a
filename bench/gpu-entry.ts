/**
 * The GPU machine's bench entry (bundled into one ESM file by scripts/gpu-bundle.sh, so it runs where there
 * is no npm): the compute section (ms per meta-step and per student step on the chosen backends, ratios to
 * wasm, kernel counts batched vs plain port), printed as one JSON object on stdout.
 *
 *   node gpu-bench.mjs [--backends webgpu,wasm,cpu] [--reps N] [--teachers T] [--batch B]
 *
 * Compare its webgpu `metaStepMs` with `python bench/torch_meta_step.py` on the same GPU (same shapes).
 * tfjs-backend-webgpu computes in float32 only, so an f16 figure exists only on the PyTorch side.
 */
import * as os from 'node:os';
import { tf } from '../src/ml/tf';
import { COMPUTE_FULL, runCompute, type ComputeBackend } from './compute';

function parse(argv: string[]): { backends: ComputeBackend[]; reps: number; teachers: number; batch: number } {
  const o = { backends: ['webgpu', 'wasm', 'cpu'] as ComputeBackend[], reps: COMPUTE_FULL.reps, teachers: COMPUTE_FULL.shape.teachers, batch: COMPUTE_FULL.shape.batchSize };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${String(a)} needs a value`);
    i++;
    if (a === '--backends') {
      const list = v.split(',');
      for (const b of list) if (!['webgpu', 'wasm', 'cpu'].includes(b)) throw new Error(`unknown backend ${b}`);
      o.backends = list as ComputeBackend[];
    } else if (a === '--reps' || a === '--teachers' || a === '--batch') {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} must be a positive integer, got ${v}`);
      if (a === '--reps') o.reps = n;
      else if (a === '--teachers') o.teachers = n;
      else o.batch = n;
    } else throw new Error(`unknown option ${String(a)}`);
  }
  return o;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const log = (l: string): void => void process.stderr.write(`${l}\n`);
  const compute = await runCompute({ ...COMPUTE_FULL, reps: o.reps, backends: o.backends, shape: { ...COMPUTE_FULL.shape, teachers: o.teachers, batchSize: o.batch } }, log);
  const out = {
    entry: 'gpu-bench/1',
    host: os.hostname(),
    cpu: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
    node: process.version,
    tfjs: tf.version_core,
    shape: { teachers: o.teachers, batchSize: o.batch, student: '784-64-10', d: 64, heads: 4, blocks: 2 },
    f16: 'not measured in TF.js: tfjs-backend-webgpu 4.22 computes in float32 only',
    compute,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`gpu bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  },
);
