import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sha256Hex } from '../util/canonical';
import { InputError } from '../util/errors';

/** A reference to stored bytes: `sha256:<64 hex>`. Workflows pass these, never tensors. */
export type ArtifactRef = `sha256:${string}`;

const REF_PATTERN = /^sha256:[0-9a-f]{64}$/;

export function isArtifactRef(value: unknown): value is ArtifactRef {
  return typeof value === 'string' && REF_PATTERN.test(value);
}

/**
 * Content-addressed artifact store in a local (or shared) directory.
 *
 * Objects live at `objects/<2 hex>/<62 hex>`; stage results at `cache/<key>.json`. Every write goes to a
 * unique temporary name in the same directory and is renamed into place, so a reader never sees a
 * half-written file and two writers of the same content cannot corrupt each other (rename is atomic and
 * both write identical bytes).
 */
export class ArtifactStore {
  constructor(public readonly root: string) {}

  objectPath(ref: ArtifactRef): string {
    if (!isArtifactRef(ref)) throw new InputError(`not an artifact reference: ${String(ref)}`);
    const hex = ref.slice('sha256:'.length);
    return path.join(this.root, 'objects', hex.slice(0, 2), hex.slice(2));
  }

  async putBytes(bytes: Uint8Array): Promise<ArtifactRef> {
    const ref: ArtifactRef = `sha256:${sha256Hex(bytes)}`;
    const target = this.objectPath(ref);
    if (await exists(target)) return ref;
    await writeFileAtomic(target, bytes);
    return ref;
  }

  /** Reads an object and checks its hash, so a corrupted file is an error, not a silent wrong model. */
  async getBytes(ref: ArtifactRef): Promise<Uint8Array> {
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(this.objectPath(ref));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new InputError(`artifact ${ref} is not in the store at ${this.root}`);
      throw err;
    }
    const actual = `sha256:${sha256Hex(bytes)}`;
    if (actual !== ref) throw new Error(`artifact ${ref} is corrupt in ${this.root} (content hashes to ${actual})`);
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  async has(ref: ArtifactRef): Promise<boolean> {
    return exists(this.objectPath(ref));
  }

  async putJson(value: unknown): Promise<ArtifactRef> {
    return this.putBytes(Buffer.from(JSON.stringify(value)));
  }

  async getJson<T>(ref: ArtifactRef): Promise<T> {
    return JSON.parse(Buffer.from(await this.getBytes(ref)).toString('utf8')) as T;
  }

  private cachePath(key: string): string {
    if (!/^[0-9a-f]{16,64}$/.test(key)) throw new Error(`bad cache key ${key}`);
    return path.join(this.root, 'cache', `${key}.json`);
  }

