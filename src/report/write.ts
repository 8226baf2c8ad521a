import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/**
 * Writes a report file atomically: a temporary name in the same folder, then a rename, so a reader (or a
 * browser left open on it) never sees half a file.
 */
export async function writeReportFile(file: string, html: string | Uint8Array): Promise<string> {
  const target = path.resolve(file);
  await fs.mkdir(path.dirname(target), { recursive: true });
  const temp = `${target}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await fs.writeFile(temp, html);
    await fs.rename(temp, target);
  } catch (err) {
    await fs.rm(temp, { force: true });
    throw err;
  }
  return target;
}

/** Where the CLI keeps a run's report: `<state>/reports/<id>.html`, the id made safe as a file name. */
export function localReportPath(stateDir: string, id: string): string {
  return path.join(stateDir, 'reports', `${id.replace(/[^A-Za-z0-9._-]/g, '_')}.html`);
}
