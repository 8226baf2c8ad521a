import * as path from 'node:path';

/** Replay fixture of the pipeline workflow for one schema version (source tree, not dist). */
export function historyFixturePath(schemaVersion: number): string {
  return path.resolve(__dirname, '../../../test/fixtures/histories', `pipeline-schema-v${schemaVersion}.json`);
}
