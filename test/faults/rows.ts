/**
 * Rows of the fault table. Each fault test measures its figures and records one row per scenario here;
 * bench/faults.ts runs the suites in-process and writes the rows out. A row is recorded only after the
 * test has measured it, whatever the outcome (a failed scenario is recorded with `survived: false`).
 */
export interface FaultRow {
  scenario: string;
  /** How many times the fault was provoked (kills, mutated files, bad inputs, …). */
  tried: number;
  /** How many of those the system came through as required. */
  survived: number;
  /** Steps computed again after the fault (0 where the fault interrupts no training). */
  work_redone_steps: number;
  /** The checkpoint interval of the interrupted work (0 where none applies). */
  checkpoint_interval_steps: number;
  /** Records (metrics, artifacts, results) missing or wrong after recovery, compared with a fault-free run. */
  data_lost: number;
  /** One line on what was measured. */
  note?: string;
}

const rows: FaultRow[] = [];

export function recordFault(row: FaultRow): void {
  rows.push(row);
}

export function faultRows(): readonly FaultRow[] {
  return rows;
}
