/**
 * A durable outbox for tracking records MLflow could not take: when the server stays unreachable past the
 * client's retry window, the record is written as one JSON file under `<store>/tracking-outbox/` (the
 * shared store, so any worker of any machine can replay it, and a worker's death loses nothing) and
 * replayed, oldest first, by the next tracking call that finds MLflow up again.
 *
 * Replaying is safe to repeat: each record is claimed by an atomic rename before it is applied, deleted
 * only after it was applied, and put back when MLflow is still down. A record MLflow refuses outright
 * (a 4xx) is moved to `failed/` and kept, never dropped.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeFileAtomic } from '../store/store';
import { MlflowUnavailableError } from './errors';

const PENDING = /^\d{13}-[0-9a-f]{12}\.json$/;
/** A claim older than this was left by a replayer that died mid-replay: the record is pending again. */
const STALE_CLAIM_MS = 120_000;

export class TrackingOutbox<R> {
  readonly dir: string;

  constructor(storeRoot: string) {
    this.dir = path.join(storeRoot, 'tracking-outbox');
  }

  async add(record: R): Promise<string> {
    const name = `${String(Date.now()).padStart(13, '0')}-${randomBytes(6).toString('hex')}.json`;
    await writeFileAtomic(path.join(this.dir, name), JSON.stringify(record));
    return name;
  }

  /** Records waiting to be replayed (claimed ones included: a replay may be in progress). */
  async pendingCount(): Promise<number> {
    return (await this.names()).filter((n) => PENDING.test(n) || n.includes('.json.replaying-')).length;
  }

  /**
   * Applies every pending record, oldest first. Stops (leaving the rest in place) at the first record MLflow
   * is still unavailable for; returns how many were applied and whether MLflow was reachable.
   */
  async replay(apply: (record: R) => Promise<void>): Promise<{ replayed: number; unavailable: boolean }> {
    await this.releaseStaleClaims();
    let replayed = 0;
    for (const name of (await this.names()).filter((n) => PENDING.test(n)).sort()) {
      const file = path.join(this.dir, name);
      const claimed = `${file}.replaying-${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
      // Another replayer took it first: theirs to apply.
      if (!(await fs.rename(file, claimed).then(() => true, () => false))) continue;
      const now = new Date();
      await fs.utimes(claimed, now, now); // the claim's age, not the record's, tells a dead replayer
      let record: R;
      try {
        record = JSON.parse(await fs.readFile(claimed, 'utf8')) as R;
      } catch (err) {
        await this.moveToFailed(claimed, name, err);
        continue;
      }
      try {
        await apply(record);
      } catch (err) {
        if (err instanceof MlflowUnavailableError) {
          await fs.rename(claimed, file);
          return { replayed, unavailable: true };
        }
        await this.moveToFailed(claimed, name, err);
        continue;
      }
      await fs.rm(claimed, { force: true });
      replayed += 1;
    }
    return { replayed, unavailable: false };
  }

  private async moveToFailed(claimed: string, name: string, err: unknown): Promise<void> {
    const failed = path.join(this.dir, 'failed');
    await fs.mkdir(failed, { recursive: true });
    await fs.rename(claimed, path.join(failed, name));
    await writeFileAtomic(path.join(failed, `${name}.error.txt`), err instanceof Error ? `${err.name}: ${err.message}` : String(err));
  }

  private async releaseStaleClaims(): Promise<void> {
    for (const n of await this.names()) {
      const at = n.indexOf('.json.replaying-');
      if (at < 0) continue;
      const file = path.join(this.dir, n);
      const stat = await fs.stat(file).catch(() => null);
      if (stat && Date.now() - stat.mtimeMs > STALE_CLAIM_MS) await fs.rename(file, path.join(this.dir, n.slice(0, at + '.json'.length))).catch(() => undefined);
    }
  }

  private async names(): Promise<string[]> {
    try {
      return await fs.readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }
}
