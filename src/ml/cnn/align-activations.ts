/**
 * Activation matching for CNNs (Ainsworth et al., "Git Re-Basin", §3.1; Singh & Jaggi's activation-based
 * OT fusion with a hard assignment): a teacher's conv channels and hidden dense units are matched to a
 * reference's by how their outputs correlate on the same images, instead of by how their weights do.
 *
 * Every teacher is run once, unpermuted, in eval mode (running BN statistics: the function the trained
 * model computes). Because a permutation never changes what a unit computes, only where it sits, each
 * layer's activations are the same before and after the other layers are aligned, so each permutable
 * layer is matched on its own by one linear assignment (no coordinate ascent, unlike weight matching).
 *
 * Where a conv channel is read: after the ReLU and the 2×2 pool by default ('pooled'): that map is what
 * the next block (or the head's flatten) reads, so a matched channel is one whose readers see the same
 * thing; pooling acts per channel, so the permutation is the same either way, and the pooled map is 4×
 * smaller. 'prepool' (after the ReLU, before the pool) is offered for comparison.
 *
 * The similarity is the Pearson correlation of two units' activations over all examples (× all spatial
 * positions, for a channel), accumulated in float64 on the host so the result does not depend on the
 * backend; a unit that never varies (a dead ReLU) correlates 0 with everything.
 */
import type { Dataset } from '../data';
import { checkImageFeatures } from '../evaluate';
import { checkSameSignature, maximizeAssignment } from '../align';
import { tf } from '../tf';
import type { CnnParams } from './architecture';
import { cnnSignature } from './architecture';
import type { CnnPermutations } from './align';
import type { CnnTensors } from './forward';
import { cnnParamsToTensors, disposeCnnTensors } from './forward';
import { asNhwc, batchNormEval, conv2dSame, pool2x2 } from './ops';

/** Where a conv channel's activations are read: after ReLU and pool (what the next layer reads), or after ReLU before the pool. */
export type ConvActivationSite = 'pooled' | 'prepool';

export interface MatchActivationsOptions {
  /** Default 'pooled'. */
  convSite?: ConvActivationSite;
}

/**
 * Eval-mode forward pass of `x` that also returns each permutable layer's post-ReLU activations, as
 * rows × units matrices (a conv block: examples·h·w × channels, NHWC order; a hidden dense layer:
 * examples × units), and the logits. The same operations, in the same order, as `cnnForward` in eval
 * mode. The caller disposes every returned tensor.
 */
export function cnnLayerActivations(
  t: CnnTensors,
  x: tf.Tensor2D | tf.Tensor4D,
  convSite: ConvActivationSite = 'pooled',
): { layers: tf.Tensor2D[]; logits: tf.Tensor2D } {
  return tf.tidy(() => {
    const layers: tf.Tensor2D[] = [];
    let a = asNhwc(x, t.inputShape);
    for (const block of t.convs) {
      let z = tf.add(conv2dSame(a, block.kernel), block.bias) as tf.Tensor4D;
      if (block.bn) z = batchNormEval(z, block.bn.gamma, block.bn.beta, block.bn.runningMean, block.bn.runningVar);
      const r = tf.relu(z);
      a = pool2x2(r, t.pool);
      const site = convSite === 'pooled' ? a : r;
      const c = site.shape[3] ?? 0;
      layers.push(tf.reshape(site, [-1, c]));
    }
    const [n = 0, ph = 0, pw = 0, pc = 0] = a.shape;
    let hidden: tf.Tensor2D = tf.reshape(a, [n, ph * pw * pc]);
    t.dense.forEach((layer, l) => {
      const zl = tf.add(tf.matMul(hidden, layer.w), layer.b) as tf.Tensor2D;
      if (l + 1 < t.dense.length) {
        hidden = tf.relu(zl);
        layers.push(hidden);
      } else {
        hidden = zl;
      }
    });
    return { layers, logits: hidden };
  });
}

/** Each permutable layer's activations on `images` as host rows × units matrices (float32). */
async function activationsOf(p: CnnParams, images: Dataset, convSite: ConvActivationSite): Promise<Array<{ values: Float32Array; units: number }>> {
  const t = cnnParamsToTensors(p);
  try {
    const x = tf.tensor2d(images.x, [images.n, images.x.length / images.n], 'float32');
    const { layers, logits } = cnnLayerActivations(t, x, convSite);
    tf.dispose([x, logits]);
    try {
      const out: Array<{ values: Float32Array; units: number }> = [];
      for (const layer of layers) out.push({ values: new Float32Array(await layer.data()), units: layer.shape[1] ?? 0 });
      return out;
    } finally {
      tf.dispose(layers);
    }
  } finally {
    disposeCnnTensors(t);
  }
}

/** Columns of a rows × units matrix standardised (mean 0, norm 1, float64); a constant column becomes 0. */
function standardizedColumns(values: Float32Array, units: number): Float64Array[] {
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
function correlation(reference: Float64Array[], teacher: Float64Array[]): Float64Array {
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

/**
 * The permutations activation matching chooses to align `teacher` to `reference` (use with
 * `permuteCnnUnits`): per conv block and hidden dense layer, the assignment maximising the summed
 * correlation of reference unit i with teacher unit perm[i] over `images` (a few hundred are enough).
 *
 * @example
 * const aligned = permuteCnnUnits(teacher, await matchCnnActivations(reference, teacher, split.consolidation));
 */
export async function matchCnnActivations(reference: CnnParams, teacher: CnnParams, images: Dataset, options: MatchActivationsOptions = {}): Promise<CnnPermutations> {
  checkSameSignature([reference, teacher], cnnSignature);
  checkImageFeatures(reference.inputShape, images);
  if (images.n < 2) throw new Error('activation matching needs at least 2 images');
  const site = options.convSite ?? 'pooled';
  const ref = await activationsOf(reference, images, site);
  const tea = await activationsOf(teacher, images, site);
  return ref.map((r, g) => {
    const t = tea[g];
    if (!t || t.units !== r.units) throw new Error(`layer ${g}: activations of different widths`);
    return maximizeAssignment(correlation(standardizedColumns(r.values, r.units), standardizedColumns(t.values, t.units)), r.units);
  });
}
