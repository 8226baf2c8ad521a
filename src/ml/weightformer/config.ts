/**
 * WeightFormer hyper-parameters: what the model looks like and which inputs it reads.
 *
 * Every field is part of a trained model's identity (it is stored with the model and hashed into the
 * meta-training fingerprint), so a default may never change meaning: add a field instead.
 */
import { InputError } from '../../util/errors';

export interface WeightformerConfig {
  /** Model width: every token is a d-vector inside the encoder. */
  d: number;
  /** Attention heads; must divide `d`. */
  heads: number;
  /** Encoder blocks, each: set attention across teachers, axial attention across rows, MLP. */
  blocks: number;
  /** Hidden width of each block's MLP, as a multiple of `d`. */
  mlpRatio: number;
  /**
   * false: the teacher ablation. The teachers' token contents (weights, probe activations) are zeroed, the
   * embeddings are kept, so the model can learn only a fixed correction of the aligned mean. Same
   * parameters, same training, same residual base: the one difference is whether it reads the teachers.
   */
  teacherInput: boolean;
  /**
   * Per-teacher, per-unit mixing weights instead of the plain aligned mean as the residual base
   * (a learned, Fisher-like weighted average). Unit-consistent: hidden unit j's weight for teacher t
   * multiplies both its incoming row and its outgoing column, so a unit taken from one teacher keeps that
   * teacher's fan-out. Zero-initialised, so training still starts at the aligned average.
   */
  mixing: boolean;
  /**
   * Data-aware tokens: each unit's pre-activations on a fixed probe batch of the consolidation set (stored
   * with the model) are appended to its token, so the model sees what each teacher's unit *computes*, not
   * only its weights. MLP students only (a CNN unit's pre-activation is a feature map): InputError for CNNs.
   */
  probeTokens: boolean;
  /** Probe examples per unit when `probeTokens` (the probe batch size). */
  probeSize: number;
  /**
   * true: the axial attention of each teacher spans the rows of all layers, so a hidden unit's token can
   * see the output rows that hold its outgoing weights (the cross-layer context that a per-layer summary
   * token would give, without extra tokens). false: attention stays inside each layer.
   */
  crossLayer: boolean;
  /**
   * Multiplies the token contents' projection by a learned per-channel gate that starts at zero, so the
   * model starts as the teacher ablation (aligned mean + fixed correction) and lets the teachers in only
   * as far as that lowers the meta-loss.
   */
  contentGate: boolean;
  /**
   * Per-row disagreement statistics appended to each token, relative to the other teachers of the set:
   * cosine and relative distance of the row to their mean, cosine of the unit's outgoing weights to
   * theirs (for a CNN channel: every next-layer weight that reads it, over taps or flattened positions),
   * and (with probe tokens) the correlation of its probe activations to theirs. They say how well each
   * teacher's unit matched the reference after alignment, which is what a good per-teacher mixing
   * weight needs (a hand-set softmax(5·cosine) weighting already lifts the aligned average).
   */
  agreementStats: boolean;
}

export const DEFAULT_WEIGHTFORMER_CONFIG: WeightformerConfig = {
  d: 64,
  heads: 4,
  blocks: 2,
  mlpRatio: 2,
  teacherInput: true,
  mixing: false,
  probeTokens: false,
  probeSize: 32,
  crossLayer: true,
  contentGate: false,
  agreementStats: false,
};

/** The defaults with `partial` on top, validated. */
export function weightformerConfig(partial: Partial<WeightformerConfig> = {}): WeightformerConfig {
  const config = { ...DEFAULT_WEIGHTFORMER_CONFIG, ...partial };
  checkWeightformerConfig(config);
  return config;
}

/** Throws InputError unless `c` describes a buildable model. */
export function checkWeightformerConfig(c: WeightformerConfig): void {
  const int = (name: string, v: unknown, min: number): void => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new InputError(`weightformer.${name} must be an integer ≥ ${min}, got ${String(v)}`);
  };
  int('d', c.d, 1);
  int('heads', c.heads, 1);
  int('blocks', c.blocks, 0);
  int('probeSize', c.probeSize, 1);
  if (c.d % c.heads !== 0) throw new InputError(`weightformer.heads (${c.heads}) must divide d (${c.d})`);
  if (!(typeof c.mlpRatio === 'number' && c.mlpRatio > 0 && Number.isInteger(c.mlpRatio * c.d))) {
    throw new InputError(`weightformer.mlpRatio must be positive with mlpRatio·d an integer, got ${String(c.mlpRatio)}`);
  }
  for (const k of ['teacherInput', 'mixing', 'probeTokens', 'crossLayer', 'contentGate', 'agreementStats'] as const) {
    if (typeof c[k] !== 'boolean') throw new InputError(`weightformer.${k} must be a boolean`);
  }
}

/** The config with its keys in a fixed order (for hashing and storing). */
export function canonicalConfig(c: WeightformerConfig): WeightformerConfig {
  return {
    d: c.d,
    heads: c.heads,
    blocks: c.blocks,
    mlpRatio: c.mlpRatio,
    teacherInput: c.teacherInput,
    mixing: c.mixing,
    probeTokens: c.probeTokens,
    probeSize: c.probeSize,
    crossLayer: c.crossLayer,
    contentGate: c.contentGate,
    agreementStats: c.agreementStats,
  };
}
