import * as path from 'node:path';
import { writeFileAtomic } from '../store/store';

/**
 * Writes a report file atomically: a temporary name in the same folder, then a rename, so a reader (or a
 * browser left open on it) never sees half a file.
 */
export async function writeReportFile(file: string, html: string | Uint8Array): Promise<string> {
  const target = path.resolve(file);
  await writeFileAtomic(target, html);
  return target;
}

/** Where the CLI keeps a run's report: `<state>/reports/<id>.html`, the id made safe as a file name. */
export function localReportPath(stateDir: string, id: string): string {
  return path.join(stateDir, 'reports', `${id.replace(/[^A-Za-z0-9._-]/g, '_')}.html`);
}
