/**
 * Host-side token building: aligned teachers → rows, normalised tokens, residual bases.
 *
 * A token is one output unit of one layer of one teacher: for an MLP `[w[:, j], b[j]]` (inSize + 1
 * values), for a CNN the rows of `cnn/rows.ts` (a conv channel's kernel slice, bias and BN entries; a
 * dense unit's incoming weights and bias); then, with probe tokens (MLP only), that unit's
 * pre-activations on the model's probe batch. Everything here is plain float arithmetic on the host
 * (float64 accumulation), so it is identical on every backend and costs no tensor ops; the tensors of one
 * forward pass are uploaded from these arrays.
 */
import type { ArchitectureSpec } from '../../spec/types';
import { InputError } from '../../util/errors';
import type { CnnArchitecture, CnnParams } from '../cnn/architecture';
import { cnnFlatSize } from '../cnn/architecture';
import { cnnRowsLayout, cnnToRows } from '../cnn/rows';
import type { MlpParams } from '../mlp';
import type { ResnetArchitecture, ResnetParams } from '../resnet/architecture';
import { resnetToRows } from '../resnet/rows';
import type { VitArchitecture, VitParams } from '../vit/architecture';
import { vitToRows } from '../vit/rows';
import type { WeightformerConfig } from './config';
import { resnetLayoutOf, vitLayoutOf } from './layouts';

export interface LayerLayout {
  /** Output units of the layer = tokens per teacher. */
  rows: number;
  /** Incoming weights per row (MLP: the layer's input size; conv: k·k·cin). */
  inSize: number;
  /** The parameters of one row: inSize weights, the bias, and (conv with BN) γ, β, running mean, running variance. */
  rowSize: number;
  /** Index of the layer's first row among all rows of the network. */
  rowOffset: number;
  /**
   * CNN layers only (absent for MLPs, whose code paths stay as they were): for each of the rowSize
   * columns, the unit (row) of the previous layer that the column's weight reads, or −1 (bias, BN entries,
   * and the first layer, which reads the input). A conv column t·cin + ci reads channel ci at tap t; the
   * first dense layer's column (i·w + j)·c + ch reads channel ch at position (i, j). Mixing weights and
   * the outgoing-weight agreement statistic follow a unit through these.
   */
  inputUnit?: Int32Array;
  /**
   * A column that holds a variance (a conv row's BN running variance, always its last column): predicted
   * multiplicatively so that it stays positive (see `positiveFactor` in model.ts).
   */
  varianceColumn?: number;
}

export interface Layout {
  layers: LayerLayout[];
  totalRows: number;
}

/** The student families a WeightFormer can read and write (dispatch on `family`). */
export type StudentArch = ArchitectureSpec | CnnArchitecture | ResnetArchitecture | VitArchitecture;
export type StudentParams = MlpParams | CnnParams | ResnetParams | VitParams;
/** The parameters of an architecture type: `ParamsOf<ArchitectureSpec>` is `MlpParams`. */
export type ParamsOf<A extends StudentArch> = A extends CnnArchitecture
  ? CnnParams
  : A extends ResnetArchitecture
    ? ResnetParams
    : A extends VitArchitecture
      ? VitParams
      : MlpParams;

/** The family of a parameter object (MLP parameters carry no `family` field). */
export function paramsFamily(p: StudentParams): 'mlp' | 'cnn' | 'resnet' | 'vit' {
  return 'family' in p ? p.family : 'mlp';
}

export function isCnnParams(p: StudentParams): p is CnnParams {
  return (p as CnnParams).family === 'cnn';
}

export function isCnnArch(arch: StudentArch): arch is CnnArchitecture {
  return arch.family === 'cnn';
}

/** The rows of any student (MLP: `teacherRows`; CNN: `cnnToRows`; ResNet, ViT: their rows views). */
export function rowsOf(p: StudentParams): Float32Array[] {
  if (!('family' in p)) return teacherRows(p);
  switch (p.family) {
    case 'cnn':
      return cnnToRows(p);
    case 'resnet':
      return resnetToRows(p);
    case 'vit':
      return vitToRows(p);
  }
}

