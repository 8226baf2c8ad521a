import * as fs from 'node:fs';
import * as path from 'node:path';
import { AccessError } from '../util/errors';

/**
 * Resolves a path written in a pipeline file (relative to that file's folder) and refuses anything that
 * lands outside the allowed roots — after following symbolic links, so `../` tricks and links out of a
 * root are both caught.
 */
export function resolveAllowedPath(written: string, opts: { baseDir: string; allowedRoots: string[]; field: string }): string {
  if (written.includes('\0')) throw new AccessError(`${opts.field}: path contains a NUL byte`);
  const resolved = realpathOfExistingPrefix(path.resolve(opts.baseDir, written));
  const roots = opts.allowedRoots.map((r) => realpathOfExistingPrefix(path.resolve(r)));
  const inside = roots.some((root) => resolved === root || resolved.startsWith(root.endsWith(path.sep) ? root : root + path.sep));
  if (!inside) {
    throw new AccessError(
      `${opts.field}: '${written}' resolves to ${resolved}, outside the allowed roots (${roots.join(', ')}); ` +
        'add its folder to WEIGHTFORMER_ALLOWED_ROOTS to allow it',
    );
  }
  return resolved;
}

/** The allowed roots: the pipeline file's folder, the working directory, and WEIGHTFORMER_ALLOWED_ROOTS. */
export function defaultAllowedRoots(pipelineFile: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const extra = (env.WEIGHTFORMER_ALLOWED_ROOTS ?? '').split(path.delimiter).filter(Boolean);
  return [path.dirname(path.resolve(pipelineFile)), process.cwd(), ...extra];
}

/** realpath of the longest existing prefix, with the rest appended: works for files not yet written. */
function realpathOfExistingPrefix(p: string): string {
  let existing = p;
  const rest: string[] = [];
  for (;;) {
    try {
      return path.join(fs.realpathSync(existing), ...rest.reverse());
    } catch {
      const parent = path.dirname(existing);
      if (parent === existing) return p;
      rest.push(path.basename(existing));
      existing = parent;
    }
  }
}
