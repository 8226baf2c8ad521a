import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend, probeWebgpuAdapter, softwareAdapterReason } from '../src/ml/backend';

const root = path.resolve(__dirname, '../..');

describe('bench: the GPU path', function () {
  this.timeout(600_000);

  it('ships webgpu (Dawn) and tfjs-backend-webgpu as dependencies that load without install scripts', () => {
    const pkg = require(path.join(root, 'package.json')) as { dependencies: Record<string, string> };
    assert.match(pkg.dependencies['webgpu'] ?? '', /^\d+\.\d+\.\d+$/, 'webgpu pinned');
    assert.match(pkg.dependencies['@tensorflow/tfjs-backend-webgpu'] ?? '', /^\d+\.\d+\.\d+$/, 'tfjs-backend-webgpu pinned');
    assert.ok(existsSync(path.join(root, 'node_modules/webgpu/dist/linux-x64/dawn.node')), 'dawn.node for linux-x64 is in the package itself');
    const dawn = require('webgpu') as { create?: unknown; globals?: unknown };
    assert.equal(typeof dawn.create, 'function');
    assert.equal(typeof dawn.globals, 'object');
  });

  it('auto uses webgpu exactly when a hardware adapter exists, and probes once per thread', async () => {
    const first = probeWebgpuAdapter();
    assert.equal(probeWebgpuAdapter(), first, 'the probe is cached');
    const adapter = await first;
    const choice = await initBackend('auto');
    if (adapter && !softwareAdapterReason(adapter)) assert.equal(choice.backend, 'webgpu', choice.reason);
    else assert.notEqual(choice.backend, 'webgpu', choice.reason);
    await initBackend('wasm');
  });

  it('scripts/gpu-bundle.sh builds one self-contained ESM bundle that runs the compute bench on CPU (wasm) outside the repository', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'wf-gpu-bundle-test-'));
    try {
      const out = path.join(dir, 'bundle');
      execFileSync('bash', [path.join(root, 'scripts/gpu-bundle.sh'), '--out', out, '--no-debs', '--no-node'], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
      for (const f of ['gpu-bench.mjs', 'run.sh', 'tfjs-backend-wasm.wasm', 'dist/linux-x64/dawn.node.xz', 'torch_meta_step.py']) assert.ok(existsSync(path.join(out, f)), `${f} missing`);
      // /tmp has no node_modules above it: everything the entry needs must be in the bundle folder.
      const stdout = execFileSync(path.join(out, 'run.sh'), ['--backends', 'wasm,webgpu', '--reps', '1', '--teachers', '2', '--batch', '8'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      const result = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as { compute: Array<{ backend: string; status: string; metaStepMs?: number; reason?: string; kernels?: { ratio: number } }> };
      const wasm = result.compute.find((c) => c.backend === 'wasm');
      assert.equal(wasm?.status, 'measured', JSON.stringify(wasm));
      assert.ok((wasm?.metaStepMs ?? 0) > 0 && (wasm?.kernels?.ratio ?? 0) > 1);
      const gpu = result.compute.find((c) => c.backend === 'webgpu');
      assert.ok(gpu?.status === 'measured' || (gpu?.status === 'skipped' && (gpu.reason ?? '').length > 0), JSON.stringify(gpu));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
