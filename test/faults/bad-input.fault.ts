import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from '../helpers/temporal';
import { tinySpec } from '../helpers/specs';
import { createPipelineWorker } from '../../src/worker/worker';
import { initMlp, type MlpParams } from '../../src/ml/mlp';
import { serializeSafetensorsTeacher } from '../../src/ml/formats/torch-mlp';
import { writeTfjsModelDir } from '../../src/ml/tfjs-format';
import { resolveTeacherSource } from '../../src/teachers/sources';
import { loadPipelineText } from '../../src/spec/load';
import { InputError, SpecError } from '../../src/util/errors';
import type { ArchitectureSpec } from '../../src/spec/types';
import type { PipelineInput } from '../../workflows/types';
import { NON_RETRYABLE } from '../../workflows/pipeline';
import { taskQueueName } from '../../workflows/queues';
import { recordFault } from './rows';

const PREFIX = 'faults-bad-input';
const QUEUE = taskQueueName('cpu', PREFIX);
const ARCH: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: [16], outputSize: 10, activation: 'relu' };

/** Every file under `dir` whose name marks an unfinished write (writeFileAtomic's `.tmp-` names, partial downloads). */
function halfWritten(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => /\.tmp-|\.part$|\.partial$|\.download/.test(path.basename(f)));
}

