// The per-run HTML report: baseline table, accuracy chart, training curves and, for sweeps over T, gain
// captured against T. Pure (no Temporal, no MLflow): activities/report.ts gathers the inputs.
export * from './types';
export { renderReport, baselineRows, runAccuracyPoints, sweepAccuracyPoints, gainPoints, sweepsTeacherCount, TEACHER_COUNT_KEY } from './render';
export { renderSvg } from './charts';
export { writeReportFile, localReportPath } from './write';
