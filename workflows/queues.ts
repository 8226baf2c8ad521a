/** The two kinds of task queue: stages asking for a GPU go to `gpu`, everything else to `cpu`. */
export type QueueKind = 'cpu' | 'gpu';

/**
 * The task queue name of a kind. A prefix keeps separate deployments (or test suites) that share one
 * Temporal namespace from taking each other's tasks: `team-a` → `team-a-cpu`, `team-a-gpu`.
 */
export function taskQueueName(kind: QueueKind, prefix?: string): string {
  return prefix ? `${prefix}-${kind}` : kind;
}
