/**
 * Activation matching (Ainsworth et al., "Git Re-Basin", §3.1): a teacher's hidden units are matched to a
 * reference's by how their outputs correlate on the same inputs, instead of by how their weights do.
 *
 * The shared part (per-layer Pearson correlation, one linear assignment per layer, or per group of sites
 * that share one unit order) and the MLP's version; the CNN's is `cnn/align-activations.ts`, the ResNet's
 * `resnet/align-activations.ts`. A permutation never changes what a unit computes, only where it
 * sits, so every layer's activations are the same before and after the other layers are aligned, and each
 * layer is matched on its own (no coordinate ascent, unlike weight matching).
 *
 * Which inputs: a pipeline's `alignment: {method: activations, samples}` block uses the first `samples`
 * examples of the consolidation set (`alignmentImages`), deterministic and the only data consolidation
 * may read.
 */
import { checkSameSignature, maximizeAssignment, permuteHiddenUnits } from './align';
import type { Dataset } from './data';
import { featureSize, selectExamples } from './data';
import type { MlpParams } from './mlp';
import { architectureSignature, paramsToTensors, disposeMlpTensors } from './mlp';
import { tf } from './tf';
import { InputError } from '../util/errors';

/** One layer's activations on the matching inputs: rows × units, row-major (float32, host). */
export interface LayerActivations {
  values: Float32Array;
  units: number;
}

/**
 * The first `samples` examples of `data` (all of it when it has fewer): the inputs activation matching
 * reads, in the pipeline the consolidation set's first `alignment.samples`.
 */
export function alignmentImages(data: Dataset, samples: number): Dataset {
  if (!Number.isInteger(samples) || samples < 2) throw new InputError(`alignment.samples must be an integer ≥ 2, got ${samples}`);
  const n = Math.min(samples, data.n);
  if (n < 2) throw new InputError(`activation matching needs at least 2 examples, the data has ${data.n}`);
  return n === data.n ? data : selectExamples(data, Array.from({ length: n }, (_, i) => i));
}

/** Columns of a rows × units matrix standardised (mean 0, norm 1, float64); a constant column becomes 0. */
export function standardizedColumns(values: Float32Array, units: number): Float64Array[] {
  const rows = values.length / units;
  const cols = Array.from({ length: units }, () => new Float64Array(rows));
  for (let r = 0; r < rows; r++) for (let u = 0; u < units; u++) (cols[u] as Float64Array)[r] = values[r * units + u] ?? 0;
  for (const col of cols) {
    let mean = 0;
    for (let r = 0; r < rows; r++) mean += col[r] ?? 0;
    mean /= rows;
    let ss = 0;
    for (let r = 0; r < rows; r++) {
      const d = (col[r] ?? 0) - mean;
      col[r] = d;
      ss += d * d;
    }
    const norm = Math.sqrt(ss);
    // Relative threshold: float32 rounding leaves a dead unit with a tiny, meaningless spread.
    const scale = norm > 1e-12 * rows ? 1 / norm : 0;
    for (let r = 0; r < rows; r++) col[r] = (col[r] ?? 0) * scale;
  }
  return cols;
}

/** corr[i·n + j]: Pearson correlation of reference unit i with teacher unit j. */
export function correlation(reference: Float64Array[], teacher: Float64Array[]): Float64Array {
  const n = reference.length;
  const sim = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const a = reference[i] as Float64Array;
    for (let j = 0; j < n; j++) {
      const b = teacher[j] as Float64Array;
      let s = 0;
      for (let r = 0; r < a.length; r++) s += (a[r] ?? 0) * (b[r] ?? 0);
      sim[i * n + j] = s;
    }
  }
  return sim;
}

/** The same units of a reference and a teacher observed at one place of the network, on the same inputs. */
export interface ActivationSite {
  reference: LayerActivations;
  teacher: LayerActivations;
}

/**
 * One assignment for units observed at several sites (a ResNet's residual stream is read in many places but
 * has one channel order): the one maximising the correlation of reference unit i with teacher unit perm[i]
 * summed over the sites, each site's correlation matrix counting once whatever its number of rows. With one
 * site it is exactly that site's assignment. `perm[i]` = the teacher's old index of new unit i, as the
 * permute functions take it.
 */
export function assignBySummedCorrelation(sites: ActivationSite[], what = 'units'): Int32Array {
  const n = sites[0]?.reference.units;
  if (n === undefined) throw new Error(`${what}: no activation sites`);
  let sum: Float64Array | undefined;
  sites.forEach(({ reference: r, teacher: t }, s) => {
    if (r.units !== n || t.units !== n) throw new Error(`${what}, site ${s}: activations of different widths`);
    const corr = correlation(standardizedColumns(r.values, r.units), standardizedColumns(t.values, t.units));
    if (!sum) sum = corr;
    else for (let k = 0; k < corr.length; k++) sum[k] = (sum[k] ?? 0) + (corr[k] ?? 0);
  });
  return maximizeAssignment(sum as Float64Array, n);
}

/**
 * Per layer, the assignment maximising the summed correlation of reference unit i with teacher unit
 * perm[i] (`perm[i]` = the teacher's old index of new unit i, as the permute functions take it).
 */
export function assignByActivations(reference: LayerActivations[], teacher: LayerActivations[]): Int32Array[] {
  if (reference.length !== teacher.length) throw new Error('activations of different depths');
  return reference.map((r, g) => {
    const t = teacher[g];
    if (!t || t.units !== r.units) throw new Error(`layer ${g}: activations of different widths`);
    return assignBySummedCorrelation([{ reference: r, teacher: t }], `layer ${g}`);
  });
}

