import assert from 'node:assert/strict';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type { BackendDeps, GpuAdapterSummary } from '../src/ml/backend';
import { initBackend, loadTensorflow, softwareAdapterReason } from '../src/ml/backend';
import { tf } from '../src/ml/tf';
import { InputError } from '../src/util/errors';

const H200: GpuAdapterSummary = { isFallbackAdapter: false, description: 'nvidia hopper NVIDIA H200' };
const noGpu = async (): Promise<GpuAdapterSummary | null> => null;
const noTf = async (): Promise<string | null> => null;

/** Stand-ins for backends this machine lacks: a cpu backend registered under their names. */
function fakeBackend(name: string): () => Promise<void> {
  return async () => {
    if (!tf.findBackendFactory(name)) tf.registerBackend(name, () => new MathBackendCPU(), -1);
  };
}
const fakeTf = (pkg = '@tensorflow/tfjs-node'): (() => Promise<string>) => async () => {
  await fakeBackend('tensorflow')();
  return pkg;
};

function isInstalled(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

describe('ml backend selection', function () {
  afterEach(async () => {
    // Leave the process on cpu with no fake backends for whatever test runs next.
    await initBackend('cpu');
    for (const name of ['webgpu', 'tensorflow']) {
      if (tf.findBackendFactory(name) && !isInstalled(name === 'webgpu' ? '@tensorflow/tfjs-backend-webgpu' : '@tensorflow/tfjs-node')) {
        tf.removeBackend(name);
      }
    }
  });

  it('cpu and wasm start when asked for by name', async () => {
    assert.deepEqual(await initBackend('cpu'), { backend: 'cpu', reason: 'requested' });
    assert.equal(tf.getBackend(), 'cpu');
    assert.deepEqual(await initBackend('wasm'), { backend: 'wasm', reason: 'requested' });
    assert.equal(tf.getBackend(), 'wasm');
    const sum = tf.add(tf.scalar(1), tf.scalar(2));
    assert.equal((await sum.data())[0], 3);
    sum.dispose();
  });

  it('auto without a GPU adapter or tfjs-node picks wasm and says why', async () => {
    const choice = await initBackend('auto', { probeWebgpuAdapter: noGpu, loadTensorflow: noTf });
    assert.equal(choice.backend, 'wasm');
    assert.match(choice.reason, /no WebGPU adapter/);
    assert.match(choice.reason, /no tfjs-node/);
  });

  it('auto with a hardware adapter picks webgpu', async () => {
    const deps: BackendDeps = { probeWebgpuAdapter: async () => H200, loadTensorflow: fakeTf(), loadWebgpuBackend: fakeBackend('webgpu') };
    const choice = await initBackend('auto', deps);
    assert.equal(choice.backend, 'webgpu');
    assert.equal(tf.getBackend(), 'webgpu');
    assert.match(choice.reason, /H200/);
  });

  it('auto rejects a fallback adapter and takes tensorflow when it loads', async () => {
    const fallback = { isFallbackAdapter: true, description: 'some adapter' };
    const choice = await initBackend('auto', { probeWebgpuAdapter: async () => fallback, loadTensorflow: fakeTf('@tensorflow/tfjs-node-gpu'), loadWebgpuBackend: fakeBackend('webgpu') });
    assert.equal(choice.backend, 'tensorflow');
    assert.match(choice.reason, /fallback adapter/);
    assert.match(choice.reason, /tfjs-node-gpu loaded/);
  });

  it('auto rejects software renderers named in the adapter info, then falls back to wasm', async () => {
    const lavapipe = { isFallbackAdapter: false, description: 'mesa llvmpipe (LLVM 15.0.7, 256 bits)' };
    const choice = await initBackend('auto', { probeWebgpuAdapter: async () => lavapipe, loadTensorflow: noTf, loadWebgpuBackend: fakeBackend('webgpu') });
    assert.equal(choice.backend, 'wasm');
    assert.match(choice.reason, /software renderer/);
  });

  it('recognises software adapters by name, and not real GPUs', () => {
    for (const d of ['llvmpipe', 'Mesa lavapipe', 'Google SwiftShader', 'cpu', 'Vulkan CPU device']) {
      assert.ok(softwareAdapterReason({ isFallbackAdapter: false, description: d }), d);
    }
    for (const d of ['nvidia hopper NVIDIA H200', 'AMD Radeon Pro', 'Apple M2 Max', 'Intel(R) UHD Graphics 630 (CPUSET)']) {
      assert.equal(softwareAdapterReason({ isFallbackAdapter: false, description: d }), null, d);
    }
  });

  it('auto survives a probe that throws and a webgpu backend that fails to load', async () => {
    const throwing = await initBackend('auto', {
      probeWebgpuAdapter: async () => {
        throw new Error('vulkan exploded');
      },
      loadTensorflow: noTf,
    });
    assert.equal(throwing.backend, 'wasm');
    assert.match(throwing.reason, /probe failed: vulkan exploded/);

    const noPackage = await initBackend('auto', {
      probeWebgpuAdapter: async () => H200,
      loadTensorflow: noTf,
      loadWebgpuBackend: async () => {
        throw new Error("Cannot find module '@tensorflow/tfjs-backend-webgpu'");
      },
    });
    assert.equal(noPackage.backend, 'wasm');
    assert.match(noPackage.reason, /webgpu failed to start/);
  });

  it('explicit webgpu without an adapter, or without the backend package, is an InputError', async () => {
    await assert.rejects(initBackend('webgpu', { probeWebgpuAdapter: noGpu }), (e: unknown) => e instanceof InputError && /no WebGPU adapter/.test(e.message));
    await assert.rejects(
      initBackend('webgpu', {
        probeWebgpuAdapter: async () => H200,
        loadWebgpuBackend: async () => {
          throw new Error('not installed');
        },
      }),
      (e: unknown) => e instanceof InputError && /could not be loaded/.test(e.message),
    );
  });

  it('explicit webgpu on a software adapter runs but warns', async () => {
    const choice = await initBackend('webgpu', {
      probeWebgpuAdapter: async () => ({ isFallbackAdapter: true, description: 'SwiftShader' }),
      loadWebgpuBackend: fakeBackend('webgpu'),
    });
    assert.equal(choice.backend, 'webgpu');
    assert.match(choice.reason, /warning/);
  });

  it('explicit tensorflow: InputError when tfjs-node is missing, active when it loads', async () => {
    await assert.rejects(initBackend('tensorflow', { loadTensorflow: noTf }), (e: unknown) => e instanceof InputError && /tfjs-node/.test(e.message));
    const choice = await initBackend('tensorflow', { loadTensorflow: fakeTf() });
    assert.deepEqual(choice, { backend: 'tensorflow', reason: 'requested (@tensorflow/tfjs-node)' });
  });

  it('an unknown name is an InputError', async () => {
    await assert.rejects(initBackend('tpu' as never), InputError);
  });

  // webgpu is a dependency now (its real probe is tested in bench-gpu-path.test.ts); tfjs-node stays an
  // optional peer that cannot be installed here, so its real loader must answer null, not throw.
  it('the real tensorflow loader reports nothing when tfjs-node is not installed, and loads it when it is', async () => {
    const installed = isInstalled('@tensorflow/tfjs-node') || isInstalled('@tensorflow/tfjs-node-gpu');
    const loaded = await loadTensorflow();
    if (installed) assert.match(String(loaded), /^@tensorflow\/tfjs-node/);
    else assert.equal(loaded, null);
  });
});
