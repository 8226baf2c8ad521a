/**
 * Aligning ViT teachers to a reference teacher, and averaging them.
 *
 * The symmetries used, per block, all of which leave the network's function unchanged:
 * - attention heads, permuted as whole heads: head h's q, k and v output columns [h·dh, (h + 1)·dh)
 *   move together, and with them the rows of `proj` that read head h's output;
 * - optionally, units within a head: the q and k dims jointly (a score is Σ_d q_d·k_d, invariant under
 *   one permutation of d applied to both), and independently the v dims with the `proj` rows reading
 *   them;
 * - MLP hidden units: fc1's output columns and biases with fc2's input rows.
 *
 * Not used: the residual stream (dim) is shared by the patch embedding, the position embeddings, every
 * block's input and output projections and every LayerNorm. Permuting it is function-preserving only if
 * the permutation is applied to all of them at once (LayerNorm's mean and variance are permutation
 * invariant, but its γ, β and every reader and writer must follow), so it is one global permutation
 * coupled to every layer; weight matching it would need all blocks' similarities at once, and the
 * heads and MLP units already carry most of the freedom. Also not used: the continuous symmetries (q·A
 * with k·A⁻ᵀ, v·B with B⁻¹·proj) — averaging needs a discrete correspondence.
 *
 * Matching (Git Re-Basin's weight matching, as `align.ts`): because the residual stream stays put, each
 * block's permutations depend on nothing outside the block, so one pass is exact — no iteration over
 * layers as for MLPs and CNNs. A unit's signature is its incoming weights and bias plus its outgoing
 * weights. Heads are matched hierarchically: for every (reference head, teacher head) pair, the best
 * within-head permutations are found first (two small assignments: q/k dims, v dims), and the pair's
 * similarity is what they achieve; then the heads are assigned on those scores.
 */
import { alignedAverageOf, averageArrays, checkSameSignature, maximizeAssignment } from '../align';
import type { MlpLayer } from '../mlp';
import type { VitBlock, VitParams } from './architecture';
import { cloneVitParams, vitParamArrays, vitSignature } from './architecture';

/**
 * How one block's units move. `heads[i]` is the old index of new head i; `qk[i]` and `v[i]` reorder the
 * dims inside new head i (`qk[i][d]` = old dim, within old head `heads[i]`, of new dim d); `mlp[u]` is the
 * old index of new hidden unit u.
 */
export interface VitBlockPermutation {
  heads: Int32Array;
  qk: Int32Array[];
  v: Int32Array[];
  mlp: Int32Array;
}

/** One per block. */
export type VitPermutations = VitBlockPermutation[];

export interface VitAlignOptions {
  /** Also permute dims within each head (q/k jointly, v with proj). Default true. */
  withinHeads?: boolean;
}

function checkSameArchitecture(list: VitParams[]): void {
  checkSameSignature(list, vitSignature);
}

const identity = (n: number): Int32Array => Int32Array.from({ length: n }, (_, i) => i);

/** Permutations that move nothing. */
export function identityVitPermutations(p: VitParams): VitPermutations {
  const dh = p.patchEmbed.outSize / p.heads;
  return p.blocks.map((b) => ({
    heads: identity(p.heads),
    qk: Array.from({ length: p.heads }, () => identity(dh)),
    v: Array.from({ length: p.heads }, () => identity(dh)),
    mlp: identity(b.fc1.outSize),
  }));
}

function isPermutation(perm: Int32Array | undefined, n: number): boolean {
  if (!perm || perm.length !== n) return false;
  const seen = new Uint8Array(n);
  for (const v of perm) {
    if (!(v >= 0 && v < n) || seen[v]) return false;
    seen[v] = 1;
  }
  return true;
}

/** Column maps (new column → old column) of q/k and of v/proj-rows, from head and within-head orders. */
function columnMaps(perm: VitBlockPermutation, heads: number, dh: number): { qk: Int32Array; v: Int32Array } {
  const qk = new Int32Array(heads * dh);
  const v = new Int32Array(heads * dh);
  for (let h = 0; h < heads; h++) {
    const old = perm.heads[h] ?? 0;
    for (let d = 0; d < dh; d++) {
      qk[h * dh + d] = old * dh + (perm.qk[h]?.[d] ?? 0);
      v[h * dh + d] = old * dh + (perm.v[h]?.[d] ?? 0);
    }
  }
  return { qk, v };
}