  /** The recorded result of a stage whose cache key is `key`, if every artifact it names still exists. */
  async getCached<T>(key: string): Promise<T | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.cachePath(key), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const value = JSON.parse(text) as T;
    for (const ref of collectRefs(value)) if (!(await this.has(ref))) return undefined;
    return value;
  }

  async putCached(key: string, value: unknown): Promise<void> {
    await writeFileAtomic(this.cachePath(key), Buffer.from(JSON.stringify(value)));
  }

  /**
   * The cached result of `key`, or `compute()` run by exactly one of the workers that ask for it at once
   * (on this machine or any other sharing the store). The first to create `claims/<key>.claim` (an
   * exclusive create, atomic on local disks and NFS v3+) computes; `compute` must record its result with
   * `putCached(key, …)` before it returns. The others wait for that result. A claim is a lease: its holder
   * touches it every `leaseMs / 4`, so a claim whose holder died (SIGKILL, lost machine) goes stale after
   * `leaseMs` and is taken over; a holder whose `compute` throws releases it at once. Each claim won is
   * journalled under `claims/journal/` (who computed what, when), which is how the fault suite counts work.
   */
  async computeOnce<T>(
    key: string,
    compute: () => Promise<T>,
    opts: { leaseMs?: number; pollMs?: number; onWait?: (holder: string) => void } = {},
  ): Promise<{ value: T; computed: boolean }> {
    const leaseMs = opts.leaseMs ?? 30_000;
    const pollMs = opts.pollMs ?? 250;
    const claim = this.claimPath(key);
    for (;;) {
      const cached = await this.getCached<T>(key);
      if (cached !== undefined) return { value: cached, computed: false };
      const owner = `${os.hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
      if (await createExclusive(claim, JSON.stringify({ owner, at: new Date().toISOString() }))) {
        const refresh = setInterval(() => {
          const now = new Date();
          fs.utimes(claim, now, now).catch(() => undefined);
        }, Math.max(50, leaseMs / 4));
        refresh.unref();
        try {
          // Someone may have finished between our cache check and our claim.
          const late = await this.getCached<T>(key);
          if (late !== undefined) return { value: late, computed: false };
          await writeFileAtomic(path.join(this.root, 'claims', 'journal', `${key}.${owner.replace(/[^\w.-]/g, '_')}`), JSON.stringify({ key, owner, at: new Date().toISOString() }));
          return { value: await compute(), computed: true };
        } finally {
          clearInterval(refresh);
          await fs.rm(claim, { force: true });
        }
      }
      // Someone else holds it: wait for their result, or take over a claim whose holder stopped touching it.
      const age = await ageMs(claim);
      const holder = await readClaimOwner(claim);
      if ((age !== undefined && age > leaseMs) || (holder !== undefined && holderIsGone(holder))) {
        // Rename first: of several workers finding the same stale claim, only one rename succeeds.
        const stale = `${claim}.stale-${randomBytes(4).toString('hex')}`;
        if (await fs.rename(claim, stale).then(() => true, () => false)) await fs.rm(stale, { force: true });
        continue;
      }
      if (holder !== undefined) opts.onWait?.(holder);
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  /** Keys whose computation was claimed, with how many times each (1 when no work was duplicated). */
  async computedKeys(): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    let names: string[] = [];
    try {
      names = await fs.readdir(path.join(this.root, 'claims', 'journal'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const name of names) {
      if (name.includes('.tmp-')) continue;
      const key = name.slice(0, name.indexOf('.'));
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    return counts;
  }

  private claimPath(key: string): string {
    this.cachePath(key); // validates the key
    return path.join(this.root, 'claims', `${key}.claim`);
  }
}

/** Creates `file` only if it does not exist; false when another creator got there first. */
async function createExclusive(file: string, content: string): Promise<boolean> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  try {
    await fs.writeFile(file, content, { flag: 'wx' });
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

async function readClaimOwner(claim: string): Promise<string | undefined> {
  try {
    return (JSON.parse(await fs.readFile(claim, 'utf8')) as { owner?: string }).owner;
  } catch {
    return undefined; // gone, or caught between its creation and its write: look again next poll
  }
}

/** A holder on this machine whose process has exited (SIGKILLed, say) need not be waited out. */
function holderIsGone(owner: string): boolean {
  const [host, pidText] = owner.split(':');
  if (host !== os.hostname()) return false;
  try {
    process.kill(Number(pidText), 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** Milliseconds since `file` was last modified; undefined when it does not exist. */
async function ageMs(file: string): Promise<number | undefined> {
  try {
    return Date.now() - (await fs.stat(file)).mtimeMs;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function collectRefs(value: unknown, out: ArtifactRef[] = []): ArtifactRef[] {
  if (isArtifactRef(value)) out.push(value);
  else if (Array.isArray(value)) value.forEach((v) => collectRefs(v, out));
  else if (value !== null && typeof value === 'object') Object.values(value).forEach((v) => collectRefs(v, out));
  return out;
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

/** Writes to a unique temporary name beside the target, then renames: readers see all or nothing. */
export async function writeFileAtomic(target: string, data: Uint8Array | string): Promise<void> {
  await fs.mkdir(path.dirname(target), { recursive: true });
  const tmp = `${target}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  try {
    await fs.writeFile(tmp, data);
    await fs.rename(tmp, target);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}
