/**
 * The WeightFormer: its parameters, initialisation and functional forward pass, for any student family
 * (MLP or CNN, `family.ts`): the model only sees rows.
 *
 * Shape of one pass over T aligned teachers (R = rows of all layers, d = width):
 *   per layer l: tokens [T·R_l, tokenSize_l] → input adapter → [T, R_l, d]; concatenated → [T, R, d]
 *   + row-position embedding [R, d] + layer embedding (one-hot [R, L] · [L, d]); no teacher-index
 *     embedding, so the model is invariant to teacher order and takes any T
 *   blocks × { set attention across the T teachers of each row; axial attention across the rows of each
 *     teacher (all layers, or within a layer); MLP }, pre-norm, residual
 *   final norm → mean over teachers → per-layer output adapter [R_l, d] → delta [R_l, rowSize_l]
 *   student rows = base + delta ⊙ scale, base = aligned mean (or the mixing-weighted mean); a BN running
 *     variance instead base · positiveFactor(delta · relative spread), which stays > 0
 * The output adapters (and the mixing head) start at zero, so an untrained model returns the aligned
 * average exactly.
 *
 * Everything is batched into a few large ops (per-op overhead dominates on wasm), and every matMul
 * whose second operand is a weight is 2-D (the wasm 3-D × 2-D matMul gradient is broken); the only
 * batched matMuls are attention's 3-D × 3-D products with equal batch sizes.
 */
import type { ArchitectureSpec } from '../../spec/types';
import { InputError } from '../../util/errors';
import type { Dataset } from '../data';
import { featureSize } from '../data';
import { Rng } from '../rng';
import { matMulT } from '../matmul';
import { tf } from '../tf';
import type { WeightformerConfig } from './config';
import { canonicalConfig, checkWeightformerConfig } from './config';
import type { AlignmentRecord } from './family';
import { familyOf } from './family';
import type { Layout, ParamsOf, SetArrays, StudentArch, StudentParams, ZooStats } from './tokens';
import { layoutOf, tokenSize, zooStats } from './tokens';

export { rowsToMlpTensors } from './family';

/**
 * A trained (or fresh) WeightFormer: everything needed to consolidate an ensemble of its architecture.
 * `A` is the student architecture type: the default (MLP) keeps MLP code typed as before;
 * `WeightformerModel<CnnArchitecture>` is a CNN one, `WeightformerModel<StudentArch>` either (a loaded file).
 */
export interface WeightformerModel<A extends StudentArch = ArchitectureSpec> {
  version: 1;
  config: WeightformerConfig;
  arch: A;
  /** The family's signature of `arch` (`architectureSignature`, `cnnSignature`): only ensembles with it can be consolidated. */
  signature: string;
  /** The teacher every ensemble is aligned to before it is read (its row positions are the embeddings'). */
  reference: ParamsOf<A>;
  /**
   * How ensembles are aligned to `reference`: absent for weight matching (every model before the option,
   * and its file, unchanged); `{method: 'activations', samples}` when the model was trained on
   * activation-matched teachers, so generating with it must match them the same way (`generateStudent`
   * then needs the consolidation set).
   */
  alignment?: AlignmentRecord;
  /** Zoo statistics: token normalisation, the per-parameter delta scale, and the probe batch. */
  stats: ZooStats;
  /** The learned tensors by name, in `paramSpecs` order; shapes come from `paramSpecs(arch, config)`. */
  params: Record<string, Float32Array>;
}

export interface ParamSpec {
  name: string;
  shape: number[];
  /** Standard deviation of the normal initialisation; 0 initialises to zeros. */
  std: number;
}

