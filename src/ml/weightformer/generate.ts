/**
 * One forward pass: an ensemble of teachers → the student's parameters.
 */
import { InputError } from '../../util/errors';
import type { CnnParams } from '../cnn/architecture';
import type { Dataset } from '../data';
import { featureSize } from '../data';
import type { MlpParams } from '../mlp';
import { tf } from '../tf';
import { alignTeachers, alignmentContext, familyOf } from './family';
import type { ModelConstants, WeightformerModel } from './model';
import { asParams, disposeModelConstants, disposeSet, modelConstants, studentRows, uploadParams, uploadSet } from './model';
import type { StudentArch, StudentParams, TeacherFeatures } from './tokens';
import { assembleSet, layoutOf, teacherFeatures } from './tokens';

/**
 * The model with its probe batch replaced by the first `probeSize` examples of `probe` (the zoo
 * normalisation stays). Only for experiments: the model was trained with the probe it stores.
 */
function withProbe(m: WeightformerModel<StudentArch>, probe: Dataset | undefined): WeightformerModel<StudentArch> {
  if (!probe || !m.config.probeTokens || !m.stats.probe) return m;
  const n = m.config.probeSize;
  const inputSize = familyOf(m.arch).inputSize(m.arch);
  if (probe.n < n || featureSize(probe) !== inputSize) {
    throw new InputError(`the probe needs at least ${n} examples of ${inputSize} features`);
  }
  return { ...m, stats: { ...m.stats, probe: { ...m.stats.probe, x: probe.x.slice(0, n * inputSize) } } };
}

/**
 * Aligns `teachers` to the model's reference, the way the model was trained to read them (weight matching,
 * or activation matching on the first `m.alignment.samples` examples of `alignmentData`, the consolidation
 * set), and builds what the encoder reads from each.
 */
export async function prepareTeachers(m: WeightformerModel<StudentArch>, teachers: StudentParams[], alignmentData?: Dataset): Promise<TeacherFeatures[]> {
  if (teachers.length < 1) throw new InputError('generateStudent needs at least one teacher');
  const family = familyOf(m.arch);
  for (const t of teachers) family.checkParams(t, m.arch);
  const layout = layoutOf(m.arch);
  const aligned = await alignTeachers(family, m.reference, teachers, alignmentContext(m.alignment, alignmentData));
  return aligned.map((t) => teacherFeatures(layout, m.config, m.stats, t));
}

/**
 * Runs the model on prepared teachers with already-uploaded parameters and constants; returns the
 * student. Used by `generateStudent` and by meta-training's validation.
 */
export async function generateWith(
  params: Record<string, tf.Tensor>,
  c: ModelConstants,
  m: Pick<WeightformerModel<StudentArch>, 'arch'>,
  features: TeacherFeatures[],
): Promise<StudentParams> {
  const set = uploadSet(c, assembleSet(c.layout, c.config, features));
  try {
    const rows = tf.tidy(() => studentRows(params, c, set));
    try {
      const host: Float32Array[] = [];
      for (const r of rows) host.push(new Float32Array(await r.data()));
      return familyOf(m.arch).fromRows(host, m.arch);
    } finally {
      tf.dispose(rows);
    }
  } finally {
    disposeSet(set);
  }
}

/**
 * The student WeightFormer writes for `teachers` (any number, any order, unaligned: they are aligned to
 * `m.reference` here). With probe tokens the model's stored probe batch is used; `probe` replaces it
 * (its first `probeSize` examples) for experiments. The student has the teachers' family: MLP teachers
 * give an MLP, CNN teachers a CNN (with predicted BN running statistics; `recomputeStudentBn` re-estimates
 * them on data as a separate step). Teachers of another family or shape than the model's: InputError.
 * A model trained on activation-aligned teachers (`m.alignment`) aligns them the same way, on the first
 * `m.alignment.samples` examples of `alignmentData` (the consolidation set; required then, ignored otherwise).
 *
 * @example
 * const student = await generateStudent(model, heldOutTeachers);
 * console.log(await accuracy(student, split.test));
 */
export async function generateStudent(m: WeightformerModel<StudentArch>, teachers: MlpParams[], probe?: Dataset, alignmentData?: Dataset): Promise<MlpParams>;
export async function generateStudent(m: WeightformerModel<StudentArch>, teachers: CnnParams[], probe?: Dataset, alignmentData?: Dataset): Promise<CnnParams>;
export async function generateStudent(m: WeightformerModel<StudentArch>, teachers: StudentParams[], probe?: Dataset, alignmentData?: Dataset): Promise<StudentParams>;
export async function generateStudent(m: WeightformerModel<StudentArch>, teachers: StudentParams[], probe?: Dataset, alignmentData?: Dataset): Promise<StudentParams> {
  const model = withProbe(m, probe);
  const features = await prepareTeachers(model, teachers, alignmentData);
  const c = modelConstants(model);
  const { names, tensors } = uploadParams(model);
  try {
    return await generateWith(asParams(names, tensors), c, model, features);
  } finally {
    tf.dispose(tensors);
    disposeModelConstants(c);
  }
}
