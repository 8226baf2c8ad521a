import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InputError } from '../src/util/errors';
import {
  MlflowClient, MlflowRequestError, MlflowUnavailableError, PARENT_RUN_ID_TAG, DATASET_CONTEXT_TAG,
  latestMetricsOf, paramsOf, tagsOf, tagsFilter, type AttemptInfo, type MlflowClientOptions,
} from '../src/tracking/mlflow';
import { freePort, isPortFree } from '../src/stack/ports';
import { startServer, ServerStartError } from '../src/stack/process';
import { mlflowServerArgs } from '../src/stack/mlflow-server';
import { sharedMlflow } from './helpers/mlflow';

const FAST_RETRY = { attempts: 3, initialDelayMs: 1, maxDelayMs: 5 };

/** A client whose attempts are recorded, per endpoint. */
function counting(url: string, opts: MlflowClientOptions = {}): { client: MlflowClient; attempts: AttemptInfo[] } {
  const attempts: AttemptInfo[] = [];
  const client = new MlflowClient(url, { retry: FAST_RETRY, ...opts, onAttempt: (a) => attempts.push(a) });
  return { client, attempts };
}

const uniq = (prefix: string): string => `${prefix}-${randomUUID().slice(0, 8)}`;

describe('MLflow client against a real tracking server', function () {
  this.timeout(180_000);
  let url: string;
  let client: MlflowClient;
  let experimentId: string;

  before(async function () {
    const t0 = Date.now();
    const shared = await sharedMlflow();
    url = shared.url;
    if (shared.server) {
      console.log(`      (mlflow server ready in ${shared.server.startupMs} ms, ${Date.now() - t0} ms with venv check, at ${url})`);
    }
    client = new MlflowClient(url, { retry: FAST_RETRY });
    experimentId = await client.getOrCreateExperiment(uniq('wf-test'));
  });

  describe('experiments', () => {
    it('two concurrent getOrCreateExperiment calls agree on one id', async () => {
      const name = uniq('race');
      const clients = Array.from({ length: 4 }, () => new MlflowClient(url, { retry: FAST_RETRY }));
      const ids = await Promise.all(clients.map((c) => c.getOrCreateExperiment(name)));
      assert.equal(new Set(ids).size, 1, `ids: ${ids.join(', ')}`);
      const exp = await client.getExperimentByName(name);
      assert.equal(exp?.experiment_id, ids[0]);
      assert.equal(await client.getOrCreateExperiment(name), ids[0]);
    });

    it('getExperimentByName is undefined for an unknown name', async () => {
      assert.equal(await client.getExperimentByName(uniq('none')), undefined);
    });
  });

  describe('runs', () => {
    it('creates a parent and a nested run, updates and searches them', async () => {
      const parent = await client.createRun({ experimentId, runName: 'pipeline', tags: { 'weightformer.kind': 'pipeline' } });
      assert.equal(parent.info.status, 'RUNNING');
      assert.match(parent.info.artifact_uri, /^mlflow-artifacts:\//);
      const child = await client.createRun({
        experimentId, runName: 'zoo', tags: { 'weightformer.stage': 'zoo' }, parentRunId: parent.info.run_id,
      });
      const got = await client.getRun(child.info.run_id);
      assert.equal(tagsOf(got)[PARENT_RUN_ID_TAG], parent.info.run_id);
      assert.equal(got.info.run_name, 'zoo');

      const nested = await client.searchRuns({ experimentIds: [experimentId], filter: tagsFilter({ [PARENT_RUN_ID_TAG]: parent.info.run_id }) });
      assert.deepEqual(nested.map((r) => r.info.run_id), [child.info.run_id]);

      const info = await client.updateRun(child.info.run_id, 'FINISHED');
      assert.equal(info.status, 'FINISHED');
      assert.ok(info.end_time !== undefined && info.end_time > 0);
    });

    it('findOrCreateRunByTags reuses the nested run of a retried stage', async () => {
      const parent = await client.createRun({ experimentId, runName: 'pipeline' });
      const args = { experimentId, runName: 'weightformer', tags: { 'weightformer.stage': 'weightformer', 'weightformer.workflow_id': "wf-'quoted'" }, parentRunId: parent.info.run_id };
      const first = await client.findOrCreateRunByTags(args);
      assert.equal(first.created, true);
      await client.updateRun(first.run.info.run_id, 'FAILED'); // the attempt crashed
      const retry = await client.findOrCreateRunByTags(args);
      assert.equal(retry.created, false);
      assert.equal(retry.run.info.run_id, first.run.info.run_id);
      assert.equal(retry.run.info.status, 'RUNNING');
      const all = await client.searchRuns({ experimentIds: [experimentId], filter: tagsFilter({ [PARENT_RUN_ID_TAG]: parent.info.run_id }) });
      assert.equal(all.length, 1);
    });

    it('concurrent findOrCreateRunByTags calls converge on one run', async () => {
      const tags = { 'weightformer.stage': 'evaluate', 'weightformer.workflow_id': uniq('wf') };
      const results = await Promise.all([0, 1, 2].map(() => new MlflowClient(url, { retry: FAST_RETRY })
        .findOrCreateRunByTags({ experimentId, runName: 'evaluate', tags })));
      assert.equal(new Set(results.map((r) => r.run.info.run_id)).size, 1);
      const active = await client.searchRuns({ experimentIds: [experimentId], filter: tagsFilter(tags) });
      assert.equal(active.length, 1);
    });
  });

  describe('metrics, params, tags', () => {
    it('logs metrics with steps and reads the history back', async () => {
      const run = await client.createRun({ experimentId, runName: 'metrics' });
      const id = run.info.run_id;
      const losses = [2.3, 1.1, 0.7, Number.NaN, 0.4];
      await client.logMetrics(id, losses.map((value, step) => ({ key: 'train/loss', value, step, timestamp: 1000 + step })));
      await client.logMetrics(id, [{ key: 'val/acc', value: 0.93, step: 4 }]);
      const hist = await client.getMetricHistory(id, 'train/loss');
      assert.deepEqual(hist.map((m) => m.step), [0, 1, 2, 3, 4]);
      assert.deepEqual(hist.map((m) => m.value).filter((v) => !Number.isNaN(v)), [2.3, 1.1, 0.7, 0.4]);
      assert.ok(Number.isNaN(hist[3]?.value));
      assert.equal(hist[0]?.timestamp, 1000);
      const latest = latestMetricsOf(await client.getRun(id));
      assert.equal(latest['train/loss'], 0.4);
      assert.equal(latest['val/acc'], 0.93);
      assert.deepEqual(await client.getMetricHistory(id, 'never-logged'), []);
    });

    it('splits a batch of 2500 metrics, 250 params and 150 tags within the server limits', async () => {
      const run = await client.createRun({ experimentId, runName: 'big-batch' });
      const id = run.info.run_id;
      const { client: c, attempts } = counting(url);
      const metrics = Array.from({ length: 2500 }, (_, i) => ({ key: 'curve', value: i / 10, step: i, timestamp: 5000 }));
      const params = Array.from({ length: 250 }, (_, i) => ({ key: `p${i}`, value: i }));
      const tags = Array.from({ length: 150 }, (_, i) => ({ key: `t${i}`, value: `v${i}` }));
      await c.logBatch(id, { metrics, params, tags });
      const requests = attempts.filter((a) => a.endpoint === 'POST /api/2.0/mlflow/runs/log-batch');
      assert.equal(requests.length, 3); // 100p+100t+800m, 100p+50t+850m, 50p+850m
      const got = await client.getRun(id);
      assert.equal(got.data.params.length, 250);
      assert.equal(paramsOf(got).p249, '249');
      assert.equal(tagsOf(got).t149, 'v149');
      const hist = await client.getMetricHistory(id, 'curve');
      assert.equal(hist.length, 2500);
      assert.equal(hist[2499]?.value, 249.9);
      // A retried batch (same params, same metric points) succeeds and adds no duplicate points.
      await c.logBatch(id, { metrics, params, tags });
      assert.equal((await client.getMetricHistory(id, 'curve')).length, 2500);
    });

    it('params are immutable: the same value again succeeds, another value is a clear error', async () => {
      const run = await client.createRun({ experimentId, runName: 'params' });
      const id = run.info.run_id;
      await client.logParams(id, { lr: 0.1, 'model.hidden': '[64,32]', seed: 7 });
      await client.logParams(id, { lr: 0.1 });
      const { client: c, attempts } = counting(url);
      await assert.rejects(c.logParams(id, { lr: 0.2, seed: 7 }), (err: unknown) => {
        assert.ok(err instanceof MlflowRequestError, String(err));
        assert.equal(err.name, 'MlflowRequestError');
        assert.equal(err.status, 400);
        assert.equal(err.errorCode, 'INVALID_PARAMETER_VALUE');
        assert.match(err.message, /lr: logged "0\.1", now "0\.2"/);
        assert.doesNotMatch(err.message, /seed/);
        return true;
      });
      assert.equal(attempts.filter((a) => a.endpoint.endsWith('log-batch')).length, 1, 'a 400 is not retried');
      assert.equal(paramsOf(await client.getRun(id)).lr, '0.1');
      await assert.rejects(client.logBatch(id, { params: [{ key: 'x', value: 1 }, { key: 'x', value: 2 }] }), InputError);
    });
  });

  describe('artifacts', () => {
    it('uploads, lists and downloads artifacts through the proxy', async () => {
      const run = await client.createRun({ experimentId, runName: 'artifacts' });
      const id = run.info.run_id;
      const bin = randomBytes(300_000);
      await client.logArtifact(id, 'student/params.wfp', bin);
      await client.logArtifact(id, 'student/config.json', JSON.stringify({ hidden: [64] }));
      await client.logArtifact(id, 'notes with space.txt', 'first');
      await client.logArtifact(id, 'notes with space.txt', 'second'); // overwrite
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-art-'));
      fs.writeFileSync(path.join(tmp, 'result.json'), '{"ok":true}');
      await client.logArtifactFile(id, path.join(tmp, 'result.json'));

      const root = await client.listArtifacts(id);
      assert.deepEqual(root.map((f) => [f.path, f.is_dir]).sort(), [
        ['notes with space.txt', false], ['result.json', false], ['student', true],
      ]);
      const student = await client.listArtifacts(id, 'student');
      assert.deepEqual(student.map((f) => [f.path, f.file_size]).sort(), [
        ['student/config.json', 15], ['student/params.wfp', 300_000],
      ]);
      assert.ok(bin.equals(await client.downloadArtifact(id, 'student/params.wfp')));
      assert.equal((await client.downloadArtifact(id, 'notes with space.txt')).toString(), 'second');
      assert.equal((await client.downloadArtifact(id, 'result.json')).toString(), '{"ok":true}');
      await assert.rejects(client.downloadArtifact(id, 'missing.bin'), (err: unknown) =>
        err instanceof MlflowRequestError && err.status === 404);
      // A fresh client (no cached artifact root) finds the run's root itself.
      assert.ok(bin.equals(await new MlflowClient(url).downloadArtifact(id, 'student/params.wfp')));
      await assert.rejects(client.logArtifact(id, '../escape.txt', 'x'), InputError);
      await assert.rejects(client.logArtifact(id, '/abs.txt', 'x'), InputError);
      fs.rmSync(tmp, { recursive: true, force: true });
    });
  });

  describe('dataset inputs', () => {
    it('logs dataset inputs that getRun shows, once', async () => {
      const run = await client.createRun({ experimentId, runName: 'inputs' });
      const id = run.info.run_id;
      const datasets = [
        { name: 'mnist-shard-0', digest: 'a1b2c3d4', sourceType: 'local', source: { uri: 'mnist-embedded', shard: 0 }, schema: { features: 784 }, context: 'train' },
        { name: 'mnist-test', digest: 'e5f6a7b8', sourceType: 'local', source: '{"uri":"mnist-embedded","split":"test"}', context: 'test' },
      ];
      await client.logInputs(id, datasets);
      await client.logInputs(id, datasets); // retried: no duplicates
      const inputs = (await client.getRun(id)).inputs.dataset_inputs;
      assert.equal(inputs.length, 2);
      const train = inputs.find((i) => i.dataset.name === 'mnist-shard-0');
      assert.ok(train);
      assert.equal(train.dataset.digest, 'a1b2c3d4');
      assert.deepEqual(JSON.parse(train.dataset.source), { uri: 'mnist-embedded', shard: 0 });
      assert.deepEqual(JSON.parse(train.dataset.schema ?? 'null'), { features: 784 });
      assert.equal(train.tags.find((t) => t.key === DATASET_CONTEXT_TAG)?.value, 'train');
    });
  });

  describe('model registry', () => {
    it('creates a registered model (idempotently), versions, and an alias', async () => {
      const name = uniq('student');
      const run = await client.createRun({ experimentId, runName: 'register' });
      const id = run.info.run_id;
      await client.logArtifact(id, 'student/params.wfp', randomBytes(64));
      const m1 = await client.createRegisteredModel(name);
      const m2 = await client.createRegisteredModel(name);
      assert.equal(m1.name, name);
      assert.equal(m2.creation_timestamp, m1.creation_timestamp);

      const source = `${run.info.artifact_uri}/student`;
      const v1 = await client.createModelVersion(name, source, id, { 'weightformer.spec_hash': 'abc' });
      assert.equal(v1.version, '1');
      assert.equal(v1.status, 'READY');
      assert.equal(v1.run_id, id);
      const got = await client.getModelVersion(name, 1);
      assert.equal(got.source, source);
      assert.equal(got.tags.find((t) => t.key === 'weightformer.spec_hash')?.value, 'abc');

      const again = await client.findOrCreateModelVersion({ name, source, runId: id });
      assert.equal(again.created, false);
      assert.equal(again.version.version, '1');
      const other = await client.findOrCreateModelVersion({ name, source: `${source}-finetuned`, runId: id });
      assert.equal(other.created, true);
      assert.equal(other.version.version, '2');

      const found = await client.searchModelVersions(`name = '${name}'`);
      assert.deepEqual(found.map((v) => v.version).sort(), ['1', '2']);

      // Two registrations of one source at once (an attempt that outlived its timeout, and its retry): both
      // search, find nothing and create; each looks again, the newer is deleted, both get the older.
      const raced = `${source}-raced`;
      const [a, b] = await Promise.all([0, 1].map(() => client.findOrCreateModelVersion({ name, source: raced, runId: id })));
      assert.equal(a!.version.version, b!.version.version);
      const left = (await client.searchModelVersions(`name = '${name}'`)).filter((v) => v.source === raced);
      assert.deepEqual(left.map((v) => v.version), [a!.version.version]);
      assert.equal([a!.created, b!.created].filter(Boolean).length <= 1, true);
      await client.deleteModelVersion(name, 99); // absent: no error
      await client.setRegisteredModelAlias(name, 'champion', 2);
      assert.equal((await client.getModelVersionByAlias(name, 'champion')).version, '2');
      assert.deepEqual((await client.getRegisteredModel(name)).aliases, [{ alias: 'champion', version: '2' }]);
    });
  });

  describe('errors and retries', () => {
    it('a 4xx is not retried: getRun of an unknown run fails after one attempt', async () => {
      const { client: c, attempts } = counting(url, { retry: { attempts: 5, initialDelayMs: 1, maxDelayMs: 5 } });
      await assert.rejects(c.getRun('0123456789abcdef0123456789abcdef'), (err: unknown) => {
        assert.ok(err instanceof MlflowRequestError, String(err));
        assert.equal(err.status, 404);
        assert.equal(err.errorCode, 'RESOURCE_DOES_NOT_EXIST');
        assert.equal(err.endpoint, 'GET /api/2.0/mlflow/runs/get');
        assert.match(err.message, /GET \/api\/2\.0\/mlflow\/runs\/get failed: 404 RESOURCE_DOES_NOT_EXIST: Run .* not found/);
        return true;
      });
      assert.equal(attempts.length, 1);
    });

    it('retries a refused connection N times, then fails with MlflowUnavailableError (token kept out)', async () => {
      const port = await freePort();
      assert.ok(await isPortFree(port));
      const token = 'tok-SECRET-4711';
      const { client: c, attempts } = counting(`http://127.0.0.1:${port}`, { token, retry: { attempts: 4, initialDelayMs: 1, maxDelayMs: 4 } });
      await assert.rejects(c.getOrCreateExperiment('x'), (err: unknown) => {
        assert.ok(err instanceof MlflowUnavailableError, String(err));
        assert.equal(err.name, 'MlflowUnavailableError');
        assert.equal(err.attempts, 4);
        assert.match(err.message, /after 4 attempts/);
        assert.match(err.message, /ECONNREFUSED/);
        assert.ok(!err.message.includes(token) && !String(err.stack).includes(token));
        return true;
      });
      assert.equal(attempts.length, 4);
      assert.ok(attempts.every((a) => a.endpoint === 'GET /api/2.0/mlflow/experiments/get-by-name'));
    });

    it('retries 503 and 429 answers, then succeeds; sends the token only in Authorization', async () => {
      const seen: { url: string; auth: string | null }[] = [];
      let calls = 0;
      const flaky: typeof fetch = async (input, init) => {
        calls += 1;
        seen.push({ url: String(input), auth: new Headers(init?.headers).get('authorization') });
        if (calls === 1) return new Response('{"error_code":"TEMPORARILY_UNAVAILABLE","message":"busy"}', { status: 503 });
        if (calls === 2) return new Response('slow down', { status: 429, headers: { 'retry-after': '0' } });
        return fetch(input, init);
      };
      const c = new MlflowClient(url, { token: 'tok-abc', fetch: flaky, retry: { attempts: 3, initialDelayMs: 1, maxDelayMs: 5 } });
      const id = await c.getOrCreateExperiment(uniq('flaky'));
      assert.match(id, /^\d+$/);
      assert.ok(calls >= 3);
      assert.ok(seen.every((s) => s.auth === 'Bearer tok-abc' && !s.url.includes('tok-abc')));
    });

    it('gives up after the last 5xx with the status and server message', async () => {
      const always503: typeof fetch = async () => new Response('{"error_code":"INTERNAL_ERROR","message":"db locked"}', { status: 503 });
      const { client: c, attempts } = counting(url, { fetch: always503 });
      await assert.rejects(c.getRun('r'), (err: unknown) =>
        err instanceof MlflowUnavailableError && err.status === 503 && err.errorCode === 'INTERNAL_ERROR' && /db locked/.test(err.message));
      assert.equal(attempts.length, FAST_RETRY.attempts);
    });

    it('times an attempt out with AbortSignal.timeout and retries it', async () => {
      const hang: typeof fetch = (_input, init) => new Promise((_resolve, reject) => {
        init?.signal?.addEventListener('abort', () => reject(init.signal?.reason));
      });
      const { client: c, attempts } = counting(url, { fetch: hang, requestTimeoutMs: 30, retry: { attempts: 2, initialDelayMs: 1, maxDelayMs: 2 } });
      await assert.rejects(c.getRun('r'), (err: unknown) => err instanceof MlflowUnavailableError && /no answer within 30 ms/.test(err.message));
      assert.equal(attempts.length, 2);
    });

    it('rejects tracking URIs with credentials or a wrong scheme', () => {
      assert.throws(() => new MlflowClient('http://user:pw@127.0.0.1:5000'), InputError);
      assert.throws(() => new MlflowClient('file:///tmp/mlruns'), InputError);
      assert.throws(() => new MlflowClient('not a url'), InputError);
      assert.equal(new MlflowClient('http://127.0.0.1:5000/').baseUrl, 'http://127.0.0.1:5000');
    });
  });
});

describe('stack/process startServer', function () {
  this.timeout(30_000);
  let logDir = '';
  before(() => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-proc-'));
  });
  after(() => fs.rmSync(logDir, { recursive: true, force: true }));

  it('reports a server that exits before it is ready, with the tail of its log', async () => {
    const port = await freePort();
    await assert.rejects(startServer({
      name: 'boom', command: 'bash', args: ['-c', 'echo "fatal: bad flag" >&2; exit 3'],
      logFile: path.join(logDir, 'boom.log'), ready: { tcpPort: port }, timeoutMs: 10_000,
    }), (err: unknown) => err instanceof ServerStartError && /boom: exited with code 3/.test(err.message) && /fatal: bad flag/.test(err.message));
  });

  it('times out, stops the process and says so', async () => {
    const port = await freePort();
    const t0 = Date.now();
    let pid: number | undefined;
    await assert.rejects(startServer({
      name: 'sleeper', command: 'bash', args: ['-c', 'echo "pid $$ waiting"; exec sleep 60'],
      logFile: path.join(logDir, 'sleeper.log'), ready: { tcpPort: port }, timeoutMs: 800, stopGraceMs: 2000,
    }), (err: unknown) => {
      assert.ok(err instanceof ServerStartError);
      assert.match(err.message, /did not answer TCP 127\.0\.0\.1:\d+ within/);
      pid = Number(/pid (\d+) waiting/.exec(err.message)?.[1]);
      return true;
    });
    assert.ok(Date.now() - t0 < 10_000);
    assert.ok(pid && pid > 0);
    assert.throws(() => process.kill(pid as number, 0), /ESRCH/);
  });

  it('waits for a TCP port and an HTTP URL, then stops the whole process group', async () => {
    const port = await freePort();
    const script = `require('http').createServer((q, s) => s.end('ok')).listen(${port}, '127.0.0.1'); setInterval(() => {}, 1000);`;
    const server = await startServer({
      name: 'node-http', command: process.execPath, args: ['-e', script],
      logFile: path.join(logDir, 'http.log'), ready: { tcpPort: port, httpUrl: `http://127.0.0.1:${port}/` }, timeoutMs: 10_000,
    });
    assert.ok(server.isRunning());
    assert.equal(await (await fetch(`http://127.0.0.1:${port}/`)).text(), 'ok');
    await server.stop();
    await server.stop(); // idempotent
    assert.ok(!server.isRunning());
    assert.ok(await isPortFree(port));
  });

  it('builds loopback mlflow server arguments', () => {
    const args = mlflowServerArgs('/state', '127.0.0.1', 5555);
    assert.deepEqual(args.slice(0, 5), ['server', '--backend-store-uri', 'sqlite:////state/mlflow.db', '--artifacts-destination', '/state/mlartifacts']);
    assert.ok(args.includes('--serve-artifacts') && args.includes('--workers'));
  });
});
