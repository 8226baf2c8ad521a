/**
 * Choosing and starting the TF.js backend.
 *
 * `auto` prefers, in order: webgpu on a *hardware* adapter, then `tensorflow` (tfjs-node-gpu / tfjs-node,
 * when the user installed them), then wasm. Software adapters (lavapipe, llvmpipe, SwiftShader) are
 * rejected because they are slower than wasm. An explicitly requested backend that cannot start is an
 * InputError: the pipeline file asked for something this machine does not have, and retrying won't help.
 *
 * The optional packages (`webgpu`, `@tensorflow/tfjs-backend-webgpu`, `@tensorflow/tfjs-node[-gpu]`) are
 * loaded with `require` at run time, never imported, so the library builds and runs without them.
 */
import * as path from 'node:path';
import * as os from 'node:os';
import { setThreadsCount, setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import '@tensorflow/tfjs-backend-cpu';
import type { BackendName } from '../spec/types';
import { InputError } from '../util/errors';
import { tf } from './tf';

/** What the probe learned about the best WebGPU adapter. */
export interface GpuAdapterSummary {
  /** The adapter's own flag (`adapter.isFallbackAdapter` or `adapter.info.isFallbackAdapter`). */
  isFallbackAdapter: boolean;
  /** Vendor, architecture, device, description and type joined, e.g. "nvidia hopper NVIDIA H200". */
  description: string;
}

export interface BackendDeps {
  /** Finds a WebGPU adapter (installing `navigator.gpu` when it does); null when there is none. */
  probeWebgpuAdapter?: () => Promise<GpuAdapterSummary | null>;
  /**
   * Loads tfjs-node-gpu or tfjs-node, which registers the `tensorflow` backend; returns the package name
   * loaded, or null when neither is installed or loads.
   */
  loadTensorflow?: () => Promise<string | null>;
  /** Registers the `webgpu` backend (requires `@tensorflow/tfjs-backend-webgpu` after `navigator.gpu` exists). */
  loadWebgpuBackend?: () => Promise<void>;
}

export interface BackendChoice {
  /** The active tfjs backend name. */
  backend: string;
  /** Why it was chosen, for the run log and MLflow tags. */
  reason: string;
}

/** Adapter descriptions that betray a software (CPU) implementation. */
const SOFTWARE_ADAPTER = /llvmpipe|lavapipe|swiftshader|\bcpu\b/i;

/** Why an adapter must not be used under `auto`, or null if it is real hardware. */
export function softwareAdapterReason(adapter: GpuAdapterSummary): string | null {
  if (adapter.isFallbackAdapter) return `the WebGPU adapter (${adapter.description || 'unnamed'}) is a fallback adapter`;
  if (SOFTWARE_ADAPTER.test(adapter.description)) return `the WebGPU adapter (${adapter.description}) is a software renderer`;
  return null;
}

/**
 * `auto` → the fastest backend that works here; any other name → exactly that backend, or InputError.
 * Safe to call again (switches backends); the choice is process-wide, like tfjs's.
 *
 * @example
 * const { backend, reason } = await initBackend(spec.compute.backend);
 * log(`backend ${backend}: ${reason}`);
 */
export async function initBackend(requested: BackendName, deps: BackendDeps = {}): Promise<BackendChoice> {
  const probe = deps.probeWebgpuAdapter ?? probeWebgpuAdapter;
  const loadTf = deps.loadTensorflow ?? loadTensorflow;
  const loadWebgpu = deps.loadWebgpuBackend ?? loadWebgpuBackend;

  switch (requested) {
    case 'cpu':
      await activate('cpu');
      return { backend: 'cpu', reason: 'requested' };
    case 'wasm':
      await activateWasm();
      return { backend: 'wasm', reason: 'requested' };
    case 'tensorflow': {
      const loaded = await loadTf();
      if (!loaded) {
        throw new InputError('backend "tensorflow" requested but neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node loads here');
      }
      await activate('tensorflow');
      return { backend: 'tensorflow', reason: `requested (${loaded})` };
    }
    case 'webgpu': {
      const adapter = await probe();
      if (!adapter) throw new InputError('backend "webgpu" requested but no WebGPU adapter was found (is the optional "webgpu" package installed, with a Vulkan driver?)');
      await loadWebgpuOrExplain(loadWebgpu);
      await activate('webgpu');
      const soft = softwareAdapterReason(adapter);
      return { backend: 'webgpu', reason: soft ? `requested; warning: ${soft}` : `requested (${adapter.description})` };
    }
    case 'auto':
      return autoSelect(probe, loadTf, loadWebgpu);
    default:
      throw new InputError(`unknown backend ${String(requested)}`);
  }
}

async function autoSelect(
  probe: () => Promise<GpuAdapterSummary | null>,
  loadTf: () => Promise<string | null>,
  loadWebgpu: () => Promise<void>,
): Promise<BackendChoice> {
  const skipped: string[] = [];
  const adapter = await probe().catch((e: unknown) => {
    skipped.push(`webgpu probe failed: ${errorText(e)}`);
    return null;
  });
  if (adapter) {
    const soft = softwareAdapterReason(adapter);
    if (soft) {
      skipped.push(soft);
    } else {
      try {
        await loadWebgpuOrExplain(loadWebgpu);
        await activate('webgpu');
        return { backend: 'webgpu', reason: `auto: hardware WebGPU adapter (${adapter.description})` };
      } catch (e) {
        skipped.push(`webgpu failed to start: ${errorText(e)}`);
      }
    }
  } else if (skipped.length === 0) {
    skipped.push('no WebGPU adapter');
  }

  const loaded = await loadTf().catch(() => null);
  if (loaded) {
    try {
      await activate('tensorflow');
      return { backend: 'tensorflow', reason: `auto: ${skipped.join('; ')}; ${loaded} loaded` };
    } catch (e) {
      skipped.push(`${loaded} failed to start: ${errorText(e)}`);
    }
  } else {
    skipped.push('no tfjs-node');
  }

  try {
    await activateWasm();
    return { backend: 'wasm', reason: `auto: ${skipped.join('; ')}` };
  } catch (e) {
    skipped.push(`wasm failed to start: ${errorText(e)}`);
  }
  await activate('cpu');
  return { backend: 'cpu', reason: `auto: ${skipped.join('; ')}` };
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function activate(name: string): Promise<void> {
  let ok = false;
  try {
    ok = await tf.setBackend(name);
  } catch (e) {
    throw new InputError(`backend "${name}" failed to start: ${errorText(e)}`);
  }
  if (!ok || tf.getBackend() !== name) throw new InputError(`backend "${name}" failed to start`);
  await tf.ready();
  if (name === 'cpu') {
    // The cpu backend prints "install tfjs-node to speed things up" on first use; we chose cpu on purpose
    // (tfjs-node cannot install on our machines), so the advice is only noise in worker logs.
    const cpu = tf.backend() as unknown as { firstUse?: boolean };
    if (cpu.firstUse === true) cpu.firstUse = false;
  }
}

let wasmConfigured = false;

async function activateWasm(): Promise<void> {
  if (!wasmConfigured) {
    wasmConfigured = true;
    // Point at the .wasm files by absolute path: the default is relative to the running script, which
    // breaks once the code is bundled (the GPU entry is built with esbuild).
    try {
      setWasmPaths(path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep);
    } catch {
      // keep tfjs's default location
    }
    // A fixed thread count keeps results independent of the machine's core count. (Node has no
    // SharedArrayBuffer threads for this build today, so it is 1 either way; this pins it.)
    setThreadsCount(1);
  }
  await activate('wasm');
}

async function loadWebgpuOrExplain(load: () => Promise<void>): Promise<void> {
  try {
    await load();
  } catch (e) {
    throw new InputError(`a WebGPU adapter exists but the webgpu backend could not be loaded: ${errorText(e)}`);
  }
}

/** Registers the real webgpu backend, unless one is registered already. */
export async function loadWebgpuBackend(): Promise<void> {
  if (tf.findBackendFactory('webgpu')) return;
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- optional peer, loaded only here
  require('@tensorflow/tfjs-backend-webgpu');
  if (!tf.findBackendFactory('webgpu')) throw new Error('@tensorflow/tfjs-backend-webgpu did not register (navigator.gpu missing?)');
}

interface DawnAdapter {
  isFallbackAdapter?: boolean;
  info?: Record<string, unknown>;
  requestAdapterInfo?: () => Promise<Record<string, unknown>>;
}

interface DawnModule {
  create: (flags: string[]) => { requestAdapter: (opts?: object) => Promise<DawnAdapter | null> };
  globals: Record<string, unknown>;
}

/**
 * The real probe: loads the optional `webgpu` package (Dawn for Node), installs `navigator.gpu` and the
 * WebGPU globals (tfjs-backend-webgpu registers itself only if `navigator.gpu` exists when it is first
 * required), and asks for a high-performance adapter. A missing package or driver means "no adapter".
 */
export function probeWebgpuAdapter(): Promise<GpuAdapterSummary | null> {
  // Once per thread: every job of a worker calls initBackend('auto'), and a second Dawn instance would
  // only re-learn the same answer (≈1 s) and replace the navigator.gpu the webgpu backend already uses.
  probed ??= probeWebgpuAdapterUncached().catch((e: unknown) => {
    probed = undefined;
    throw e;
  });
  return probed;
}

let probed: Promise<GpuAdapterSummary | null> | undefined;

async function probeWebgpuAdapterUncached(): Promise<GpuAdapterSummary | null> {
  let dawn: DawnModule;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- optional peer
    dawn = require('webgpu') as DawnModule;
  } catch {
    return null;
  }
  // Dawn's Vulkan loader wants a runtime dir; headless workers often have none.
  process.env['XDG_RUNTIME_DIR'] ??= os.tmpdir();
  const gpu = dawn.create([]);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return null;
  Object.assign(globalThis, dawn.globals);
  const g = globalThis as unknown as { navigator?: { gpu?: unknown } };
  if (g.navigator) {
    Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
  } else {
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  }
  const info = adapter.info ?? (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  const description = ['vendor', 'architecture', 'device', 'description', 'type', 'adapterType', 'backendType']
    .map((k) => info[k])
    .filter((v): v is string => typeof v === 'string' && v.length > 0)
    .join(' ');
  return {
    isFallbackAdapter: adapter.isFallbackAdapter === true || info['isFallbackAdapter'] === true,
    description,
  };
}

/** The real loader: tfjs-node-gpu first (GPU), then tfjs-node; null if neither loads. */
export async function loadTensorflow(): Promise<string | null> {
  for (const name of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- optional peer
      require(name);
      if (tf.findBackendFactory('tensorflow')) return name;
    } catch {
      // not installed, or its native library failed to load: try the next one
    }
  }
  return null;
}
