/**
 * One forward pass: an ensemble of teachers → the student's parameters.
 */
import { InputError } from '../../util/errors';
import { alignToReference } from '../align';
import type { Dataset } from '../data';
import { featureSize } from '../data';
import type { MlpParams } from '../mlp';
import { checkParamsMatch } from '../mlp';
import { tf } from '../tf';
import type { ModelConstants, WeightformerModel } from './model';
import { asParams, disposeModelConstants, disposeSet, modelConstants, studentRows, uploadParams, uploadSet } from './model';
import type { TeacherFeatures } from './tokens';
import { assembleSet, layoutOf, rowsToParams, teacherFeatures } from './tokens';

/**
 * The model with its probe batch replaced by the first `probeSize` examples of `probe` (the zoo
 * normalisation stays). Only for experiments: the model was trained with the probe it stores.
 */
function withProbe(m: WeightformerModel, probe: Dataset | undefined): WeightformerModel {
  if (!probe || !m.config.probeTokens || !m.stats.probe) return m;
  const n = m.config.probeSize;
  if (probe.n < n || featureSize(probe) !== m.arch.inputSize) {
    throw new InputError(`the probe needs at least ${n} examples of ${m.arch.inputSize} features`);
  }
  return { ...m, stats: { ...m.stats, probe: { ...m.stats.probe, x: probe.x.slice(0, n * m.arch.inputSize) } } };
}

/** Aligns `teachers` to the model's reference and builds what the encoder reads from each. */
export function prepareTeachers(m: WeightformerModel, teachers: MlpParams[]): TeacherFeatures[] {
  if (teachers.length < 1) throw new InputError('generateStudent needs at least one teacher');
  for (const t of teachers) checkParamsMatch(t, m.arch);
  const layout = layoutOf(m.arch);
  return teachers.map((t) => teacherFeatures(layout, m.config, m.stats, alignToReference(m.reference, t)));
}

/**
 * Runs the model on prepared teachers with already-uploaded parameters and constants; returns the
 * student. Used by `generateStudent` and by meta-training's validation.
 */
export async function generateWith(
  params: Record<string, tf.Tensor>,
  c: ModelConstants,
  m: Pick<WeightformerModel, 'arch'>,
  features: TeacherFeatures[],
): Promise<MlpParams> {
  const set = uploadSet(c, assembleSet(c.layout, c.config, features));
  try {
    const rows = tf.tidy(() => studentRows(params, c, set));
    try {
      const host: Float32Array[] = [];
      for (const r of rows) host.push(new Float32Array(await r.data()));
      return rowsToParams(host, c.layout, m.arch.activation);
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
 * (its first `probeSize` examples) for experiments.
 *
 * @example
 * const student = await generateStudent(model, heldOutTeachers);
 * console.log(await accuracy(student, split.test));
 */
export async function generateStudent(m: WeightformerModel, teachers: MlpParams[], probe?: Dataset): Promise<MlpParams> {
  const model = withProbe(m, probe);
  const features = prepareTeachers(model, teachers);
  const c = modelConstants(model);
  const { names, tensors } = uploadParams(model);
  try {
    return await generateWith(asParams(names, tensors), c, model, features);
  } finally {
    tf.dispose(tensors);
    disposeModelConstants(c);
  }
}
