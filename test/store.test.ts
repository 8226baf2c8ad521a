import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { ArtifactStore, writeFileAtomic } from '../src/store/store';
import { resolveAllowedPath } from '../src/store/paths';
import { AccessError, InputError } from '../src/util/errors';

describe('artifact store', () => {
  let root: string;
  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'store-'));
  });

  it('addresses content by sha256 and round-trips bytes and JSON', async () => {
    const store = new ArtifactStore(root);
    const ref = await store.putBytes(Buffer.from('hello'));
    assert.equal(ref, 'sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
    assert.equal(Buffer.from(await store.getBytes(ref)).toString(), 'hello');
    assert.equal(await store.putBytes(Buffer.from('hello')), ref, 'same content, same reference');
    const jsonRef = await store.putJson({ a: 1 });
    assert.deepEqual(await store.getJson(jsonRef), { a: 1 });
  });

  it('refuses a corrupted object instead of returning wrong bytes', async () => {
    const store = new ArtifactStore(root);
    const ref = await store.putBytes(Buffer.from('model weights'));
    await fs.writeFile(store.objectPath(ref), 'tampered');
    await assert.rejects(store.getBytes(ref), /is corrupt/);
  });

  it('reports a missing object as bad input, and a bad reference as such', async () => {
    const store = new ArtifactStore(root);
    await assert.rejects(store.getBytes(`sha256:${'0'.repeat(64)}`), (e: unknown) => e instanceof InputError);
    assert.throws(() => store.objectPath('sha256:../../etc/passwd' as never), InputError);
  });

  it('writes atomically: no temporary files left, and concurrent writers of one object agree', async () => {
    const store = new ArtifactStore(root);
    const data = Buffer.alloc(1 << 20, 7);
    const refs = await Promise.all(Array.from({ length: 8 }, () => store.putBytes(data)));
    assert.equal(new Set(refs).size, 1);
    assert.equal((await store.getBytes(refs[0]!)).length, data.length);
    const dir = path.dirname(store.objectPath(refs[0]!));
    assert.deepEqual((await fs.readdir(dir)).filter((f) => f.includes('.tmp-')), []);
  });

  it('cleans up its temporary file when a write fails', async () => {
    const target = path.join(root, 'a-folder');
    await fs.mkdir(target);
    await assert.rejects(writeFileAtomic(target, 'x'));
    assert.deepEqual((await fs.readdir(root)).filter((f) => f.includes('.tmp-')), []);
  });

  it('serves a cached stage result only while every artifact it names exists', async () => {
    const store = new ArtifactStore(root);
    const ref = await store.putBytes(Buffer.from('student'));
    const key = 'ab'.repeat(16);
    await store.putCached(key, { outputs: { student: ref } });
    assert.deepEqual(await store.getCached(key), { outputs: { student: ref } });
    await fs.rm(store.objectPath(ref));
    assert.equal(await store.getCached(key), undefined);
  });
});

describe('allowed roots for paths in pipeline files', () => {
  it('resolves relative paths under the pipeline folder and refuses escapes, absolute paths and links out', async () => {
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'roots-'));
    const outside = await fs.mkdtemp(path.join(os.tmpdir(), 'outside-'));
    await fs.mkdir(path.join(base, 'models'));
    await fs.symlink(outside, path.join(base, 'models', 'link-out'));
    const opts = { baseDir: base, allowedRoots: [base], field: '/teachers/source/path' };
    assert.equal(resolveAllowedPath('models/t0.json', opts), path.join(base, 'models', 't0.json'));
    assert.throws(() => resolveAllowedPath('../outside/t0.json', opts), (e: unknown) => e instanceof AccessError && /outside the allowed roots/.test((e as Error).message));
    assert.throws(() => resolveAllowedPath('/etc/passwd', opts), AccessError);
    assert.throws(() => resolveAllowedPath('models/link-out/t0.json', opts), AccessError);
    assert.throws(() => resolveAllowedPath('models/\0x', opts), /NUL/);
    assert.throws(() => resolveAllowedPath(`${base}-sibling/x`, opts), AccessError, 'a sibling folder sharing the prefix is outside');
  });
});
