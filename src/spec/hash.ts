/** Identity of a spec: sha256 of its canonical JSON (the same canonical form as every cache key). */
import { canonicalJson, contentHash } from '../util/canonical';

export { canonicalJson };

/** sha256 hex of the canonical JSON of `value`. */
export function specHash(value: unknown): string {
  return contentHash(value);
}
