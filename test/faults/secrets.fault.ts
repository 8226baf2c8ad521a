import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { sharedTemporal } from '../helpers/temporal';
import { sharedMlflow } from '../helpers/mlflow';
import { tinySpec } from '../helpers/specs';
import { loadPipelineText } from '../../src/spec/load';
import { SpecError } from '../../src/util/errors';
import type { MlflowClient } from '../../src/tracking/mlflow';
import type { PipelineInput, PipelineResult } from '../../workflows/types';
import { taskQueueName } from '../../workflows/queues';
import { recordFault } from './rows';
import { killProcess, mlflowClient, startWorkerProcess } from './harness';

const PREFIX = 'faults-secrets';
const QUEUE = taskQueueName('cpu', PREFIX);
const EXPERIMENT = 'faults-secrets';

/** Every string and byte sequence inside a value (protobuf payloads are bytes), decoded as UTF-8. */
function texts(value: unknown, out: string[] = []): string[] {
  if (value instanceof Uint8Array) out.push(Buffer.from(value).toString('utf8'), Buffer.from(value).toString('latin1'));
  else if (typeof value === 'string') out.push(value);
  else if (Array.isArray(value)) value.forEach((v) => texts(v, out));
  else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) { out.push(k); texts(v, out); }
  return out;
}

async function allArtifacts(client: MlflowClient, runId: string, dir = ''): Promise<Array<{ path: string; bytes: Buffer }>> {
  const out: Array<{ path: string; bytes: Buffer }> = [];
  for (const f of await client.listArtifacts(runId, dir)) {
    if (f.is_dir) out.push(...(await allArtifacts(client, runId, f.path)));
    else out.push({ path: f.path, bytes: await client.downloadArtifact(runId, f.path) });
  }
  return out;
}

describe('fault: the MLflow token stays secret', function () {
  this.timeout(900_000);
  let env: TestWorkflowEnvironment;
  let mlflowUrl: string;
  before(async () => {
    [env, { url: mlflowUrl }] = await Promise.all([sharedTemporal(), sharedMlflow()]);
  });

  it('is read only from the environment: a pipeline file cannot carry it', () => {
    const tries = ['tracking: {enabled: true, token: abc}', 'tracking: {enabled: true, trackingToken: abc}', 'tracking: {enabled: true, uri: "http://user:pass@host"}'];
    const refused = tries.filter((t) => {
      try {
        loadPipelineText(`version: 1\nname: tok\n${t}\n`, path.join(os.tmpdir(), 'tok.yaml'));
        return false;
      } catch (e) {
        return e instanceof SpecError && e.diagnostics.every((d) => d.line === 3);
      }
    });
    recordFault({ scenario: 'secrets: token or credentials in a pipeline file', tried: tries.length, survived: refused.length, work_redone_steps: 0, checkpoint_interval_steps: 0, data_lost: 0, note: 'refused by the schema with a positioned error' });
    assert.equal(refused.length, tries.length);
  });

  it('never appears in a param, tag, metric name or artifact in MLflow, nor in the Temporal history', async () => {
    const token = `wf-secret-${randomBytes(12).toString('hex')}`;
    const loaded = tinySpec(`teachers: {count: 2, train: {epochs: 2, batchSize: 50, checkpointEvery: 2}}\ntracking: {enabled: true, experiment: ${EXPERIMENT}}`, 'faults-secrets');
    const storeRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-secrets-'));
    const worker = startWorkerProcess({ temporalAddress: env.address, store: storeRoot, prefix: PREFIX, mlflowUrl, extraEnv: { MLFLOW_TRACKING_TOKEN: token } });
    try {
      const input: PipelineInput = { spec: loaded.spec, specHash: loaded.hash, noCache: true, queuePrefix: PREFIX };
      const workflowId = `faults-secrets-${Date.now()}`;
      const handle = await env.client.workflow.start('pipeline', { taskQueue: QUEUE, workflowId, args: [input] });
      const result = (await handle.result()) as PipelineResult;
      assert.equal(result.status, 'completed');

      const client = mlflowClient(mlflowUrl);
      const exp = await client.getExperimentByName(EXPERIMENT);
      const runs = await client.searchRuns({ experimentIds: [exp!.experiment_id], filter: `tags."weightformer.workflow_id" = '${workflowId}'` });
      const places: Array<{ where: string; text: string }> = [];
      let artifacts = 0;
      for (const run of runs) {
        for (const p of run.data.params ?? []) places.push({ where: `param ${p.key}`, text: `${p.key}=${p.value}` });
        for (const t of run.data.tags ?? []) places.push({ where: `tag ${t.key}`, text: `${t.key}=${t.value}` });
        for (const m of run.data.metrics ?? []) places.push({ where: `metric ${m.key}`, text: m.key });
        for (const a of await allArtifacts(client, run.info.run_id)) {
          artifacts += 1;
          places.push({ where: `artifact ${a.path}`, text: a.bytes.toString('latin1') });
        }
      }
      const history = await handle.fetchHistory();
      const historyTexts = texts(history);
      places.push(...historyTexts.map((text) => ({ where: 'workflow history', text })));
      // Also its base64 form: payloads travel base64-encoded in JSON histories.
      const needles = [token, Buffer.from(token).toString('base64').slice(0, 20)];
      const leaks = places.filter((p) => needles.some((n) => p.text.includes(n))).map((p) => p.where);
      recordFault({
        scenario: 'secrets: MLFLOW_TRACKING_TOKEN scanned in MLflow and Temporal history',
        tried: places.length,
        survived: places.length - leaks.length,
        work_redone_steps: 0,
        checkpoint_interval_steps: 0,
        data_lost: 0,
        note: `${runs.length} runs: params, tags, metric names, ${artifacts} artifacts; ${history.events?.length ?? 0} history events; ${leaks.length} leaks`,
      });
      assert.ok(runs.length >= 2 && artifacts >= 1, `too little to scan: ${runs.length} runs, ${artifacts} artifacts`);
      assert.ok(places.some((p) => p.where.startsWith('param')), 'no params scanned');
      assert.deepEqual(leaks, []);
    } finally {
      await killProcess(worker);
      fs.rmSync(storeRoot, { recursive: true, force: true });
    }
  });
});