describe('fault: bad teachers, paths and URLs', function () {
  this.timeout(600_000);
  let env: TestWorkflowEnvironment;
  let tmp: string;
  const previousRoots = process.env.WEIGHTFORMER_ALLOWED_ROOTS;

  before(async () => {
    env = await sharedTemporal();
    tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'wf-faults-bad-')));
    process.env.WEIGHTFORMER_ALLOWED_ROOTS = tmp;
  });
  after(() => {
    if (previousRoots === undefined) delete process.env.WEIGHTFORMER_ALLOWED_ROOTS;
    else process.env.WEIGHTFORMER_ALLOWED_ROOTS = previousRoots;
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  /**
   * Runs a one-teacher pipeline importing `file` on a real worker and store; returns how it failed: the
   * failure's type and message, the attempts the teachers stage took, and what was left half-written.
   */
  async function importFails(name: string, file: string) {
    const storeRoot = fs.mkdtempSync(path.join(tmp, `store-${name}-`));
    const loaded = tinySpec(`teachers: {count: 1, source: files, files: [${JSON.stringify(file)}]}\ngenerate: {method: aligned-average}\nweightformer: {mode: none}`);
    const worker = await createPipelineWorker({ temporalAddress: env.address, connection: env.nativeConnection, taskQueue: 'cpu', queuePrefix: PREFIX, storeRoot, mlflowUrl: null });
    const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };
    const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId: `faults-bad-${name}-${Date.now()}`, args: [input] });
    let failure: { type: string | undefined; message: string } | null = null;
    await worker.runUntil(
      handle.result().catch((e: unknown) => {
        if (!(e instanceof WorkflowFailedError)) throw e;
        // workflow failure ← activity failure ← application failure (the thrown error: type = its name).
        let cause: unknown = e.cause;
        while (cause && (cause as { cause?: unknown }).cause) cause = (cause as { cause?: unknown }).cause;
        failure = { type: (cause as { type?: string }).type, message: (cause as Error).message };
      }),
    );
    const history = await handle.fetchHistory();
    const attempts = history.events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt ?? 1);
    return { failure: failure as { type: string | undefined; message: string } | null, maxAttempt: Math.max(0, ...attempts), leftovers: halfWritten(storeRoot), cacheEntries: fs.existsSync(path.join(storeRoot, 'cache')) ? fs.readdirSync(path.join(storeRoot, 'cache')).length : 0 };
  }

  const valid = (): MlpParams => initMlp(ARCH, 11);
  const teacherCases: Array<{ scenario: string; write: (dir: string) => string; expect: RegExp }> = [
    {
      scenario: 'teacher file corrupt (garbled safetensors header)',
      write: (dir) => {
        const bytes = Buffer.from(serializeSafetensorsTeacher(valid()));
        for (let i = 8; i < 40; i++) bytes[i] = 0x7b; // '{' × 32 inside the JSON header
        return write(dir, 'corrupt.safetensors', bytes);
      },
      expect: /corrupt\.safetensors/,
    },
    {
      scenario: 'teacher file truncated',
      write: (dir) => write(dir, 'truncated.safetensors', Buffer.from(serializeSafetensorsTeacher(valid())).subarray(0, 3000)),
      expect: /truncated\.safetensors/,
    },
    {
      scenario: 'teacher file shape-mismatched (header shape vs data)',
      write: (dir) => {
        // The writer refuses bad shapes, so edit the header: the first weight claims 783 columns, not 784.
        const bytes = Buffer.from(serializeSafetensorsTeacher(valid()));
        const at = bytes.indexOf('[16,784]');
        assert.ok(at > 0, 'shape not found in the header');
        bytes.write('[16,783]', at);
        return write(dir, 'shapes.safetensors', bytes);
      },
      expect: /shapes\.safetensors/,
    },
    {
      scenario: 'teacher file with NaN weights',
      write: (dir) => {
        // The writer refuses NaN, so write a sentinel and overwrite its bytes with a NaN afterwards.
        const p = valid();
        p.layers[0]!.w[17] = 1234.5678;
        const bytes = Buffer.from(serializeSafetensorsTeacher(p));
        const sentinel = Buffer.from(new Float32Array([1234.5678]).buffer);
        const at = bytes.indexOf(sentinel);
        assert.ok(at > 0, 'sentinel weight not found in the file');
        Buffer.from(new Float32Array([Number.NaN]).buffer).copy(bytes, at);
        return write(dir, 'nan.safetensors', bytes);
      },
      expect: /nan\.safetensors|NaN|finite/i,
    },
    {
      scenario: 'teacher of the wrong architecture',
      write: (dir) => write(dir, 'wrong-arch.safetensors', Buffer.from(serializeSafetensorsTeacher(initMlp({ ...ARCH, hidden: [8] }, 3)))),
      expect: /wrong-arch\.safetensors/,
    },
    {
      scenario: 'TF.js teacher with truncated weights.bin',
      write: (dir) => {
        const folder = path.join(dir, 'tfjs-truncated');
        // Written synchronously below by the caller's await; the folder is returned for the pipeline.
        return folder;
      },
      expect: /tfjs-truncated/,
    },
  ];

  function write(dir: string, name: string, bytes: Buffer): string {
    const file = path.join(dir, name);
    fs.writeFileSync(file, bytes);
    return file;
  }

  for (const c of teacherCases) {
    it(`${c.scenario}: a clear non-retryable error, nothing half-written in the store`, async () => {
      const dir = fs.mkdtempSync(path.join(tmp, 'teacher-'));
      const file = c.write(dir);
      if (c.scenario.startsWith('TF.js')) {
        const { weightsBinPath } = await writeTfjsModelDir(file, valid());
        fs.truncateSync(weightsBinPath, 1000);
      }
      const r = await importFails(c.scenario.replace(/\W+/g, '-').slice(0, 30), file);
      const ok = r.failure !== null && NON_RETRYABLE.includes(r.failure.type ?? '') && c.expect.test(r.failure.message) && r.maxAttempt === 1 && r.leftovers.length === 0;
      recordFault({
        scenario: c.scenario,
        tried: 1,
        survived: ok ? 1 : 0,
        work_redone_steps: 0,
        checkpoint_interval_steps: 0,
        data_lost: r.leftovers.length,
        note: r.failure ? `${r.failure.type} after ${r.maxAttempt} attempt(s): ${r.failure.message.slice(0, 140)}` : 'pipeline did not fail',
      });
      assert.ok(r.failure, 'the pipeline should have failed');
      assert.ok(NON_RETRYABLE.includes(r.failure.type ?? ''), `retryable failure type ${r.failure.type}: ${r.failure.message}`);
      assert.match(r.failure.message, c.expect);
      assert.equal(r.maxAttempt, 1, 'the teachers stage was retried');
      assert.deepEqual(r.leftovers, []);
      assert.equal(r.cacheEntries, 0, 'a failed import cached a result');
    });
  }

  it('path traversal in every path field: refused at load time, positioned', () => {
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-outside-'));
    try {
      const pipelineFile = path.join(tmp, 'p.yaml');
      const tries: Array<{ field: string; yaml: string; line: number }> = [];
      for (const bad of ['../../../../etc', `${outside}`, '../' + path.relative(path.dirname(tmp), outside), 'data/../../../../root', './a/../../../../../tmp']) {
        tries.push({ field: 'data.path', yaml: `data: {source: mnist-idx, path: ${JSON.stringify(bad)}}`, line: 3 });
        tries.push({ field: 'teachers.files[0]', yaml: `teachers: {count: 1, source: files, files: [${JSON.stringify(bad + '/t.safetensors')}]}`, line: 3 });
      }
      // A symbolic link inside the root pointing out of it.
      fs.symlinkSync(outside, path.join(tmp, 'link-out'));
      tries.push({ field: 'data.path', yaml: 'data: {source: mnist-idx, path: link-out}', line: 3 });
      tries.push({ field: 'teachers.files[0]', yaml: 'teachers: {count: 1, source: files, files: [link-out/t.safetensors]}', line: 3 });
      const failures: string[] = [];
      for (const t of tries) {
        const text = `version: 1\nname: traversal\n${t.yaml}\n`;
        try {
          loadPipelineText(text, pipelineFile);
          failures.push(`${t.field} ${t.yaml}: accepted`);
        } catch (e) {
          if (!(e instanceof SpecError)) failures.push(`${t.yaml}: ${String(e)}`);
          else if (!e.diagnostics.some((d) => d.line === t.line && /outside the allowed roots/.test(d.message))) failures.push(`${t.yaml}: ${e.message}`);
        }
      }
      recordFault({ scenario: 'path traversal (data.path, teachers.files; ../, absolute, symlink)', tried: tries.length, survived: tries.length - failures.length, work_redone_steps: 0, checkpoint_interval_steps: 0, data_lost: 0, note: 'SpecError FILE:LINE:COL at load time, before any work' });
      assert.deepEqual(failures, []);
    } finally {
      fs.rmSync(outside, { recursive: true, force: true });
    }
  });

  it('unsupported URL schemes: refused at load time and again when resolved', async () => {
    const schemes = ['ftp://example.com/t.safetensors', 'file:///etc/passwd', 'gopher://x/t', 's3://bucket/t.safetensors', 'javascript:alert(1)', 'data:application/octet-stream;base64,AAAA', 'ssh://host/t', 'hdfs://x/t', 'git+https://x/t'];
    const failures: string[] = [];
    for (const url of schemes) {
      try {
        loadPipelineText(`version: 1\nname: schemes\nteachers: {count: 1, source: files, files: [${JSON.stringify(url)}]}\n`, path.join(tmp, 'p.yaml'));
        failures.push(`${url}: accepted at load`);
      } catch (e) {
        if (!(e instanceof SpecError) || !e.diagnostics.every((d) => d.line === 3)) failures.push(`${url}: ${String(e)}`);
      }
      try {
        await resolveTeacherSource(url, { baseDir: tmp, allowedRoots: [tmp], cacheDir: path.join(tmp, 'dl-schemes') });
        failures.push(`${url}: resolved`);
      } catch (e) {
        if (!(e instanceof InputError)) failures.push(`${url}: resolve threw ${String(e)}`);
      }
    }
    const left = halfWritten(path.join(tmp, 'dl-schemes'));
    recordFault({ scenario: 'unsupported URL schemes', tried: schemes.length, survived: schemes.length - failures.length, work_redone_steps: 0, checkpoint_interval_steps: 0, data_lost: left.length, note: 'positioned SpecError at load; InputError/AccessError at resolve' });
    assert.deepEqual(failures, []);
    assert.deepEqual(left, []);
  });

  it('oversized downloads (announced and streamed): refused, nothing left in the download cache', async () => {
    const LIMIT = 64 * 1024;
    const body = Buffer.alloc(LIMIT * 4, 1);
    const server = http.createServer((req, res) => {
      if (req.url === '/announced.safetensors') {
        res.writeHead(200, { 'Content-Length': String(body.length) });
        res.end(body);
      } else if (req.url === '/streamed.safetensors') {
        res.writeHead(200); // chunked: no Content-Length, the limit must cut the stream
        let sent = 0;
        const push = () => {
          if (sent >= body.length || res.destroyed) return res.end();
          res.write(body.subarray(sent, sent + 8192));
          sent += 8192;
          setImmediate(push);
        };
        push();
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const cacheDir = path.join(tmp, 'dl-oversized');
    const failures: string[] = [];
    try {
      for (const name of ['announced', 'streamed']) {
        try {
          await resolveTeacherSource(`${base}/${name}.safetensors`, { baseDir: tmp, allowedRoots: [tmp], cacheDir, maxBytes: LIMIT, expected: ARCH });
          failures.push(`${name}: accepted`);
        } catch (e) {
          if (!(e instanceof InputError) || !/limit/.test((e as Error).message)) failures.push(`${name}: ${String(e)}`);
        }
      }
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
    const left = fs.existsSync(cacheDir) ? (fs.readdirSync(cacheDir, { recursive: true }) as string[]) : [];
    recordFault({ scenario: 'oversized teacher downloads', tried: 2, survived: 2 - failures.length, work_redone_steps: 0, checkpoint_interval_steps: 0, data_lost: left.length, note: `limit ${LIMIT} B, bodies ${body.length} B; non-retryable InputError` });
    assert.deepEqual(failures, []);
    assert.deepEqual(left, [], 'partial download left in the cache');
  });
});