/** The model's tensors, in a fixed order (the order of flat optimiser state and of the file). */
export function paramSpecs(arch: StudentArch, config: WeightformerConfig): ParamSpec[] {
  const layout = layoutOf(arch);
  const { d } = config;
  const hidden = Math.round(config.mlpRatio * d);
  const residualStd = 1 / Math.sqrt(2 * Math.max(1, config.blocks));
  const specs: ParamSpec[] = [];
  layout.layers.forEach((L, l) => {
    const n = tokenSize(L, config);
    specs.push({ name: `in.${l}.w`, shape: [n, d], std: 1 / Math.sqrt(n) });
    specs.push({ name: `in.${l}.b`, shape: [d], std: 0 });
  });
  if (config.contentGate) specs.push({ name: 'gate', shape: [d], std: 0 });
  specs.push({ name: 'emb.layer', shape: [layout.layers.length, d], std: 0.5 });
  specs.push({ name: 'emb.row', shape: [layout.totalRows, d], std: 0.5 });
  for (let i = 0; i < config.blocks; i++) {
    for (const kind of ['set', 'row']) {
      specs.push({ name: `block.${i}.${kind}.qkv`, shape: [d, 3 * d], std: 1 / Math.sqrt(d) });
      specs.push({ name: `block.${i}.${kind}.out`, shape: [d, d], std: residualStd / Math.sqrt(d) });
    }
    specs.push({ name: `block.${i}.mlp.w1`, shape: [d, hidden], std: Math.sqrt(2 / d) });
    specs.push({ name: `block.${i}.mlp.b1`, shape: [hidden], std: 0 });
    specs.push({ name: `block.${i}.mlp.w2`, shape: [hidden, d], std: residualStd / Math.sqrt(hidden) });
    specs.push({ name: `block.${i}.mlp.b2`, shape: [d], std: 0 });
  }
  layout.layers.forEach((L, l) => {
    specs.push({ name: `out.${l}.w`, shape: [d, L.rowSize], std: 0 });
    specs.push({ name: `out.${l}.b`, shape: [L.rowSize], std: 0 });
  });
  if (config.mixing) specs.push({ name: 'mix.w', shape: [d, 1], std: 0 });
  return specs;
}

export function paramCountOf(arch: StudentArch, config: WeightformerConfig): number {
  return paramSpecs(arch, config).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}

/**
 * A fresh WeightFormer for `arch`: the zoo is aligned to `reference` to compute the stored statistics,
 * the weights are drawn from `seed`, and the output adapters are zero (it returns the aligned average
 * until trained). `probe` (≥ `config.probeSize` examples; the first ones are used) is required with
 * probe tokens and stored with the model. `aligned`: the zoo already aligned to `reference` by another
 * method than weight matching (activation matching is asynchronous and needs data, so the caller does
 * it, `alignTeachers`), and the record of that method, stored with the model.
 *
 * @example
 * const model = initWeightformer(arch, weightformerConfig({ d: 64 }), zoo[0], zoo, 7);
 * const student = await generateStudent(model, ensemble); // = aligned average before meta-training
 */
export function initWeightformer<A extends StudentArch>(
  arch: A,
  config: WeightformerConfig,
  reference: ParamsOf<A>,
  zoo: Array<ParamsOf<A>>,
  seed: number,
  probe?: Dataset,
  aligned?: { alignment: AlignmentRecord; zoo: Array<ParamsOf<A>> },
): WeightformerModel<A> {
  const family = familyOf(arch);
  family.checkArch(arch);
  checkWeightformerConfig(config);
  if (config.probeTokens && !family.probeTokens) throw new InputError(`probe tokens are not supported for ${family.name} students`);
  const ref: StudentParams = reference;
  family.checkParams(ref, arch);
  for (const p of zoo as StudentParams[]) family.checkParams(p, arch);
  const layout = layoutOf(arch);
  if (aligned && aligned.zoo.length !== zoo.length) throw new InputError(`the aligned zoo has ${aligned.zoo.length} teachers, the zoo ${zoo.length}`);
  for (const p of (aligned?.zoo ?? []) as StudentParams[]) family.checkParams(p, arch);
  const alignedZoo = aligned ? (aligned.zoo as StudentParams[]) : (zoo as StudentParams[]).map((p) => family.align(ref, p));
  let probeBatch: { x: Float32Array; n: number } | null = null;
  if (config.probeTokens) {
    if (!probe || probe.n < config.probeSize) {
      throw new InputError(`probe tokens need a probe dataset of at least ${config.probeSize} examples`);
    }
    const inputSize = family.inputSize(arch);
    if (featureSize(probe) !== inputSize) throw new InputError('the probe data does not fit the architecture');
    probeBatch = { x: probe.x.slice(0, config.probeSize * inputSize), n: config.probeSize };
  }
  const stats = zooStats(layout, config, alignedZoo, probeBatch);
  const rng = new Rng(seed);
  const params: Record<string, Float32Array> = {};
  for (const s of paramSpecs(arch, config)) {
    const v = new Float32Array(s.shape.reduce((a, b) => a * b, 1));
    if (s.std > 0) for (let i = 0; i < v.length; i++) v[i] = rng.normal(0, s.std);
    params[s.name] = v;
  }
  return {
    version: 1,
    config: canonicalConfig(config),
    arch: family.cloneArch(arch) as A,
    signature: family.signature(arch),
    reference,
    ...(aligned ? { alignment: { method: aligned.alignment.method, samples: aligned.alignment.samples } } : {}),
    stats,
    params,
  };
}