/** `layers` (rows × units tensors) copied to the host, then disposed (also when a copy fails). */
export async function layerActivationsOnHost(layers: tf.Tensor2D[]): Promise<LayerActivations[]> {
  try {
    const out: LayerActivations[] = [];
    for (const layer of layers) out.push({ values: new Float32Array(await layer.data()), units: layer.shape[1] ?? 0 });
    return out;
  } finally {
    tf.dispose(layers);
  }
}

/** Each hidden layer's post-activation outputs on `images` (the same operations as `mlpLogits`). */
async function mlpHiddenActivations(p: MlpParams, images: Dataset): Promise<LayerActivations[]> {
  const t = paramsToTensors(p);
  try {
    const hidden = tf.tidy(() => {
      let h: tf.Tensor2D = tf.tensor2d(images.x, [images.n, featureSize(images)], 'float32');
      const out: tf.Tensor2D[] = [];
      t.layers.slice(0, -1).forEach((layer) => {
        const z = tf.add(tf.matMul(h, layer.w), layer.b) as tf.Tensor2D;
        h = t.activation === 'relu' ? tf.relu(z) : tf.tanh(z);
        out.push(h);
      });
      return out;
    });
    return await layerActivationsOnHost(hidden);
  } finally {
    disposeMlpTensors(t);
  }
}

/** MLP activation matching: hidden units by the correlation of their activations, one assignment per hidden layer. */
export const MLP_ACTIVATION_MATCHER: ActivationMatcher<MlpParams, LayerActivations[], Int32Array[]> = {
  check(reference, teacher, images) {
    checkSameSignature([reference, teacher], architectureSignature);
    const inputSize = reference.layers[0]?.inSize ?? 0;
    if (featureSize(images) !== inputSize) throw new InputError(`the matching data has ${featureSize(images)} features per example, the MLP reads ${inputSize}`);
  },
  activations: mlpHiddenActivations,
  assign: assignByActivations,
  permute: permuteHiddenUnits,
};

/**
 * The permutations activation matching chooses to align MLP `teacher` to `reference` (use with
 * `permuteHiddenUnits`): per hidden layer, hidden units matched by the correlation of their activations on
 * `images`.
 */
export function matchMlpActivations(reference: MlpParams, teacher: MlpParams, images: Dataset): Promise<Int32Array[]> {
  return matchByActivations(MLP_ACTIVATION_MATCHER, reference, teacher, images);
}

/** MLP `teacher` with its hidden units permuted to match `reference` by activations on `images`. Function-preserving. */
export async function alignMlpByActivations(reference: MlpParams, teacher: MlpParams, images: Dataset): Promise<MlpParams> {
  return permuteHiddenUnits(teacher, await matchMlpActivations(reference, teacher, images));
}

/**
 * A family's activation matching in its parts, so an ensemble can be aligned with the reference run once
 * (`alignAllByActivations`): the checks, a model's activations at its matching sites, the permutations two
 * models' activations give, and applying them.
 */
export interface ActivationMatcher<P, A, Perms> {
  /** Throws (InputError) unless `teacher` can be matched to `reference` on `images`. */
  check(reference: P, teacher: P, images: Dataset): void;
  activations(p: P, images: Dataset): Promise<A>;
  /** `perm[i]` = the teacher's old index of new unit i, per permutation group. */
  assign(reference: A, teacher: A): Perms;
  permute(p: P, perms: Perms): P;
}

/** A correlation needs at least two examples, whatever the family. */
function checkMatchingImages(images: Dataset): void {
  if (images.n < 2) throw new InputError(`activation matching needs at least 2 examples, got ${images.n}`);
}

/** The permutations aligning `teacher` to `reference` by activations on `images`. */
export async function matchByActivations<P, A, Perms>(m: ActivationMatcher<P, A, Perms>, reference: P, teacher: P, images: Dataset): Promise<Perms> {
  checkMatchingImages(images);
  m.check(reference, teacher, images);
  return m.assign(await m.activations(reference, images), await m.activations(teacher, images));
}

/**
 * Every teacher aligned to `reference` by activations on `images` (function-preserving), the reference run
 * once for the whole ensemble rather than once per teacher.
 */
export async function alignAllByActivations<P, A, Perms>(m: ActivationMatcher<P, A, Perms>, reference: P, teachers: P[], images: Dataset): Promise<P[]> {
  checkMatchingImages(images);
  for (const t of teachers) m.check(reference, t, images);
  const ref = await m.activations(reference, images);
  const out: P[] = [];
  for (const t of teachers) out.push(m.permute(t, m.assign(ref, await m.activations(t, images))));
  return out;
}

/**
 * Every model aligned to `list[referenceIndex]` by activation matching, then averaged: the
 * activation-matched counterpart of `alignedAverageOf`. The reference itself is not permuted.
 */
export async function alignedAverageByActivations<P, A, Perms>(
  list: P[],
  images: Dataset,
  matcher: ActivationMatcher<P, A, Perms>,
  average: (list: P[]) => P,
  referenceIndex = 0,
): Promise<P> {
  const reference = list[referenceIndex];
  if (reference === undefined) throw new InputError(`no model at reference index ${referenceIndex}`);
  const others = list.filter((_, i) => i !== referenceIndex);
  const aligned = await alignAllByActivations(matcher, reference, others, images);
  return average([...aligned.slice(0, referenceIndex), reference, ...aligned.slice(referenceIndex)]);
}
