import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';

let cached: string | undefined;

/**
 * Hash of the compiled code that computes stage outputs (the ML library and the job runner), part of every
 * cache key: changing how a stage computes invalidates its cached outputs, while a CLI or docs change
 * does not.
 */
export function codeVersion(): string {
  if (cached) return cached;
  const hash = createHash('sha256');
  const srcRoot = path.resolve(__dirname, '..');
  for (const dir of ['ml', 'runner']) {
    for (const file of listJs(path.join(srcRoot, dir))) {
      hash.update(path.relative(srcRoot, file));
      hash.update(readFileSync(file));
    }
  }
  cached = hash.digest('hex').slice(0, 16);
  return cached;
}

function listJs(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listJs(full));
    else if (entry.name.endsWith('.js')) out.push(full);
  }
  return out;
}
