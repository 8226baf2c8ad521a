/**
 * Choosing the teacher every ensemble is aligned to.
 */
import { InputError } from '../../util/errors';
import type { CnnParams } from '../cnn/architecture';
import type { MlpParams } from '../mlp';
import type { AlignmentContext, StudentFamily } from './family';
import { alignTeachers, familyOfParams, recomputeStudentBn } from './family';
import type { StudentParams } from './tokens';

/**
 * The alignment reference for a zoo: its aligned average (every zoo teacher weight-matched to the first,
 * then averaged), a barycenter of the zoo rather than one of its members.
 *
 * Why: the residual base of WeightFormer (and its teacher ablation) is the aligned mean of the ensemble
 * *as aligned to the reference*. Measured on `bench/weightformer-probe.ts` (784-64-10, 20 zoo teachers, 15
 * held-out T=4 ensembles, 2,000 test digits): a held-out ensemble's aligned average scores 87.8% aligned
 * to this barycenter but 84.6% aligned to a single zoo teacher, whose units are a poor template for the
 * units other teachers learned differently. Further rounds (re-aligning the zoo to the barycenter) gave
 * 87.3%, so one round it is. CNN zoos get the same (channels matched by `alignCnnToReference`; BN
 * running statistics averaged, which is fine for a template that is only matched against).
 *
 * With activation matching (`zooReferenceWith`, a pipeline's `alignment: {method: activations}`) the
 * same barycenter is built from activation-matched teachers, and it is matched against by its
 * activations: a CNN reference's BN running statistics are then re-estimated on the matching images
 * (averaged statistics do not describe the averaged network, and would distort the activations the
 * teachers are correlated with; they are never used as weights: the residual base is the ensemble's own
 * aligned mean).
 *
 * @example
 * const reference = zooReference(zoo);
 * const model = initWeightformer(arch, config, reference, zoo, seed);
 */
export function zooReference(zoo: MlpParams[]): MlpParams;
export function zooReference(zoo: CnnParams[]): CnnParams;
export function zooReference(zoo: StudentParams[]): StudentParams;
export function zooReference(zoo: StudentParams[]): StudentParams {
  return zooFamily(zoo).family.alignedAverage(zoo);
}

/** The zoo's family and first teacher (InputError for an empty zoo or one that mixes families). */
function zooFamily(zoo: StudentParams[]): { family: StudentFamily; first: StudentParams } {
  const first = zoo[0];
  if (!first) throw new InputError('the zoo is empty');
  const family = familyOfParams(first);
  if (zoo.some((p) => familyOfParams(p) !== family)) throw new InputError('the zoo mixes architecture families');
  return { family, first };
}

/**
 * `zooReference` for any alignment: weight matching gives exactly `zooReference(zoo)`; activation matching
 * aligns every zoo teacher to the first by its activations on the context's images, averages, and
 * re-estimates a CNN's BN running statistics on those images (see above).
 */
export async function zooReferenceWith(zoo: StudentParams[], alignment: AlignmentContext): Promise<StudentParams> {
  if (alignment.method === 'weights') return zooReference(zoo);
  const { family, first } = zooFamily(zoo);
  const averaged = family.average([first, ...(await alignTeachers(family, first, zoo.slice(1), alignment))]);
  return recomputeStudentBn(averaged, alignment.images);
}
