/**
 * Metrics measured with a wall clock. They differ between two runs of the same spec and seed (and between
 * a resumed run and an uninterrupted one); every other metric is a function of the spec and the backend.
 * Reproducibility checks compare everything but these.
 */
export function isWallClockMetric(name: string): boolean {
  return name.startsWith('seconds.') || name.startsWith('ratio.');
}