/** `l` with its output columns (and biases) reordered: new column c is old column cols[c]. */
function permuteOutputs(l: MlpLayer, target: MlpLayer, cols: Int32Array): void {
  for (let i = 0; i < l.inSize; i++) {
    for (let c = 0; c < l.outSize; c++) target.w[i * l.outSize + c] = l.w[i * l.outSize + (cols[c] ?? 0)] ?? 0;
  }
  for (let c = 0; c < l.outSize; c++) target.b[c] = l.b[cols[c] ?? 0] ?? 0;
}

/** `l` with its input rows reordered: new row r is old row rows[r]. */
function permuteInputs(l: MlpLayer, target: MlpLayer, rows: Int32Array): void {
  for (let r = 0; r < l.inSize; r++) target.w.set(l.w.subarray((rows[r] ?? 0) * l.outSize, ((rows[r] ?? 0) + 1) * l.outSize), r * l.outSize);
}

/**
 * `p` with each block's heads, within-head dims and MLP hidden units reordered as `perms` says. The
 * function is unchanged (see the top of this file).
 */
export function permuteVitUnits(p: VitParams, perms: VitPermutations): VitParams {
  if (perms.length !== p.blocks.length) throw new Error(`one permutation per block (${p.blocks.length}), got ${perms.length}`);
  const heads = p.heads;
  const dh = p.patchEmbed.outSize / heads;
  const out = cloneVitParams(p);
  p.blocks.forEach((b, i) => {
    const perm = perms[i] as VitBlockPermutation;
    const ok =
      isPermutation(perm.heads, heads) &&
      perm.qk.length === heads &&
      perm.v.length === heads &&
      perm.qk.every((q) => isPermutation(q, dh)) &&
      perm.v.every((v) => isPermutation(v, dh)) &&
      isPermutation(perm.mlp, b.fc1.outSize);
    if (!ok) throw new Error(`block ${i}: not a permutation of ${heads} heads of ${dh} dims and ${b.fc1.outSize} hidden units`);
    const target = out.blocks[i] as VitBlock;
    const cols = columnMaps(perm, heads, dh);
    permuteOutputs(b.q, target.q, cols.qk);
    permuteOutputs(b.k, target.k, cols.qk);
    permuteOutputs(b.v, target.v, cols.v);
    permuteInputs(b.proj, target.proj, cols.v);
    permuteOutputs(b.fc1, target.fc1, perm.mlp);
    permuteInputs(b.fc2, target.fc2, perm.mlp);
  });
  return out;
}

/** ⟨column a of `r`, column b of `t`⟩ over the inputs, plus the biases' product (incoming signature). */
function incoming(r: MlpLayer, a: number, t: MlpLayer, b: number): number {
  let s = (r.b[a] ?? 0) * (t.b[b] ?? 0);
  for (let i = 0; i < r.inSize; i++) s += (r.w[i * r.outSize + a] ?? 0) * (t.w[i * t.outSize + b] ?? 0);
  return s;
}

/** ⟨row a of `r`, row b of `t`⟩ (outgoing signature: how the next layer reads the unit). */
function outgoing(r: MlpLayer, a: number, t: MlpLayer, b: number): number {
  let s = 0;
  for (let j = 0; j < r.outSize; j++) s += (r.w[a * r.outSize + j] ?? 0) * (t.w[b * t.outSize + j] ?? 0);
  return s;
}

/** The assignment maximising Σ sim[i][perm[i]], and that sum. */
function assign(sim: Float64Array, n: number): { perm: Int32Array; score: number } {
  const perm = maximizeAssignment(sim, n);
  let score = 0;
  for (let i = 0; i < n; i++) score += sim[i * n + (perm[i] ?? 0)] ?? 0;
  return { perm, score };
}