/** Tensors that depend only on the model, uploaded once per use of it. */
export interface ModelConstants {
  layout: Layout;
  config: WeightformerConfig;
  /** One-hot layer of each row, [R, L]. */
  layerOneHot: tf.Tensor2D;
  /** Additive attention mask keeping axial attention inside a layer, [R, R]; null with cross-layer attention. */
  mask: tf.Tensor2D | null;
  /** Per layer [rows, rowSize]. */
  scale: tf.Tensor2D[];
  /**
   * Per layer with `inputUnit` (CNN) and mixing: [rowSize, previous layer's rows], the one-hot map of
   * each column to the unit it reads (zero rows for bias and BN entries); null elsewhere.
   */
  select: Array<tf.Tensor2D | null>;
  /** Per layer with a `varianceColumn`: [rows, 1], the zoo's relative spread of each variance (≤ 1); null elsewhere. */
  varianceScale: Array<tf.Tensor2D | null>;
}

export function modelConstants(m: Pick<WeightformerModel<StudentArch>, 'arch' | 'config' | 'stats'>): ModelConstants {
  const layout = layoutOf(m.arch);
  const R = layout.totalRows;
  const L = layout.layers.length;
  const oneHot = new Float32Array(R * L);
  const layerOfRow = new Int32Array(R);
  layout.layers.forEach((layer, l) => {
    for (let j = 0; j < layer.rows; j++) {
      oneHot[(layer.rowOffset + j) * L + l] = 1;
      layerOfRow[layer.rowOffset + j] = l;
    }
  });
  let mask: tf.Tensor2D | null = null;
  if (!m.config.crossLayer && L > 1) {
    const a = new Float32Array(R * R);
    for (let i = 0; i < R; i++) for (let j = 0; j < R; j++) if (layerOfRow[i] !== layerOfRow[j]) a[i * R + j] = -1e9;
    mask = tf.tensor2d(a, [R, R]);
  }
  return {
    layout,
    config: m.config,
    layerOneHot: tf.tensor2d(oneHot, [R, L]),
    mask,
    scale: layout.layers.map((layer, l) => tf.tensor2d(m.stats.scale[l] ?? new Float32Array(), [layer.rows, layer.rowSize])),
    select: layout.layers.map((layer, l) => {
      const prev = layout.layers[l - 1];
      if (!m.config.mixing || !layer.inputUnit || !prev) return null;
      const a = new Float32Array(layer.rowSize * prev.rows);
      layer.inputUnit.forEach((u, k) => {
        if (u >= 0) a[k * prev.rows + u] = 1;
      });
      return tf.tensor2d(a, [layer.rowSize, prev.rows]);
    }),
    varianceScale: layout.layers.map((layer, l) => {
      const vc = layer.varianceColumn;
      if (vc === undefined) return null;
      const center = m.stats.center[l] ?? new Float32Array();
      const scale = m.stats.scale[l] ?? new Float32Array();
      // A unit of delta moves a variance by the zoo's relative spread (std / mean), capped at 1 so that a
      // channel whose variance is ~0 in the zoo cannot make the factor explode.
      const rel = new Float32Array(layer.rows);
      for (let r = 0; r < layer.rows; r++) {
        const s = scale[r * layer.rowSize + vc] ?? 0;
        const mean = center[r * layer.rowSize + vc] ?? 0;
        rel[r] = s / Math.max(mean, s, 1e-12);
      }
      return tf.tensor2d(rel, [layer.rows, 1]);
    }),
  };
}

