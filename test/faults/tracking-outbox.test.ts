import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TrackingOutbox } from '../../src/tracking/outbox';
import { MlflowRequestError, MlflowUnavailableError } from '../../src/tracking/errors';

// Unit tests of the durable tracking outbox (fakes for MLflow; fast: part of the plain `npm test`).
describe('tracking outbox', () => {
  let root: string;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-'));
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));
  const down = () => new MlflowUnavailableError('down', 'POST /x', 5);

  it('replays records oldest first, and deletes each only once applied', async () => {
    const box = new TrackingOutbox<{ n: number }>(root);
    for (const n of [1, 2, 3]) {
      await box.add({ n });
      await new Promise((r) => setTimeout(r, 2)); // distinct millisecond prefixes
    }
    assert.equal(await box.pendingCount(), 3);
    const seen: number[] = [];
    assert.deepEqual(await box.replay(async (r) => void seen.push(r.n)), { replayed: 3, unavailable: false });
    assert.deepEqual(seen, [1, 2, 3]);
    assert.equal(await box.pendingCount(), 0);
  });

  it('keeps every record, in order, while MLflow is still down', async () => {
    const box = new TrackingOutbox<{ n: number }>(root);
    await box.add({ n: 1 });
    await new Promise((r) => setTimeout(r, 2));
    await box.add({ n: 2 });
    let calls = 0;
    assert.deepEqual(await box.replay(async (r) => { calls += 1; if (r.n === 2) throw down(); }), { replayed: 1, unavailable: true });
    assert.equal(calls, 2);
    assert.equal(await box.pendingCount(), 1);
    const seen: number[] = [];
    await box.replay(async (r) => void seen.push(r.n));
    assert.deepEqual(seen, [2]);
  });

  it('moves a record MLflow refuses to failed/ with its error, never drops it', async () => {
    const box = new TrackingOutbox<{ n: number }>(root);
    await box.add({ n: 1 });
    await box.replay(async () => { throw new MlflowRequestError('bad', 400, 'INVALID_PARAMETER_VALUE', 'POST /x'); });
    assert.equal(await box.pendingCount(), 0);
    const failed = fs.readdirSync(path.join(box.dir, 'failed')).sort();
    assert.equal(failed.length, 2);
    assert.match(fs.readFileSync(path.join(box.dir, 'failed', failed.find((f) => f.endsWith('.txt'))!), 'utf8'), /MlflowRequestError: bad/);
  });

  it('two replayers at once apply each record once', async () => {
    const box = new TrackingOutbox<{ n: number }>(root);
    for (let n = 0; n < 20; n++) await box.add({ n });
    const seen: number[] = [];
    const apply = async (r: { n: number }) => { await new Promise((res) => setTimeout(res, 1)); seen.push(r.n); };
    await Promise.all([new TrackingOutbox<{ n: number }>(root).replay(apply), new TrackingOutbox<{ n: number }>(root).replay(apply)]);
    assert.deepEqual([...seen].sort((a, b) => a - b), [...Array(20).keys()]);
  });
});
