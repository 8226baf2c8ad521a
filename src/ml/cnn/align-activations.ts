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
 * backend; a unit that never varies (a dead ReLU) correlates 0 with everything (`../align-activations.ts`,
 * shared with the MLP's version).
 *
 * A pipeline chooses it with `alignment: {method: activations}` (README): then every alignment of that
 * pipeline (the aligned-average baselines, the WeightFormer's reference and its input alignment) uses it.
 */
import type { Dataset } from '../data';
import { checkImageFeatures } from '../evaluate';
import { checkSameSignature } from '../align';
import { assignByActivations, layerActivationsOnHost, matchByActivations, type ActivationMatcher, type LayerActivations } from '../align-activations';
import { tf } from '../tf';
import type { CnnParams } from './architecture';
import { cnnSignature } from './architecture';
import type { CnnPermutations } from './align';
import { permuteCnnUnits } from './align';
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
async function activationsOf(p: CnnParams, images: Dataset, convSite: ConvActivationSite): Promise<LayerActivations[]> {
  const t = cnnParamsToTensors(p);
  try {
    const x = tf.tensor2d(images.x, [images.n, images.x.length / images.n], 'float32');
    const { layers, logits } = cnnLayerActivations(t, x, convSite);
    tf.dispose([x, logits]);
    return await layerActivationsOnHost(layers);
  } finally {
    disposeCnnTensors(t);
  }
}

/** CNN activation matching at `convSite`: conv channels and hidden dense units, one assignment per layer. */
export function cnnActivationMatcher(convSite: ConvActivationSite = 'pooled'): ActivationMatcher<CnnParams, LayerActivations[], CnnPermutations> {
  return {
    check(reference, teacher, images) {
      checkSameSignature([reference, teacher], cnnSignature);
      checkImageFeatures(reference.inputShape, images);
    },
    activations: (p, images) => activationsOf(p, images, convSite),
    assign: assignByActivations,
    permute: permuteCnnUnits,
  };
}

/**
 * The permutations activation matching chooses to align `teacher` to `reference` (use with
 * `permuteCnnUnits`): per conv block and hidden dense layer, the assignment maximising the summed
 * correlation of reference unit i with teacher unit perm[i] over `images` (a few hundred are enough).
 *
 * @example
 * const aligned = permuteCnnUnits(teacher, await matchCnnActivations(reference, teacher, split.consolidation));
 */
export function matchCnnActivations(reference: CnnParams, teacher: CnnParams, images: Dataset, options: MatchActivationsOptions = {}): Promise<CnnPermutations> {
  return matchByActivations(cnnActivationMatcher(options.convSite), reference, teacher, images);
}

/** CNN `teacher` with its channels and hidden units permuted to match `reference` by activations on `images`. Function-preserving. */
export async function alignCnnByActivations(reference: CnnParams, teacher: CnnParams, images: Dataset, options: MatchActivationsOptions = {}): Promise<CnnParams> {
  return permuteCnnUnits(teacher, await matchCnnActivations(reference, teacher, images, options));
}
