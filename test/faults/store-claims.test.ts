import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ArtifactStore } from '../../src/store/store';

// Unit tests of the store's compute-once claims (fast, no servers: part of the plain `npm test`).
describe('store: computeOnce claims', () => {
  let root: string;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'store-claims-'));
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));
  const KEY = 'ab'.repeat(16);

  it('runs the computation once when many ask at once; the others get its result', async () => {
    const stores = [0, 1, 2, 3].map(() => new ArtifactStore(root));
    let runs = 0;
    const outcomes = await Promise.all(
      stores.map((s) =>
        s.computeOnce(KEY, async () => {
          runs += 1;
          await new Promise((r) => setTimeout(r, 200));
          await s.putCached(KEY, { n: 42 });
          return { n: 42 };
        }, { pollMs: 20 }),
      ),
    );
    assert.equal(runs, 1);
    assert.deepEqual(outcomes.map((o) => o.value), [{ n: 42 }, { n: 42 }, { n: 42 }, { n: 42 }]);
    assert.equal(outcomes.filter((o) => o.computed).length, 1);
    assert.deepEqual([...(await stores[0]!.computedKeys())], [[KEY, 1]]);
    assert.deepEqual(fs.readdirSync(path.join(root, 'claims')).filter((f) => f.endsWith('.claim')), [], 'claim released');
  });

  it('releases the claim when the computation throws, so the next asker computes', async () => {
    const store = new ArtifactStore(root);
    await assert.rejects(store.computeOnce(KEY, async () => { throw new Error('boom'); }), /boom/);
    const again = await store.computeOnce(KEY, async () => { await store.putCached(KEY, 'ok'); return 'ok'; });
    assert.deepEqual(again, { value: 'ok', computed: true });
  });

  it('takes over a claim whose holder stopped renewing it (a dead worker on another machine)', async () => {
    const store = new ArtifactStore(root);
    fs.mkdirSync(path.join(root, 'claims'), { recursive: true });
    const claim = path.join(root, 'claims', `${KEY}.claim`);
    fs.writeFileSync(claim, JSON.stringify({ owner: 'other-host:1:x' }));
    const old = new Date(Date.now() - 60_000);
    fs.utimesSync(claim, old, old);
    const r = await store.computeOnce(KEY, async () => { await store.putCached(KEY, 1); return 1; }, { leaseMs: 1000, pollMs: 10 });
    assert.deepEqual(r, { value: 1, computed: true });
  });

  it('takes over at once a claim of a process on this machine that has exited', async () => {
    const store = new ArtifactStore(root);
    fs.mkdirSync(path.join(root, 'claims'), { recursive: true });
    // A pid far above any live one on this machine (pid_max is at most 2^22).
    fs.writeFileSync(path.join(root, 'claims', `${KEY}.claim`), JSON.stringify({ owner: `${os.hostname()}:${2 ** 22 + 7}:x` }));
    const started = Date.now();
    const r = await store.computeOnce(KEY, async () => { await store.putCached(KEY, 2); return 2; }, { leaseMs: 60_000, pollMs: 10 });
    assert.deepEqual(r, { value: 2, computed: true });
    assert.ok(Date.now() - started < 5_000, 'waited out the lease instead of seeing the holder was gone');
  });

  it('waits for a live holder and returns its result, reporting who it waits for', async () => {
    const a = new ArtifactStore(root);
    const b = new ArtifactStore(root);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const first = a.computeOnce(KEY, async () => { await gate; await a.putCached(KEY, 'A'); return 'A'; }, { pollMs: 10 });
    await new Promise((r) => setTimeout(r, 50));
    const waitedFor: string[] = [];
    const second = b.computeOnce(KEY, async () => 'B', { pollMs: 10, onWait: (h) => waitedFor.push(h) });
    await new Promise((r) => setTimeout(r, 100));
    release();
    assert.deepEqual(await second, { value: 'A', computed: false });
    assert.deepEqual(await first, { value: 'A', computed: true });
    assert.ok(waitedFor.length > 0 && waitedFor[0]!.startsWith(`${os.hostname()}:${process.pid}:`));
  });
});
