/**
 * Error types shared by the library, the activities and the CLI.
 *
 * The library stays free of Temporal: it throws these plain errors, and the workflow's retry policies list
 * their names in `nonRetryableErrorTypes` (Temporal converts an activity's thrown Error into an
 * ApplicationFailure whose type is `error.name`), so bad input fails at once instead of being retried.
 */

/** Bad user input (pipeline file, teacher file, path, URL): retrying cannot help. */
export class InputError extends Error {
  override name = 'InputError';
}

/** One positioned problem in a pipeline file. */
export interface SpecDiagnostic {
  file: string;
  line: number;
  col: number;
  /** JSON pointer-ish path, e.g. `/teachers/count`; `/` for the document root. */
  path: string;
  message: string;
}

/** A pipeline file failed to parse or validate; `diagnostics` holds every problem found. */
export class SpecError extends InputError {
  override name = 'SpecError';
  constructor(public readonly diagnostics: SpecDiagnostic[]) {
    super(diagnostics.map(formatDiagnostic).join('\n'));
  }
}

/** A path or URL outside the allowed roots or schemes. */
export class AccessError extends InputError {
  override name = 'AccessError';
}

/** `FILE:LINE:COL: <json path>: <message>` — the one format every spec error is printed in. */
export function formatDiagnostic(d: SpecDiagnostic): string {
  return `${d.file}:${d.line}:${d.col}: ${d.path}: ${d.message}`;
}

/** Names of errors that must never be retried; used by every stage's retry policy. */
export const NON_RETRYABLE_ERROR_TYPES = ['InputError', 'SpecError', 'AccessError'] as const;
