import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
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
