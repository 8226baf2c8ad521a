/**
 * A pipeline's `alignment` block as the jobs, cache keys and the registry use it.
 *
 * Absent block, or `method: weights`: weight matching, and nothing about alignment enters a cache key, a
 * fingerprint, a model file or a registry key, so every result computed before the option existed is still
 * found. `activations`: the block enters the cache key of every result that depends on alignment (aligned
 * averages and generation, meta-training, the registry key), and is also recorded in the
 * WeightFormer it trains (`WeightformerModel.alignment`), which then aligns its inputs the same way.
 */
import type { AlignmentRecord } from '../ml/weightformer/family';
import type { PipelineSpec } from '../spec/types';
import { InputError } from '../util/errors';

/** The record a WeightFormer trained by this pipeline carries: only for activation matching. */
export function alignmentRecordOf(spec: Pick<PipelineSpec, 'alignment'>): AlignmentRecord | undefined {
  const a = spec.alignment;
  return a?.method === 'activations' ? { method: 'activations', samples: a.samples } : undefined;
}

/**
 * What a cache key of an alignment-dependent result adds: nothing for weight matching (no block, or
 * `method: weights`: the keys it always had); for activation matching the block and the data split, whose
 * consolidation set the matching images come from (keys that already hold `data` hold it twice, harmlessly). Without
 * `shardSize`: the consolidation set does not depend on it (`splitDataset` takes it before the shards),
 * and the WeightFormer's key leaves it out on purpose (it never reads the shards).
 */
export function alignmentKey(spec: Pick<PipelineSpec, 'alignment' | 'data'>): { alignment?: { method: string; samples: number; data?: Partial<PipelineSpec['data']> } } {
  const a = spec.alignment;
  // `method: weights` written out computes exactly what no block does: the same keys, so the results (and
  // a registered WeightFormer, for reuse: auto) are shared.
  if (!a || a.method === 'weights') return {};
  return { alignment: { method: a.method, samples: a.samples, data: { ...spec.data, shardSize: undefined } } };
}

/** `weights` or `activations:<samples>`: a registry tag and the words of messages. */
export function alignmentLabel(record: AlignmentRecord | undefined): string {
  return record ? `${record.method}:${record.samples}` : 'weights';
}

/**
 * InputError (configuration, never retried) unless a WeightFormer aligns its inputs as this pipeline
 * does: a model meta-trained on weight-matched teachers reads activation-matched ones as noise, and the
 * reverse.
 */
export function checkModelAlignment(model: AlignmentRecord | undefined, spec: Pick<PipelineSpec, 'alignment'>, what: string): void {
  const theirs = alignmentLabel(model);
  const ours = alignmentLabel(alignmentRecordOf(spec));
  if (theirs !== ours) {
    throw new InputError(
      `${what} was meta-trained on teachers aligned by ${theirs} but this pipeline aligns by ${ours} (alignment.method): ` +
        'a WeightFormer only reads teachers aligned the way it was trained; use a WeightFormer trained with the same alignment block',
    );
  }
}