export function layoutOf(arch: StudentArch): Layout {
  switch (arch.family) {
    case 'cnn':
      return cnnLayoutOf(arch);
    case 'resnet':
      return resnetLayoutOf(arch);
    case 'vit':
      return vitLayoutOf(arch);
    default:
      return mlpLayoutOf(arch);
  }
}

function cnnLayoutOf(arch: CnnArchitecture): Layout {
  const rowsLayout = cnnRowsLayout(arch);
  const k = arch.kernelSize;
  const layers: LayerLayout[] = [];
  let offset = 0;
  let cin = arch.inputShape[2];
  const blocks = arch.channels.length;
  rowsLayout.forEach((r, l) => {
    const inSize = r.rowSize - 1 - (r.kind === 'conv' && arch.batchNorm ? 4 : 0);
    const layer: LayerLayout = { rows: r.rows, inSize, rowSize: r.rowSize, rowOffset: offset };
    if (l > 0) {
      const map = new Int32Array(r.rowSize).fill(-1);
      if (r.kind === 'conv') {
        for (let t = 0; t < k * k; t++) for (let ci = 0; ci < cin; ci++) map[t * cin + ci] = ci;
      } else if (l === blocks) {
        // The flatten is HWC with the channel fastest (see cnn/architecture.ts).
        const c = arch.channels[blocks - 1] ?? 1;
        if (inSize !== cnnFlatSize(arch)) throw new Error('cnn layout: flatten size mismatch');
        for (let i = 0; i < inSize; i++) map[i] = i % c;
      } else {
        for (let i = 0; i < inSize; i++) map[i] = i;
      }
      layer.inputUnit = map;
    }
    if (r.kind === 'conv') {
      if (arch.batchNorm) layer.varianceColumn = r.rowSize - 1;
      cin = r.rows;
    }
    layers.push(layer);
    offset += r.rows;
  });
  return { layers, totalRows: offset };
}

function mlpLayoutOf(arch: ArchitectureSpec): Layout {
  const sizes = [arch.inputSize, ...arch.hidden, arch.outputSize];
  const layers: LayerLayout[] = [];
  let offset = 0;
  for (let l = 0; l + 1 < sizes.length; l++) {
    const inSize = sizes[l] ?? 0;
    const rows = sizes[l + 1] ?? 0;
    layers.push({ rows, inSize, rowSize: inSize + 1, rowOffset: offset });
    offset += rows;
  }
  return { layers, totalRows: offset };
}

/** Disagreement statistics per token with `agreementStats` (see `agreementFeatures`). */
export const AGREEMENT_FEATURES = 4;

/** Values per token of a layer: the row, the probe activations and the disagreement statistics, as enabled. */
export function tokenSize(layer: LayerLayout, config: WeightformerConfig): number {
  return layer.rowSize + (config.probeTokens ? config.probeSize : 0) + (config.agreementStats ? AGREEMENT_FEATURES : 0);
}

/**
 * Statistics of the aligned zoo, fixed at initialisation and stored with the model. They make the model's
 * inputs and outputs scale-free: tokens are deviations from the zoo's mean row, divided by one scalar per
 * layer, and the predicted delta is multiplied by the zoo's per-parameter spread.
 */
export interface ZooStats {
  /** Per layer, rows × rowSize: the mean aligned zoo row. */
  center: Float32Array[];
  /**
   * Per layer, rows × rowSize: each parameter's standard deviation across the aligned zoo (floored at a
   * tenth of the layer's mean), the per-parameter unit of the predicted delta. A constant, not the
   * current ensemble's spread, so that the teacher ablation is exactly "aligned mean + a learned fixed
   * correction" and the output scale does not jump with T.
   */
  scale: Float32Array[];
  /** Per layer: the RMS deviation of zoo rows from `center` (tokens are divided by it). */
  tokenNorm: number[];
  /** With probe tokens: the probe batch and the normalisation of the pre-activations on it. */
  probe: ProbeStats | null;
}

export interface ProbeStats {
  /** n × inputSize probe inputs (from the consolidation set). */
  x: Float32Array;
  n: number;
  /** Per layer, rows × n: the zoo's mean pre-activation of each unit on each probe example. */
  center: Float32Array[];
  /** Per layer: the RMS deviation of the zoo's pre-activations from `center`. */
  norm: number[];
}

