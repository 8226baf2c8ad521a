/**
 * Compute: ms per WeightFormer meta-training step and per student training step on each backend (cpu,
 * wasm, webgpu), as ratios to wasm measured in the same run, and the kernels one meta-step dispatches
 * (`tf.profile`, kernels.length) for the batched model against the plain port of the prototype
 * (bench/plain-port.ts). A backend that cannot start here is recorded as skipped with the reason.
 */
import { initBackend, probeWebgpuAdapter, softwareAdapterReason } from '../src/ml/backend';
import { tf } from '../src/ml/tf';
import { PROTOTYPE_SHAPE, metaStepRig, msPerStep, studentStepRig, type MetaStepShape, type StepRig } from './meta-step';

export type ComputeBackend = 'cpu' | 'wasm' | 'webgpu';

export interface KernelCount {
  /** tf.profile's kernels.length for one step. */
  total: number;
  /** Without Reshape, Identity and Cast, which move no data on the GPU backends (a view or a no-op). */
  computing: number;
  byName: Record<string, number>;
}

export interface BackendTiming {
  backend: ComputeBackend;
  status: 'measured' | 'skipped' | 'failed';
  reason?: string;
  adapter?: string;
  metaStepMs?: number;
  plainPortMetaStepMs?: number;
  studentStepMs?: number;
  /** ms / wasm's ms for the same step in this run (< 1: faster than wasm). */
  metaStepRatioToWasm?: number;
  studentStepRatioToWasm?: number;
  kernels?: { batched: KernelCount; plainPort: KernelCount; ratio: number; ratioComputing: number };
  /** The batched and plain-port steps' first losses: the same function, so they agree to rounding. */
  lossBatched?: number;
  lossPlainPort?: number;
}

export interface ComputeSetting {
  shape: MetaStepShape;
  studentBatch: number;
  warmup: number;
  reps: number;
  /** The pure-JS cpu backend is ~20× slower than wasm: fewer repetitions there. */
  cpuReps: number;
  backends: ComputeBackend[];
}

export const COMPUTE_FULL: ComputeSetting = { shape: PROTOTYPE_SHAPE, studentBatch: 256, warmup: 2, reps: 10, cpuReps: 3, backends: ['cpu', 'wasm', 'webgpu'] };
export const COMPUTE_QUICK: ComputeSetting = { shape: PROTOTYPE_SHAPE, studentBatch: 256, warmup: 1, reps: 4, cpuReps: 1, backends: ['cpu', 'wasm', 'webgpu'] };

const NON_DISPATCH = new Set(['Reshape', 'Identity', 'Cast']);

async function kernelsOf(rig: StepRig): Promise<KernelCount> {
  const k = await rig.kernels();
  const computing = Object.entries(k.byName).reduce((n, [name, c]) => n + (NON_DISPATCH.has(name) ? 0 : c), 0);
  return { total: k.count, computing, byName: k.byName };
}

/** Why webgpu cannot be measured here, or null with the adapter's description when it can. */
async function webgpuAvailability(): Promise<{ skip: string | null; adapter?: string }> {
  let adapter;
  try {
    adapter = await probeWebgpuAdapter();
  } catch (e) {
    return { skip: `the WebGPU probe failed: ${e instanceof Error ? e.message : String(e)}` };
  }
  if (!adapter) return { skip: 'no WebGPU adapter on this machine (Dawn found no Vulkan device)' };
  const soft = softwareAdapterReason(adapter);
  if (soft) return { skip: `${soft}: not a GPU measurement` };
  return { skip: null, adapter: adapter.description };
}

export async function runCompute(s: ComputeSetting, log: (line: string) => void = () => undefined): Promise<BackendTiming[]> {
  const out: BackendTiming[] = [];
  for (const backend of s.backends) {
    let adapter: string | undefined;
    if (backend === 'webgpu') {
      const a = await webgpuAvailability();
      if (a.skip) {
        out.push({ backend, status: 'skipped', reason: a.skip });
        log(`compute: webgpu skipped: ${a.skip}`);
        continue;
      }
      adapter = a.adapter;
    }
    try {
      await initBackend(backend);
      const reps = backend === 'cpu' ? s.cpuReps : s.reps;
      const batched = metaStepRig(s.shape, 'batched');
      const plain = metaStepRig(s.shape, 'plain-port');
      const student = studentStepRig(s.shape.hidden, s.studentBatch, s.shape.seed);
      try {
        const kb = await kernelsOf(batched);
        const kp = await kernelsOf(plain);
        const lossBatched = await batched.run();
        const lossPlainPort = await plain.run();
        const meta = await msPerStep(batched, Math.max(0, s.warmup - 1), reps);
        const plainMs = await msPerStep(plain, Math.max(0, s.warmup - 1), reps);
        const stud = await msPerStep(student, s.warmup, reps * 3);
        const t: BackendTiming = {
          backend, status: 'measured', ...(adapter ? { adapter } : {}),
          metaStepMs: meta.ms, plainPortMetaStepMs: plainMs.ms, studentStepMs: stud.ms,
          kernels: { batched: kb, plainPort: kp, ratio: kp.total / kb.total, ratioComputing: kp.computing / kb.computing },
          lossBatched, lossPlainPort,
        };
        out.push(t);
        log(`compute: ${backend} meta-step ${meta.ms.toFixed(1)} ms (plain port ${plainMs.ms.toFixed(1)} ms), student step ${stud.ms.toFixed(2)} ms, kernels ${kb.total} vs ${kp.total}`);
      } finally {
        batched.dispose();
        plain.dispose();
        student.dispose();
      }
    } catch (e) {
      out.push({ backend, status: 'failed', reason: e instanceof Error ? e.message : String(e) });
      log(`compute: ${backend} failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  const wasm = out.find((t) => t.backend === 'wasm' && t.status === 'measured');
  for (const t of out) {
    if (!wasm || t.status !== 'measured') continue;
    if (t.metaStepMs !== undefined && wasm.metaStepMs) t.metaStepRatioToWasm = t.metaStepMs / wasm.metaStepMs;
    if (t.studentStepMs !== undefined && wasm.studentStepMs) t.studentStepRatioToWasm = t.studentStepMs / wasm.studentStepMs;
  }
  // Leave the process on wasm (the default CPU backend) for whatever runs next.
  if (tf.getBackend() !== 'wasm') await initBackend('wasm');
  return out;
}