function matchBlock(ref: VitBlock, tea: VitBlock, heads: number, withinHeads: boolean): VitBlockPermutation {
  const dim = ref.q.outSize;
  const dh = dim / heads;
  // Per (reference head a, teacher head b): the best within-head orders and what they score.
  const inner: Array<{ qk: { perm: Int32Array; score: number }; v: { perm: Int32Array; score: number } }> = [];
  const headSim = new Float64Array(heads * heads);
  for (let a = 0; a < heads; a++) {
    for (let b = 0; b < heads; b++) {
      const qkSim = new Float64Array(dh * dh);
      const vSim = new Float64Array(dh * dh);
      for (let d = 0; d < dh; d++) {
        for (let e = 0; e < dh; e++) {
          const ra = a * dh + d;
          const tb = b * dh + e;
          qkSim[d * dh + e] = incoming(ref.q, ra, tea.q, tb) + incoming(ref.k, ra, tea.k, tb);
          vSim[d * dh + e] = incoming(ref.v, ra, tea.v, tb) + outgoing(ref.proj, ra, tea.proj, tb);
        }
      }
      const pair = withinHeads
        ? { qk: assign(qkSim, dh), v: assign(vSim, dh) }
        : { qk: { perm: identity(dh), score: trace(qkSim, dh) }, v: { perm: identity(dh), score: trace(vSim, dh) } };
      inner.push(pair);
      headSim[a * heads + b] = pair.qk.score + pair.v.score;
    }
  }
  const headPerm = maximizeAssignment(headSim, heads);
  const chosen = Array.from(headPerm, (b, a) => inner[a * heads + b] ?? assert(`head pair ${a}, ${b}`));
  const hidden = ref.fc1.outSize;
  const mlpSim = new Float64Array(hidden * hidden);
  for (let u = 0; u < hidden; u++) {
    for (let w = 0; w < hidden; w++) mlpSim[u * hidden + w] = incoming(ref.fc1, u, tea.fc1, w) + outgoing(ref.fc2, u, tea.fc2, w);
  }
  return { heads: headPerm, qk: chosen.map((c) => c.qk.perm), v: chosen.map((c) => c.v.perm), mlp: maximizeAssignment(mlpSim, hidden) };
}

function trace(sim: Float64Array, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += sim[i * n + i] ?? 0;
  return s;
}

function assert(what: string): never {
  throw new Error(`ViT alignment: ${what} missing`);
}

/** The permutations weight matching chooses to align `teacher` to `reference`, block by block. */
export function matchVitWeights(reference: VitParams, teacher: VitParams, options: VitAlignOptions = {}): VitPermutations {
  checkSameArchitecture([reference, teacher]);
  const withinHeads = options.withinHeads ?? true;
  return reference.blocks.map((ref, i) => matchBlock(ref, teacher.blocks[i] ?? assert(`block ${i}`), reference.heads, withinHeads));
}

/**
 * `teacher` with its heads (and within-head dims) and MLP hidden units permuted to match `reference`.
 * Function-preserving.
 *
 * @example
 * const aligned = teachers.map((t) => alignVitToReference(teachers[0], t));
 */
export function alignVitToReference(reference: VitParams, teacher: VitParams, options: VitAlignOptions = {}): VitParams {
  return permuteVitUnits(teacher, matchVitWeights(reference, teacher, options));
}

/** Element-wise mean of every array (accumulated in float64). */
export function averageVitParams(list: VitParams[]): VitParams {
  checkSameArchitecture(list);
  return averageArrays(list, cloneVitParams, vitParamArrays);
}

/** The naive baseline: average the teachers as they are (head i with head i, unit i with unit i). */
export function naiveAverageVit(list: VitParams[]): VitParams {
  return averageVitParams(list);
}

/** Aligns every teacher to `list[referenceIndex]`, then averages. */
export function alignedAverageVit(list: VitParams[], referenceIndex = 0, options: VitAlignOptions = {}): VitParams {
  return alignedAverageOf(list, referenceIndex, (reference, p) => alignVitToReference(reference, p, options), averageVitParams);
}
