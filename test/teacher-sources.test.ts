import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ArchitectureSpec } from '../src/spec/types';
import { serializeSafetensorsTeacher, writeSafetensorsTeacher } from '../src/ml/formats/torch-mlp';
import type { MlpParams } from '../src/ml/mlp';
import { initMlp, serializeParams } from '../src/ml/mlp';
import { toTfjsModel, writeTfjsModelDir } from '../src/ml/tfjs-format';
import {
  parseTeacherSource,
  resolveTeacherSource,
  TeacherDownloadError,
  type TeacherSourceOptions,
} from '../src/teachers/sources';
import { MlflowClient } from '../src/tracking/mlflow';
import { AccessError, InputError } from '../src/util/errors';
import { sharedMlflow } from './helpers/mlflow';

const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 12, hidden: [8], outputSize: 4, activation: 'relu' };

function sameParams(a: MlpParams, b: MlpParams): void {
  assert.deepEqual(serializeParams(a), serializeParams(b));
}

/** Asserts `promise` rejects with an error of `type` whose message matches `pattern`. */
async function rejectsWith(promise: Promise<unknown>, type: new (...args: never[]) => Error, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof type, `expected ${type.name}, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

/**
 * A port whose connects hang: a socket that listens with backlog 0 and never accepts (Node's servers always
 * accept, hence python3, which the project's MLflow tooling needs anyway), its queue filled by idle
 * connections, so the kernel drops further SYNs.
 */
async function unacceptingListener(): Promise<{ port: number; close: () => void }> {
  const py = spawn('python3', ['-c', 'import socket, sys\ns = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)\nprint(s.getsockname()[1], flush=True)\nsys.stdin.read()'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    py.once('error', reject);
    py.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
  });
  const fillers: net.Socket[] = [];
  const close = (): void => {
    for (const s of fillers) s.destroy();
    py.stdin.end();
    py.kill();
  };
  for (let i = 0; i < 16; i++) {
    const socket = net.connect(port, '127.0.0.1');
    fillers.push(socket);
    socket.on('error', () => undefined);
    const connected = await new Promise<boolean>((resolve) => {
      socket.once('connect', () => resolve(true));
      setTimeout(() => resolve(false), 300);
    });
    if (!connected) return { port, close };
  }
  close();
  throw new Error('could not fill the listen queue of the unaccepting socket');
}

describe('teacher sources', function () {
  this.timeout(180_000);
  let tmp: string;
  let root: string;
  let outside: string;
  let cacheDir: string;
  const teacher = initMlp(ARCH, 5);
  const other = initMlp(ARCH, 6);

  const opts = (extra: Partial<TeacherSourceOptions> = {}): TeacherSourceOptions => ({
    baseDir: root,
    allowedRoots: [root],
    cacheDir,
    expected: ARCH,
    ...extra,
  });
  /** The cache folder's entries: downloads land there complete, or not at all. */
  const cacheEntries = (): string[] => (fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir) : []);

  beforeEach(async () => {
    tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'wf-sources-')));
    root = path.join(tmp, 'root');
    outside = path.join(tmp, 'outside');
    cacheDir = path.join(tmp, 'cache');
    fs.mkdirSync(path.join(root, 'teachers'), { recursive: true });
    fs.mkdirSync(outside);
    await writeSafetensorsTeacher(path.join(root, 'teachers', 't0.safetensors'), teacher);
    await writeTfjsModelDir(path.join(root, 'teachers', 'tfjs'), other);
    await writeSafetensorsTeacher(path.join(outside, 'secret.safetensors'), other);
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  describe('parsing', () => {
    it('tells paths, URLs and registry references apart', () => {
      assert.deepEqual(parseTeacherSource('teachers/t0.safetensors'), { kind: 'path', path: 'teachers/t0.safetensors' });
      assert.equal(parseTeacherSource('HTTPS://example.org/m.safetensors').kind, 'url');
      assert.deepEqual(parseTeacherSource('models:/mnist-student/12'), { kind: 'mlflow', name: 'mnist-student', version: '12' });
      assert.deepEqual(parseTeacherSource('models:/mnist-student@champion'), { kind: 'mlflow', name: 'mnist-student', alias: 'champion' });
    });

    for (const source of ['file:///etc/passwd', 'ftp://example.org/m.safetensors', 'data:application/octet-stream;base64,AAAA', 's3://bucket/m.safetensors', 'runs:/abc/student', 'javascript:alert(1)']) {
      it(`refuses the scheme of ${source.slice(0, 30)}`, async () => {
        await rejectsWith(resolveTeacherSource(source, opts()), AccessError, /uses the scheme [a-z0-9]+:, which is not allowed; use a path .* http:\/\/ or https:\/\/ URL, or models:\//);
        assert.deepEqual(cacheEntries(), []);
      });
    }

    it('refuses credentials in URLs and malformed registry references', async () => {
      await rejectsWith(resolveTeacherSource('https://user:pw@example.org/m.safetensors', opts()), AccessError, /credentials/);
      await rejectsWith(resolveTeacherSource('models:/only-a-name', opts()), InputError, /has no version/);
      await rejectsWith(resolveTeacherSource('models:/m/Production', opts()), InputError, /not a version number/);
      await rejectsWith(resolveTeacherSource('models://m/1', opts()), InputError, /not a registry reference/);
      await rejectsWith(resolveTeacherSource('', opts()), InputError, /empty teacher source/);
    });
  });

  describe('paths', () => {
    it('reads a .safetensors file, a model.json, and folders holding either', async () => {
      const a = await resolveTeacherSource('teachers/t0.safetensors', opts());
      assert.equal(a.kind, 'path');
      assert.equal(a.format, 'safetensors');
      assert.equal(a.file, path.join(root, 'teachers', 't0.safetensors'));
      sameParams(a.params, teacher);
      sameParams((await resolveTeacherSource('teachers/tfjs/model.json', opts())).params, other);
      sameParams((await resolveTeacherSource(path.join(root, 'teachers', 'tfjs'), opts())).params, other);
      fs.mkdirSync(path.join(root, 'single'));
      fs.copyFileSync(path.join(root, 'teachers', 't0.safetensors'), path.join(root, 'single', 'weights.safetensors'));
      sameParams((await resolveTeacherSource('single', opts())).params, teacher);
      // Inner `..` that stays inside the root is fine.
      sameParams((await resolveTeacherSource('teachers/../teachers/t0.safetensors', opts())).params, teacher);
      assert.deepEqual(cacheEntries(), [], 'local files are read in place');
    });

    it('refuses ../ traversal, absolute paths outside the roots, and links out of them', async () => {
      await rejectsWith(resolveTeacherSource('../outside/secret.safetensors', opts()), AccessError, /outside the allowed roots/);
      await rejectsWith(resolveTeacherSource('teachers/../../outside/secret.safetensors', opts()), AccessError, /outside the allowed roots/);
      await rejectsWith(resolveTeacherSource(path.join(outside, 'secret.safetensors'), opts()), AccessError, /outside the allowed roots/);
      fs.symlinkSync(path.join(outside, 'secret.safetensors'), path.join(root, 'teachers', 'link.safetensors'));
      await rejectsWith(resolveTeacherSource('teachers/link.safetensors', opts()), AccessError, /outside the allowed roots/);
      fs.symlinkSync(outside, path.join(root, 'linked-dir'));
      await rejectsWith(resolveTeacherSource('linked-dir/secret.safetensors', opts()), AccessError, /outside the allowed roots/);
      // A model.json inside the root whose weights file links out of it.
      const dir = path.join(root, 'sneaky');
      await writeTfjsModelDir(dir, other);
      fs.renameSync(path.join(dir, 'weights.bin'), path.join(outside, 'weights.bin'));
      fs.symlinkSync(path.join(outside, 'weights.bin'), path.join(dir, 'weights.bin'));
      await rejectsWith(resolveTeacherSource('sneaky/model.json', opts()), AccessError, /outside the allowed roots/);
    });

    it('refuses what is not a teacher, and a teacher of another architecture', async () => {
      fs.writeFileSync(path.join(root, 'notes.txt'), 'hello');
      await rejectsWith(resolveTeacherSource('notes.txt', opts()), InputError, /neither a \.safetensors file nor a TF\.js model\.json/);
      await rejectsWith(resolveTeacherSource('missing.safetensors', opts()), InputError, /cannot read/);
      fs.mkdirSync(path.join(root, 'empty'));
      await rejectsWith(resolveTeacherSource('empty', opts()), InputError, /neither a model\.json nor a \.safetensors/);
      await rejectsWith(resolveTeacherSource('teachers/t0.safetensors', opts({ expected: { ...ARCH, hidden: [9] } })), InputError, /mlp:12-8-4:relu but the architecture is mlp:12-9-4:relu/);
    });
  });

  describe('http(s) URLs', () => {
    let server: http.Server;
    let base: string;
    const safetensorsBytes = Buffer.from(serializeSafetensorsTeacher(teacher));
    const tfjs = toTfjsModel(other);
    const LIMIT = 4096;

    before(async () => {
      server = http.createServer((req, res) => {
        const url = req.url ?? '/';
        if (url === '/t0.safetensors' || url === '/download?id=7') {
          res.writeHead(200, { 'Content-Length': safetensorsBytes.length, 'Content-Type': 'application/octet-stream' });
          res.end(safetensorsBytes);
        } else if (url === '/models/a/model.json') {
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify(tfjs.modelJson));
        } else if (url === '/models/a/weights.bin') {
          res.writeHead(200); // chunked: no Content-Length
          res.end(Buffer.from(tfjs.weightsBin));
        } else if (url === '/redirect') {
          res.writeHead(302, { Location: '/t0.safetensors' });
          res.end();
        } else if (url === '/redirect-to-file') {
          res.writeHead(302, { Location: 'file:///etc/passwd' });
          res.end();
        } else if (url === '/announces-too-much.safetensors') {
          // Headers only; the body never comes. The client must refuse on the header alone.
          res.writeHead(200, { 'Content-Length': String(LIMIT * 1000) });
          res.flushHeaders();
        } else if (url === '/streams-too-much.safetensors') {
          res.writeHead(200);
          const chunk = Buffer.alloc(1024, 7);
          const timer = setInterval(() => res.write(chunk), 1);
          res.on('close', () => clearInterval(timer));
        } else if (url === '/stalls.safetensors') {
          // Never answers.
        } else if (url === '/stalls-mid-body.safetensors') {
          res.writeHead(200, { 'Content-Length': safetensorsBytes.length });
          res.write(safetensorsBytes.subarray(0, 16));
        } else if (url === '/cut.safetensors') {
          res.writeHead(200, { 'Content-Length': safetensorsBytes.length });
          res.write(safetensorsBytes.subarray(0, 16), () => res.destroy());
        } else if (url === '/broken.safetensors') {
          res.writeHead(200, { 'Content-Length': 16 });
          res.end(Buffer.alloc(16, 1));
        } else if (url === '/busy.safetensors') {
          res.writeHead(503);
          res.end('try later');
        } else {
          res.writeHead(404);
          res.end('no such model');
        }
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    it('downloads a .safetensors teacher into a content-addressed cache folder', async () => {
      const r = await resolveTeacherSource(`${base}/t0.safetensors`, opts());
      assert.equal(r.kind, 'url');
      assert.equal(r.format, 'safetensors');
      sameParams(r.params, teacher);
      assert.match(r.sha256 ?? '', /^[0-9a-f]{64}$/);
      assert.equal(r.file, path.join(cacheDir, r.sha256 ?? '', 'model.safetensors'));
      assert.deepEqual(cacheEntries(), [r.sha256]);
      // The same bytes again (through a redirect and an extension-less URL, so sniffed): the same folder.
      const again = await resolveTeacherSource(`${base}/redirect`, opts());
      const sniffed = await resolveTeacherSource(`${base}/download?id=7`, opts());
      assert.equal(again.sha256, r.sha256);
      assert.equal(sniffed.sha256, r.sha256);
      assert.deepEqual(cacheEntries(), [r.sha256]);
    });

    it('downloads a TF.js model.json with the weight files its manifest names', async () => {
      const r = await resolveTeacherSource(`${base}/models/a/model.json`, opts());
      assert.equal(r.format, 'tfjs');
      sameParams(r.params, other);
      assert.deepEqual(fs.readdirSync(path.dirname(r.file)).sort(), ['model.json', 'weights.bin']);
    });

    it('refuses a body announced (Content-Length) or streamed beyond the limit, leaving nothing behind', async () => {
      const small = opts({ maxBytes: LIMIT });
      const t0 = Date.now();
      await rejectsWith(resolveTeacherSource(`${base}/announces-too-much.safetensors`, small), InputError, /announces 4096000 bytes \(Content-Length\), more than the 4096 left of the 4096-byte limit/);
      assert.ok(Date.now() - t0 < 5000, 'refused on the header, without waiting for a body');
      assert.deepEqual(cacheEntries(), []);
      await rejectsWith(resolveTeacherSource(`${base}/streams-too-much.safetensors`, small), InputError, /sent more than the 4096 bytes left .*; cut off/);
      assert.deepEqual(cacheEntries(), []);
      // The weights of a model.json count against the same limit.
      await rejectsWith(resolveTeacherSource(`${base}/models/a/model.json`, opts({ maxBytes: JSON.stringify(tfjs.modelJson).length + 10 })), InputError, /limit/);
      assert.deepEqual(cacheEntries(), []);
    });

    it('refuses a server that does not answer in time, leaving nothing behind', async () => {
      await rejectsWith(resolveTeacherSource(`${base}/stalls.safetensors`, opts({ timeoutMs: 300 })), InputError, /took longer than 300 ms/);
      assert.deepEqual(cacheEntries(), []);
      await rejectsWith(resolveTeacherSource(`${base}/stalls-mid-body.safetensors`, opts({ timeoutMs: 300 })), InputError, /took longer than 300 ms/);
      assert.deepEqual(cacheEntries(), []);
    });

    it('refuses 404s, bad redirects and invalid files; retryably fails on 5xx and cut transfers', async () => {
      await rejectsWith(resolveTeacherSource(`${base}/nothing-here.safetensors`, opts()), InputError, /answered 404/);
      await rejectsWith(resolveTeacherSource(`${base}/redirect-to-file`, opts()), AccessError, /file: URLs are not allowed/);
      await rejectsWith(resolveTeacherSource(`${base}/redirect`, opts({ maxRedirects: 0 })), InputError, /more than 0 redirects/);
      await rejectsWith(resolveTeacherSource(`${base}/broken.safetensors`, opts()), InputError, /exceeds the 100000000-byte limit/);
      await rejectsWith(resolveTeacherSource(`${base}/t0.safetensors`, opts({ expected: { ...ARCH, outputSize: 5 } })), InputError, /architecture is mlp:12-8-5/);
      // TeacherDownloadError is not an InputError: the workflow retries it.
      await rejectsWith(resolveTeacherSource(`${base}/busy.safetensors`, opts()), TeacherDownloadError, /answered 503/);
      await rejectsWith(resolveTeacherSource(`${base}/cut.safetensors`, opts()), TeacherDownloadError, /broke off|sent 16 of the/);
      // Files that downloaded completely but failed validation are not kept either.
      assert.deepEqual(cacheEntries(), []);
    });

    it('refuses a connection that cannot be made in time, leaving nothing behind', async () => {
      const listener = await unacceptingListener();
      try {
        await rejectsWith(
          resolveTeacherSource(`http://127.0.0.1:${listener.port}/t.safetensors`, opts({ connectTimeoutMs: 300 })),
          InputError,
          new RegExp(`could not connect to 127\\.0\\.0\\.1:${listener.port} within 300 ms`),
        );
        assert.deepEqual(cacheEntries(), []);
      } finally {
        listener.close();
      }
    });
  });

  describe('models:/ from the MLflow registry', () => {
    let client: MlflowClient;
    let experimentId: string;

    before(async () => {
      const shared = await sharedMlflow();
      client = new MlflowClient(shared.url, { retry: { attempts: 2, initialDelayMs: 1, maxDelayMs: 5 } });
      experimentId = await client.getOrCreateExperiment(`wf-teacher-sources-${randomUUID().slice(0, 8)}`);
    });

    it('reads back a student registered as the pipeline registers it (TF.js under <run>/student)', async () => {
      const run = await client.createRun({ experimentId, runName: 'pipeline' });
      const runId = run.info.run_id;
      // As activities/tracking.ts finishPipelineRun does.
      const { modelJson, weightsBin } = toTfjsModel(teacher);
      await client.logArtifact(runId, 'student/weights.bin', weightsBin);
      await client.logArtifact(runId, 'student/model.json', JSON.stringify(modelJson));
      const name = `student-${randomUUID().slice(0, 8)}`;
      await client.createRegisteredModel(name);
      const { version } = await client.findOrCreateModelVersion({ name, source: `${run.info.artifact_uri}/student`, runId });
      await client.setRegisteredModelAlias(name, 'champion', version.version);

      const r = await resolveTeacherSource(`models:/${name}/${version.version}`, opts({ mlflow: client }));
      assert.equal(r.kind, 'mlflow');
      assert.equal(r.format, 'tfjs');
      sameParams(r.params, teacher);
      assert.deepEqual(fs.readdirSync(path.dirname(r.file)).sort(), ['model.json', 'weights.bin']);
      const byAlias = await resolveTeacherSource(`models:/${name}@champion`, opts({ mlflow: client }));
      assert.equal(byAlias.sha256, r.sha256);
      assert.deepEqual(cacheEntries(), [r.sha256]);
    });

    it('reads a .safetensors teacher registered from a run (folder or file source, runs:/ too)', async () => {
      const run = await client.createRun({ experimentId, runName: 'torch-teacher' });
      const runId = run.info.run_id;
      await client.logArtifact(runId, 'teacher/model.safetensors', serializeSafetensorsTeacher(other));
      const name = `teacher-${randomUUID().slice(0, 8)}`;
      await client.createRegisteredModel(name);
      const folder = await client.createModelVersion({ name, source: `${run.info.artifact_uri}/teacher`, runId });
      const file = await client.createModelVersion({ name, source: `runs:/${runId}/teacher/model.safetensors`, runId });
      for (const v of [folder, file]) {
        const r = await resolveTeacherSource(`models:/${name}/${v.version}`, opts({ mlflow: client }));
        assert.equal(r.format, 'safetensors');
        sameParams(r.params, other);
      }
      await rejectsWith(resolveTeacherSource(`models:/${name}/${file.version}`, opts({ mlflow: client, maxBytes: 100 })), InputError, /more than the 100 left of the 100-byte limit/);
    });

    it('refuses unknown models and versions, a version without model files, and a missing client', async () => {
      const missing = `missing-${randomUUID().slice(0, 8)}`;
      await rejectsWith(resolveTeacherSource(`models:/${missing}/1`, opts({ mlflow: client })), InputError, new RegExp(`MLflow has no model ${missing} version 1`));
      await rejectsWith(resolveTeacherSource(`models:/${missing}@champion`, opts({ mlflow: client })), InputError, /MLflow has no model .* alias @champion/);
      const run = await client.createRun({ experimentId, runName: 'empty' });
      await client.logArtifact(run.info.run_id, 'other/readme.txt', 'not a model');
      const name = `empty-${randomUUID().slice(0, 8)}`;
      await client.createRegisteredModel(name);
      const v = await client.createModelVersion({ name, source: `${run.info.artifact_uri}/other`, runId: run.info.run_id });
      await rejectsWith(resolveTeacherSource(`models:/${name}/${v.version}`, opts({ mlflow: client })), InputError, /neither a model\.json nor a \.safetensors file \(readme\.txt\)/);
      await rejectsWith(resolveTeacherSource(`models:/${name}/${v.version}`, opts()), InputError, /no MLflow server is configured/);
      assert.deepEqual(cacheEntries(), []);
    });
  });
});