export function disposeModelConstants(c: ModelConstants): void {
  const extra = [...c.select, ...c.varianceScale].filter((t): t is tf.Tensor2D => t !== null);
  tf.dispose([c.layerOneHot, ...c.scale, ...(c.mask ? [c.mask] : []), ...extra]);
}

/** The tensors of one teacher set. */
export interface SetTensors {
  T: number;
  tokens: tf.Tensor2D[];
  base: tf.Tensor2D[];
  rowsRDT: tf.Tensor3D[] | null;
}

export function uploadSet(c: ModelConstants, s: SetArrays): SetTensors {
  return {
    T: s.T,
    tokens: c.layout.layers.map((L, l) => tf.tensor2d(s.tokens[l] ?? new Float32Array(), [s.T * L.rows, tokenSize(L, c.config)])),
    base: c.layout.layers.map((L, l) => tf.tensor2d(s.base[l] ?? new Float32Array(), [L.rows, L.rowSize])),
    rowsRDT: s.rowsRDT ? c.layout.layers.map((L, l) => tf.tensor3d(s.rowsRDT?.[l] ?? new Float32Array(), [L.rows, L.rowSize, s.T])) : null,
  };
}

export function disposeSet(s: SetTensors): void {
  tf.dispose([...s.tokens, ...s.base, ...(s.rowsRDT ?? [])]);
}

export type Params = Record<string, tf.Tensor>;

export function param(p: Params, name: string): tf.Tensor {
  const t = p[name];
  if (!t) throw new Error(`weightformer: parameter ${name} missing`);
  return t;
}

/** Layer norm over the last axis without gain and bias (those fold into the linear map that follows). */
export function norm(x: tf.Tensor2D): tf.Tensor2D {
  const mu = tf.mean(x, 1, true);
  const xc = tf.sub(x, mu);
  const variance = tf.mean(tf.square(xc), 1, true);
  return tf.mul(xc, tf.rsqrt(tf.add(variance, 1e-5)));
}

/** GELU (exact, via erf): smooth, so finite-difference checks of the whole model are meaningful. */
export function gelu(x: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
}

/** Multi-head attention within groups: `toGroups` maps [N, 3d] to q/k/v of [G·heads, n, dh] and back. */
function attention(
  h: tf.Tensor2D,
  qkvW: tf.Tensor,
  outW: tf.Tensor,
  heads: number,
  groupShape: { outer: number; inner: number; across: 'teachers' | 'rows' },
  mask: tf.Tensor2D | null,
): tf.Tensor2D {
  const [N = 0, d = 0] = h.shape;
  const dh = d / heads;
  const { outer: T, inner: R } = groupShape;
  const qkv = tf.reshape(tf.matMul(norm(h), qkvW as tf.Tensor2D), [T, R, 3 * heads, dh]);
  let o: tf.Tensor;
  if (groupShape.across === 'teachers') {
    // Each row r is a set of T tokens: batch = R·heads, sequence = T.
    const [q, k, v] = tf.split(tf.transpose(qkv, [1, 2, 0, 3]), 3, 1).map((x) => tf.reshape(x, [R * heads, T, dh]));
    const a = tf.softmax(tf.mul(matMulT(q as tf.Tensor3D, k as tf.Tensor3D, false, true), 1 / Math.sqrt(dh)));
    o = tf.transpose(tf.reshape(tf.matMul(a, v as tf.Tensor3D), [R, heads, T, dh]), [2, 0, 1, 3]);
  } else {
    // Each teacher's rows are a sequence: batch = T·heads, sequence = R.
    const [q, k, v] = tf.split(tf.transpose(qkv, [0, 2, 1, 3]), 3, 1).map((x) => tf.reshape(x, [T * heads, R, dh]));
    let s = tf.mul(matMulT(q as tf.Tensor3D, k as tf.Tensor3D, false, true), 1 / Math.sqrt(dh));
    if (mask) s = tf.add(s, mask);
    o = tf.transpose(tf.reshape(tf.matMul(tf.softmax(s), v as tf.Tensor3D), [T, heads, R, dh]), [0, 2, 1, 3]);
  }
  return tf.add(h, tf.matMul(tf.reshape(o, [N, d]) as tf.Tensor2D, outW as tf.Tensor2D));
}