/** Rows of each layer, rows × rowSize row-major: row j = [w[:, j], b[j]]. */
export function teacherRows(p: MlpParams): Float32Array[] {
  return p.layers.map((layer) => {
    const { inSize, outSize } = layer;
    const rowSize = inSize + 1;
    const out = new Float32Array(outSize * rowSize);
    for (let i = 0; i < inSize; i++) {
      for (let j = 0; j < outSize; j++) out[j * rowSize + i] = layer.w[i * outSize + j] ?? 0;
    }
    for (let j = 0; j < outSize; j++) out[j * rowSize + inSize] = layer.b[j] ?? 0;
    return out;
  });
}

/** The inverse of `teacherRows`. */
export function rowsToParams(rows: Float32Array[], layout: Layout, activation: MlpParams['activation']): MlpParams {
  return {
    activation,
    layers: layout.layers.map((L, l) => {
      const r = rows[l];
      if (!r || r.length !== L.rows * L.rowSize) throw new Error(`rowsToParams: layer ${l} has ${r?.length ?? 0} values`);
      const w = new Float32Array(L.inSize * L.rows);
      const b = new Float32Array(L.rows);
      for (let j = 0; j < L.rows; j++) {
        for (let i = 0; i < L.inSize; i++) w[i * L.rows + j] = r[j * L.rowSize + i] ?? 0;
        b[j] = r[j * L.rowSize + L.inSize] ?? 0;
      }
      return { w, b, inSize: L.inSize, outSize: L.rows };
    }),
  };
}

/**
 * Pre-activations of every unit on the probe inputs, per layer rows × n (unit j's n values contiguous),
 * computed on the host in float64 so they are the same on every backend.
 */
export function probePreactivations(p: MlpParams, x: Float32Array, n: number): Float32Array[] {
  const out: Float32Array[] = [];
  let h = Float64Array.from(x);
  p.layers.forEach((layer, l) => {
    const { inSize, outSize } = layer;
    const z = new Float64Array(n * outSize);
    for (let e = 0; e < n; e++) {
      for (let j = 0; j < outSize; j++) z[e * outSize + j] = layer.b[j] ?? 0;
      for (let i = 0; i < inSize; i++) {
        const xi = h[e * inSize + i] ?? 0;
        if (xi === 0) continue;
        const wRow = i * outSize;
        for (let j = 0; j < outSize; j++) z[e * outSize + j] = (z[e * outSize + j] ?? 0) + xi * (layer.w[wRow + j] ?? 0);
      }
    }
    const perUnit = new Float32Array(outSize * n);
    for (let e = 0; e < n; e++) for (let j = 0; j < outSize; j++) perUnit[j * n + e] = z[e * outSize + j] ?? 0;
    out.push(perUnit);
    if (l + 1 < p.layers.length) {
      h = z.map((v) => (p.activation === 'relu' ? Math.max(0, v) : Math.tanh(v)));
    }
  });
  return out;
}

function meanAndSpread(samples: Float32Array[], size: number): { mean: Float32Array; std: Float64Array; rms: number } {
  const sum = new Float64Array(size);
  for (const s of samples) for (let i = 0; i < size; i++) sum[i] = (sum[i] ?? 0) + (s[i] ?? 0);
  const mean = new Float64Array(size);
  for (let i = 0; i < size; i++) mean[i] = (sum[i] ?? 0) / samples.length;
  const sq = new Float64Array(size);
  for (const s of samples) {
    for (let i = 0; i < size; i++) {
      const dv = (s[i] ?? 0) - (mean[i] ?? 0);
      sq[i] = (sq[i] ?? 0) + dv * dv;
    }
  }
  const std = new Float64Array(size);
  let total = 0;
  for (let i = 0; i < size; i++) {
    std[i] = Math.sqrt((sq[i] ?? 0) / samples.length);
    total += (sq[i] ?? 0) / samples.length;
  }
  return { mean: Float32Array.from(mean), std, rms: Math.sqrt(total / Math.max(1, size)) };
}

