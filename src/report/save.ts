import type { PipelineResult } from '../../workflows/types';
import { ArtifactStore, isArtifactRef } from '../store/store';
import { MlflowClient } from '../tracking/mlflow';
import { localReportPath, writeReportFile } from './write';

export interface SavedReport {
  /** The local HTML file; null when it could not be written. */
  file: string | null;
  /** Why there is no local file. */
  note?: string;
}

/**
 * Copies a finished run's report to `<state>/reports/<MLflow run id, else workflow id>.html`: from the
 * artifact store when the worker shares it (the embedded stack), else from the MLflow artifact the report
 * activity logged (a remote cluster's worker).
 */
export async function saveRunReport(result: PipelineResult, opts: { stateDir: string; storeRoot: string; mlflowUrl: string | null }): Promise<SavedReport> {
  const report = result.report;
  if (!report) return { file: null, note: 'this run wrote no report (recorded before reports existed)' };
  if (report.state !== 'written' || !report.ref) return { file: null, note: `the report could not be written: ${report.note ?? 'no reason given'}` };
  const id = result.mlflowRunId ?? report.mlflowRunId ?? result.workflowId;
  const file = localReportPath(opts.stateDir, id);
  const store = new ArtifactStore(opts.storeRoot);
  if (isArtifactRef(report.ref) && (await store.has(report.ref))) {
    return { file: await writeReportFile(file, await store.getBytes(report.ref)) };
  }
  if (opts.mlflowUrl && report.mlflowRunId && report.artifactPath) {
    const bytes = await new MlflowClient(opts.mlflowUrl).downloadArtifact(report.mlflowRunId, report.artifactPath);
    return { file: await writeReportFile(file, bytes) };
  }
  return { file: null, note: `report ${report.ref} is neither in the store at ${opts.storeRoot} nor in MLflow (tracking is off)` };
}
