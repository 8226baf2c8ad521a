/**
 * Activation matching for ResNets (Ainsworth et al., "Git Re-Basin", §3.1): a teacher's channels are matched
 * to a reference's by how their outputs correlate on the same images, instead of by how their weights do
 * (weight matching: `align.ts`, whose permutations and `permuteResnetChannels` this reuses).
 *
 * The identity shortcuts make the residual stream one channel order for the whole net (see `align.ts`), so
 * its permutation is chosen once from every place the stream is read (`resnetSiteActivations`): each
 * block's input (the stem's output for the first block, the previous block's output — max-pooled at a
 * stage start — for the others), which conv1 and the shortcut read, and the last block's output, which the
 * global average pool and the head read. Together these are the stem's output and every block's output
 * after its residual add and ReLU. The per-site correlation matrices are summed and one assignment is
 * solved (`assignBySummedCorrelation`). Each block's inner channels are private to it and matched on its
 * conv1 output after BN and ReLU (what conv2 reads), one assignment per block.
 *
 * Every model is run once, unpermuted, in eval mode (running BN statistics: the function the trained model
 * computes). A permutation never changes what a channel computes, only where it sits, so no coordinate
 * ascent is needed: each group is matched on its own. Correlations are accumulated in float64 on the host
 * (`../align-activations.ts`, shared with the MLP and CNN matchers), so the result does not depend on the
 * backend; a channel that never varies at a site (a dead ReLU) correlates 0 with everything there.
 *
 * A pipeline chooses it with `alignment: {method: activations}` (README).
 */
import { checkSameSignature } from '../align';
import { assignByActivations, assignBySummedCorrelation, layerActivationsOnHost, matchByActivations, type ActivationMatcher, type LayerActivations } from '../align-activations';
import { asNhwc, batchNormEval, conv2dSame, pool2x2 } from '../cnn/ops';
import type { Dataset } from '../data';
import { checkImageFeatures } from '../evaluate';
import { tf } from '../tf';
import type { ResnetParams } from './architecture';
import { resnetSignature } from './architecture';
import type { ResnetPermutations } from './align';
import { permuteResnetChannels } from './align';
import type { ResnetConvTensors, ResnetTensors } from './forward';
import { disposeResnetTensors, resnetParamsToTensors } from './forward';

/** Activations at the matching sites, each a rows × channels matrix (examples·h·w rows, NHWC order). */
export interface ResnetSiteActivations<T> {
  /** The residual stream where it is read: every block's input in order, then the last block's output (the head's input). */
  stream: T[];
  /** Each block's inner channels (conv1 after BN and ReLU), in `resnetBlocks` order. */
  inner: T[];
}

/**
 * Eval-mode forward pass of `x` that also returns the stream and inner activations at the matching sites,
 * and the logits: the same operations, in the same order, as `resnetForward` in eval mode. The caller
 * disposes every returned tensor.
 */
export function resnetSiteActivations(t: ResnetTensors, x: tf.Tensor2D | tf.Tensor4D): ResnetSiteActivations<tf.Tensor2D> & { logits: tf.Tensor2D } {
  return tf.tidy(() => {
    const stream: tf.Tensor2D[] = [];
    const inner: tf.Tensor2D[] = [];
    const rows = (m: tf.Tensor4D): tf.Tensor2D => tf.reshape(m, [-1, m.shape[3] ?? 0]);
    const convBn = (input: tf.Tensor4D, conv: ResnetConvTensors): tf.Tensor4D =>
      batchNormEval(tf.add(conv2dSame(input, conv.kernel), conv.bias) as tf.Tensor4D, conv.bn.gamma, conv.bn.beta, conv.bn.runningMean, conv.bn.runningVar);
    let a = tf.relu(convBn(asNhwc(x, t.inputShape), t.stem));
    t.stages.forEach((stage, s) => {
      if (s > 0) a = pool2x2(a, 'max');
      for (const block of stage) {
        stream.push(rows(a));
        const h = tf.relu(convBn(a, block.conv1));
        inner.push(rows(h));
        a = tf.relu(tf.add(a, convBn(h, block.conv2))) as tf.Tensor4D;
      }
    });
    stream.push(rows(a));
    const pooled = tf.mean(a, [1, 2]) as tf.Tensor2D;
    const logits = tf.add(tf.matMul(pooled, t.head.w), t.head.b) as tf.Tensor2D;
    return { stream, inner, logits };
  });
}

/** The matching sites' activations of `p` on `images`, on the host (float32); every tensor freed. */
async function siteActivationsOf(p: ResnetParams, images: Dataset): Promise<ResnetSiteActivations<LayerActivations>> {
  const t = resnetParamsToTensors(p);
  try {
    const x = tf.tensor2d(images.x, [images.n, images.x.length / images.n], 'float32');
    const { stream, inner, logits } = resnetSiteActivations(t, x);
    tf.dispose([x, logits]);
    const host = await layerActivationsOnHost([...stream, ...inner]);
    return { stream: host.slice(0, stream.length), inner: host.slice(stream.length) };
  } finally {
    disposeResnetTensors(t);
  }
}

/** ResNet activation matching: the stream by the correlation summed over its sites, each block's inner channels on their own. */
export const RESNET_ACTIVATION_MATCHER: ActivationMatcher<ResnetParams, ResnetSiteActivations<LayerActivations>, ResnetPermutations> = {
  check(reference, teacher, images) {
    checkSameSignature([reference, teacher], resnetSignature);
    checkImageFeatures(reference.inputShape, images);
  },
  activations: siteActivationsOf,
  assign(ref, tea) {
    const sites = ref.stream.map((r, i) => ({ reference: r, teacher: tea.stream[i] as LayerActivations }));
    return { stream: assignBySummedCorrelation(sites, 'residual stream'), inner: assignByActivations(ref.inner, tea.inner) };
  },
  permute: permuteResnetChannels,
};

/**
 * The permutations activation matching chooses to align `teacher` to `reference` (use with
 * `permuteResnetChannels`): the stream by the correlation summed over every place it is read, each block's
 * inner channels by the correlation of its conv1 outputs, on `images` (a few hundred are enough).
 *
 * @example
 * const aligned = permuteResnetChannels(teacher, await matchResnetActivations(reference, teacher, split.consolidation));
 */
export function matchResnetActivations(reference: ResnetParams, teacher: ResnetParams, images: Dataset): Promise<ResnetPermutations> {
  return matchByActivations(RESNET_ACTIVATION_MATCHER, reference, teacher, images);
}

/** ResNet `teacher` with its stream and inner channels permuted to match `reference` by activations on `images`. Function-preserving. */
export async function alignResnetByActivations(reference: ResnetParams, teacher: ResnetParams, images: Dataset): Promise<ResnetParams> {
  return permuteResnetChannels(teacher, await matchResnetActivations(reference, teacher, images));
}