/** The statistics of an aligned zoo (at least two teachers: a spread needs two). */
export function zooStats(
  layout: Layout,
  config: WeightformerConfig,
  alignedZoo: StudentParams[],
  probe: { x: Float32Array; n: number } | null,
): ZooStats {
  if (alignedZoo.length < 2) throw new InputError(`a WeightFormer zoo needs at least 2 teachers, got ${alignedZoo.length}`);
  const rows = alignedZoo.map(rowsOf);
  const center: Float32Array[] = [];
  const scale: Float32Array[] = [];
  const tokenNorm: number[] = [];
  layout.layers.forEach((L, l) => {
    const size = L.rows * L.rowSize;
    const { mean, std, rms } = meanAndSpread(rows.map((r) => r[l] ?? new Float32Array(size)), size);
    let meanStd = 0;
    for (const s of std) meanStd += s;
    meanStd /= size;
    const floor = Math.max(0.1 * meanStd, 1e-8);
    center.push(mean);
    scale.push(Float32Array.from(std, (s) => Math.max(s, floor)));
    tokenNorm.push(Math.max(rms, 1e-8));
  });
  let probeStats: ProbeStats | null = null;
  if (config.probeTokens) {
    if (!probe || probe.n !== config.probeSize) {
      throw new InputError(`probe tokens need a probe batch of ${config.probeSize} examples, got ${probe?.n ?? 0}`);
    }
    const acts = alignedZoo.map((p) => probePreactivations(mlpOnly(p), probe.x, probe.n));
    const pc: Float32Array[] = [];
    const pn: number[] = [];
    layout.layers.forEach((L, l) => {
      const size = L.rows * probe.n;
      const { mean, rms } = meanAndSpread(acts.map((a) => a[l] ?? new Float32Array(size)), size);
      pc.push(mean);
      pn.push(Math.max(rms, 1e-8));
    });
    probeStats = { x: new Float32Array(probe.x), n: probe.n, center: pc, norm: pn };
  }
  return { center, scale, tokenNorm, probe: probeStats };
}

/** Probe tokens are defined for MLPs only (a CNN unit's pre-activation is a whole feature map). */
function mlpOnly(p: StudentParams): MlpParams {
  if ('family' in p) throw new InputError(`probe tokens are not supported for ${p.family} students (turn weightformer.probeTokens off)`);
  return p;
}

/** One aligned teacher, ready to be put into any set: raw rows and normalised token contents. */
export interface TeacherFeatures {
  /** Per layer rows × rowSize (the teacher's own parameters). */
  rows: Float32Array[];
  /** Per layer rows × tokenSize: what the encoder reads (zeros in the teacher ablation). */
  tokens: Float32Array[];
  /** Per layer rows × probe n: pre-activations on the probe batch, when the model has one. */
  acts: Float32Array[] | null;
}

export function teacherFeatures(layout: Layout, config: WeightformerConfig, stats: ZooStats, aligned: StudentParams): TeacherFeatures {
  const rows = rowsOf(aligned);
  const acts = config.probeTokens && stats.probe ? probePreactivations(mlpOnly(aligned), stats.probe.x, stats.probe.n) : null;
  const tokens = layout.layers.map((L, l) => {
    const size = tokenSize(L, config);
    const out = new Float32Array(L.rows * size);
    if (!config.teacherInput) return out;
    const r = rows[l] ?? new Float32Array();
    const c = stats.center[l] ?? new Float32Array();
    const norm = stats.tokenNorm[l] ?? 1;
    for (let j = 0; j < L.rows; j++) {
      for (let k = 0; k < L.rowSize; k++) out[j * size + k] = ((r[j * L.rowSize + k] ?? 0) - (c[j * L.rowSize + k] ?? 0)) / norm;
    }
    const a = acts?.[l];
    const probe = stats.probe;
    if (a && probe) {
      const pc = probe.center[l] ?? new Float32Array();
      const pn = probe.norm[l] ?? 1;
      for (let j = 0; j < L.rows; j++) {
        for (let e = 0; e < probe.n; e++) out[j * size + L.rowSize + e] = ((a[j * probe.n + e] ?? 0) - (pc[j * probe.n + e] ?? 0)) / pn;
      }
    }
    return out;
  });
  return { rows, tokens, acts };
}