/**
 * The student's rows per layer ([rows, rowSize] each) for one teacher set, as a differentiable function
 * of the model's parameter tensors `p`. Call inside `tf.tidy`.
 */
export function studentRows(p: Params, c: ModelConstants, s: SetTensors): tf.Tensor2D[] {
  const { layout, config } = c;
  const { d, heads } = config;
  const T = s.T;
  const R = layout.totalRows;
  const perLayer = layout.layers.map((L, l) => {
    const x = s.tokens[l];
    if (!x) throw new Error(`weightformer: tokens of layer ${l} missing`);
    let z: tf.Tensor = tf.add(tf.matMul(x, param(p, `in.${l}.w`) as tf.Tensor2D), param(p, `in.${l}.b`));
    if (config.contentGate) z = tf.mul(z, param(p, 'gate'));
    return tf.reshape(z, [T, L.rows, d]);
  });
  const embed = tf.add(param(p, 'emb.row'), tf.matMul(c.layerOneHot, param(p, 'emb.layer') as tf.Tensor2D));
  const joined = perLayer.length === 1 ? (perLayer[0] as tf.Tensor) : tf.concat(perLayer, 1);
  let h = tf.reshape(tf.add(joined, embed), [T * R, d]) as tf.Tensor2D;
  for (let i = 0; i < config.blocks; i++) {
    h = attention(h, param(p, `block.${i}.set.qkv`), param(p, `block.${i}.set.out`), heads, { outer: T, inner: R, across: 'teachers' }, null);
    h = attention(h, param(p, `block.${i}.row.qkv`), param(p, `block.${i}.row.out`), heads, { outer: T, inner: R, across: 'rows' }, c.mask);
    const u = gelu(tf.add(tf.matMul(norm(h), param(p, `block.${i}.mlp.w1`) as tf.Tensor2D), param(p, `block.${i}.mlp.b1`)));
    h = tf.add(h, tf.add(tf.matMul(u as tf.Tensor2D, param(p, `block.${i}.mlp.w2`) as tf.Tensor2D), param(p, `block.${i}.mlp.b2`)));
  }
  const hn = norm(h);
  const pooled = tf.reshape(tf.mean(tf.reshape(hn, [T, R * d]), 0), [R, d]) as tf.Tensor2D;
  // Mixing logits per (teacher, row): [T, R]. Zero-initialised head ⇒ uniform weights ⇒ the plain mean.
  const mixLogits = config.mixing ? tf.reshape(tf.matMul(hn, param(p, 'mix.w') as tf.Tensor2D), [T, R]) : null;
  return layout.layers.map((L, l) => {
    const rows = tf.slice(pooled, [L.rowOffset, 0], [L.rows, d]);
    const delta = tf.add(tf.matMul(rows, param(p, `out.${l}.w`) as tf.Tensor2D), param(p, `out.${l}.b`));
    let base: tf.Tensor = s.base[l] as tf.Tensor2D;
    const rdt = s.rowsRDT?.[l];
    if (mixLogits && rdt) base = tf.add(base, mixedCorrection(mixLogits, layout, l, T, rdt, c.select[l] ?? null));
    const rowsOut = tf.add(base, tf.mul(delta, c.scale[l] as tf.Tensor2D)) as tf.Tensor2D;
    const vc = L.varianceColumn;
    const vs = c.varianceScale[l];
    if (vc === undefined || !vs) return rowsOut;
    // BN running variance (the last column): base · positiveFactor(delta · relative spread) instead of
    // base + delta · spread. Same first-order step, but it stays > 0 whatever the delta (a negative
    // variance would make BN divide by √ε and wreck the student) and is exactly the base at delta 0.
    const head = tf.slice(rowsOut, [0, 0], [L.rows, vc]);
    const varianceBase = tf.slice(base, [0, vc], [L.rows, 1]);
    const x = tf.mul(tf.slice(delta, [0, vc], [L.rows, 1]), vs);
    return tf.concat([head, tf.mul(varianceBase, positiveFactor(x))], 1) as tf.Tensor2D;
  });
}

