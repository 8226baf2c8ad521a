/**
 * The orchestration benchmark's workflow (bundled on its own by bench/orchestration.ts, never part of the
 * pipeline's workflows): `stages` trivial activities in sequence, as the pipeline runs its stages.
 */
import { proxyActivities } from '@temporalio/workflow';
import type { TrivialActivities } from './orchestration-activities';

const { trivialStage } = proxyActivities<TrivialActivities>({ startToCloseTimeout: '30 seconds', retry: { maximumAttempts: 1 } });

export async function trivialPipeline(stages: number): Promise<number> {
  let value = 0;
  for (let i = 0; i < stages; i++) value = await trivialStage(value);
  return value;
}