/** The host arrays of one forward pass over a set of T teachers. */
export interface SetArrays {
  T: number;
  /** Per layer, T × rows × tokenSize, teacher-major. */
  tokens: Float32Array[];
  /** Per layer, rows × rowSize: the aligned mean (float64 sums, as `averageParams`). */
  base: Float32Array[];
  /** Per layer, rows × rowSize × T: the teachers' rows, teacher index last (for mixing weights). */
  rowsRDT: Float32Array[] | null;
}

export function assembleSet(layout: Layout, config: WeightformerConfig, set: TeacherFeatures[]): SetArrays {
  const T = set.length;
  if (T < 1) throw new InputError('a WeightFormer needs at least one teacher');
  const tokens = layout.layers.map((L, l) => {
    const size = L.rows * tokenSize(L, config);
    const out = new Float32Array(T * size);
    set.forEach((f, t) => out.set(f.tokens[l] ?? new Float32Array(size), t * size));
    if (config.agreementStats && config.teacherInput) agreementFeatures(layout, config, set, l, out);
    return out;
  });
  const base = layout.layers.map((L, l) => {
    const size = L.rows * L.rowSize;
    const acc = new Float64Array(size);
    for (const f of set) {
      const r = f.rows[l] ?? new Float32Array(size);
      for (let i = 0; i < size; i++) acc[i] = (acc[i] ?? 0) + (r[i] ?? 0);
    }
    const out = new Float32Array(size);
    for (let i = 0; i < size; i++) out[i] = (acc[i] ?? 0) / T;
    return out;
  });
  const rowsRDT = config.mixing
    ? layout.layers.map((L, l) => {
        const size = L.rows * L.rowSize;
        const out = new Float32Array(size * T);
        set.forEach((f, t) => {
          const r = f.rows[l] ?? new Float32Array(size);
          for (let i = 0; i < size; i++) out[i * T + t] = r[i] ?? 0;
        });
        return out;
      })
    : null;
  return { T, tokens, base, rowsRDT };
}

/** For each unit of the previous layer, the columns (ascending) that read it. */
function readersOf(inputUnit: Int32Array, units: number): Int32Array[] {
  const lists: number[][] = Array.from({ length: units }, () => []);
  inputUnit.forEach((u, k) => {
    if (u >= 0) lists[u]?.push(k);
  });
  return lists.map((a) => Int32Array.from(a));
}

function cosine(a: Float64Array | Float32Array, b: Float64Array, from: number, to: number, offsetA: number, offsetB: number): number {
  let s = 0;
  let na = 0;
  let nb = 0;
  for (let k = from; k < to; k++) {
    const x = a[offsetA + k] ?? 0;
    const y = b[offsetB + k] ?? 0;
    s += x * y;
    na += x * x;
    nb += y * y;
  }
  return na > 0 && nb > 0 ? s / Math.sqrt(na * nb) : 0;
}

/**
 * Writes, into the last AGREEMENT_FEATURES slots of each token of layer l (T × rows × tokenSize), how
 * teacher t's unit r compares with the mean of the *other* teachers' unit r: [cosine of the rows, their
 * relative distance (capped at 4), cosine of the outgoing weights (hidden units; 0 for output rows; for
 * a CNN channel every weight of the next layer that reads it: k·k taps of each next conv row, or every
 * flattened position of each first dense row),
 * correlation of the probe pre-activations (0 without probe tokens)]. Symmetric in the other teachers, so
 * the model stays invariant to teacher order; all zeros for a single teacher.
 */