/**
 * 1 + x for x ≥ 0, 1 / (1 − x) for x < 0: positive, C¹ (slope 1 at 0 from both sides), and exactly 1 at
 * x = 0, so an untrained model returns the teachers' mean variance bit for bit (exp would need exp(0) to
 * be exactly 1 on every backend). Written as max(x, 0) + 1 / (1 − min(x, 0)) with min(x, 0) = x − max(x, 0):
 * the registered Maximum gradient passes dy where x ≥ 0, so the slope at exactly 0 is 1 and a
 * zero-initialised output adapter still gets a gradient (a ReLU-based form would pass 0 there and stay
 * stuck at 0 forever).
 */
function positiveFactor(x: tf.Tensor): tf.Tensor {
  const pos = tf.maximum(x, 0);
  const neg = tf.sub(x, pos);
  return tf.add(pos, tf.div(1, tf.sub(1, neg)));
}

/**
 * Σ_t (α_t − 1/T)·row_t for layer l, [rows, rowSize]: the mixing-weighted mean minus the plain mean.
 * Written as a correction of the host-computed mean so that uniform weights (an untrained head: softmax
 * of zeros is exactly 1/T) leave the aligned average bit for bit. Element (r, k) of a later layer is
 * weighted by softmax_t(logit[t, unit r] + logit[t, input unit k]): the incoming and outgoing weights of
 * a hidden unit are mixed with the same teacher weights (unit-consistent).
 */
function mixedCorrection(logits: tf.Tensor, layout: Layout, l: number, T: number, rdt: tf.Tensor3D, select: tf.Tensor2D | null): tf.Tensor2D {
  const L = layout.layers[l];
  if (!L) throw new Error(`layer ${l} missing`);
  const own = tf.reshape(tf.transpose(tf.slice(logits, [0, L.rowOffset], [T, L.rows])), [L.rows, 1, T]);
  let e: tf.Tensor = own;
  const prev = layout.layers[l - 1];
  if (prev && select) {
    // CNN: column k takes the logit of the unit it reads (select is one-hot; zero rows for bias and BN).
    const inputs = tf.transpose(tf.slice(logits, [0, prev.rowOffset], [T, prev.rows])); // [prevRows, T]
    e = tf.add(own, tf.reshape(tf.matMul(select, inputs as tf.Tensor2D), [1, L.rowSize, T]));
  } else if (prev) {
    const inputs = tf.transpose(tf.slice(logits, [0, prev.rowOffset], [T, prev.rows])); // [inSize, T]
    const withBias = tf.concat([inputs, tf.zeros([1, T])], 0); // the bias column follows the row only
    e = tf.add(own, tf.reshape(withBias, [1, L.rowSize, T]));
  }
  const alpha = tf.softmax(e);
  return tf.sum(tf.mul(tf.sub(alpha, tf.scalar(1 / T)), rdt), 2) as tf.Tensor2D;
}

/** Uploads the model's parameters, in `paramSpecs` order. */
export function uploadParams(m: WeightformerModel<StudentArch>): { names: string[]; tensors: tf.Tensor[] } {
  const specs = paramSpecs(m.arch, m.config);
  return {
    names: specs.map((s) => s.name),
    tensors: specs.map((s) => {
      const v = m.params[s.name];
      if (!v) throw new InputError(`weightformer: parameter ${s.name} missing`);
      return tf.tensor(new Float32Array(v), s.shape, 'float32');
    }),
  };
}

export function asParams(names: string[], tensors: tf.Tensor[]): Params {
  const p: Params = {};
  names.forEach((n, i) => {
    const t = tensors[i];
    if (t) p[n] = t;
  });
  return p;
}