function agreementFeatures(layout: Layout, config: WeightformerConfig, set: TeacherFeatures[], l: number, out: Float32Array): void {
  const T = set.length;
  if (T < 2) return;
  const L = layout.layers[l];
  if (!L) return;
  const size = tokenSize(L, config);
  const at = size - AGREEMENT_FEATURES;
  const next = layout.layers[l + 1];
  const sumOf = (pick: (f: TeacherFeatures) => Float32Array | undefined, n: number): Float64Array => {
    const acc = new Float64Array(n);
    for (const f of set) {
      const a = pick(f);
      if (a) for (let i = 0; i < n; i++) acc[i] = (acc[i] ?? 0) + (a[i] ?? 0);
    }
    return acc;
  };
  const rowSum = sumOf((f) => f.rows[l], L.rows * L.rowSize);
  const nextSum = next ? sumOf((f) => f.rows[l + 1], next.rows * next.rowSize) : null;
  const probeN = set[0]?.acts ? (set[0].acts[l]?.length ?? 0) / L.rows : 0;
  const readers = next?.inputUnit ? readersOf(next.inputUnit, L.rows) : null;
  const actSum = probeN > 0 ? sumOf((f) => f.acts?.[l], L.rows * probeN) : null;
  set.forEach((f, t) => {
    const row = f.rows[l] ?? new Float32Array();
    // Leave-one-out means, per unit.
    const others = new Float64Array(L.rowSize);
    for (let r = 0; r < L.rows; r++) {
      for (let k = 0; k < L.rowSize; k++) others[k] = ((rowSum[r * L.rowSize + k] ?? 0) - (row[r * L.rowSize + k] ?? 0)) / (T - 1);
      const cos = cosine(row, others, 0, L.rowSize, r * L.rowSize, 0);
      let dist = 0;
      let norm = 0;
      for (let k = 0; k < L.rowSize; k++) {
        dist += ((row[r * L.rowSize + k] ?? 0) - (others[k] ?? 0)) ** 2;
        norm += (others[k] ?? 0) ** 2;
      }
      const rel = norm > 0 ? Math.min(4, Math.sqrt(dist / norm)) : 0;
      let outCos = 0;
      const nextRows = f.rows[l + 1];
      if (next && nextSum && nextRows && readers) {
        // CNN: unit r's outgoing weights are the columns of the next layer that read it, in every row.
        const cols = readers[r] ?? new Int32Array();
        const n = next.rows * cols.length;
        const mine = new Float64Array(n);
        const theirs = new Float64Array(n);
        for (let c = 0; c < next.rows; c++) {
          for (let q = 0; q < cols.length; q++) {
            const at = c * next.rowSize + (cols[q] ?? 0);
            const i = c * cols.length + q;
            mine[i] = nextRows[at] ?? 0;
            theirs[i] = ((nextSum[at] ?? 0) - (mine[i] ?? 0)) / (T - 1);
          }
        }
        outCos = cosine(mine, theirs, 0, n, 0, 0);
      } else if (next && nextSum && nextRows) {
        // Unit r's outgoing weights: entry r of every row of the next layer.
        const mine = new Float64Array(next.rows);
        const theirs = new Float64Array(next.rows);
        for (let c = 0; c < next.rows; c++) {
          mine[c] = nextRows[c * next.rowSize + r] ?? 0;
          theirs[c] = ((nextSum[c * next.rowSize + r] ?? 0) - (mine[c] ?? 0)) / (T - 1);
        }
        outCos = cosine(mine, theirs, 0, next.rows, 0, 0);
      }
      let actCorr = 0;
      const acts = f.acts?.[l];
      if (actSum && acts) {
        const a = new Float64Array(probeN);
        const b = new Float64Array(probeN);
        let ma = 0;
        let mb = 0;
        for (let e = 0; e < probeN; e++) {
          a[e] = acts[r * probeN + e] ?? 0;
          b[e] = ((actSum[r * probeN + e] ?? 0) - (a[e] ?? 0)) / (T - 1);
          ma += (a[e] ?? 0) / probeN;
          mb += (b[e] ?? 0) / probeN;
        }
        for (let e = 0; e < probeN; e++) {
          a[e] = (a[e] ?? 0) - ma;
          b[e] = (b[e] ?? 0) - mb;
        }
        actCorr = cosine(a, b, 0, probeN, 0, 0);
      }
      const base = (t * L.rows + r) * size + at;
      out[base] = cos;
      out[base + 1] = rel;
      out[base + 2] = outCos;
      out[base + 3] = actCorr;
    }
  });
}
