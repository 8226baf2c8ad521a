/**
 * Meta-training: teach a WeightFormer to consolidate ensembles drawn from a zoo.
 *
 * Each step draws a subset size T uniformly in [tMin, tMax], T distinct zoo teachers and a batch of the
 * consolidation set; generates the student functionally (its parameters are tensors computed by the
 * model); runs it on the batch; and back-propagates (1 − w)·CE(labels) + w·τ²·KL(subset's mean softmax at
 * τ ‖ student's softmax at τ) into the WeightFormer only, with our own Adam. The zoo's aligned tokens and
 * each zoo teacher's softened predictions on the consolidation set are computed once.
 *
 * Every `evalEvery` steps (and before the first and after the last), the students of the validation
 * ensembles (held-out teachers, never in the zoo) are scored on the validation data; the best model is
 * returned. Checkpoints hold the model, Adam's state, the random stream and the best model, so resuming
 * reproduces an uninterrupted run bit for bit on deterministic backends (cpu, wasm).
 *
 * Any student family (`family.ts`): the zoo's family decides how teachers are aligned, how the functional
 * student runs (a CNN's BN in eval mode with its predicted running statistics by default,
 * `studentBn`), and how students are scored.
 */
import { createHash } from 'node:crypto';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import type { ArchitectureSpec } from '../../spec/types';
import { InputError } from '../../util/errors';
import { adamUpdate, ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON } from '../adam';
import type { Dataset } from '../data';
import { datasetDigest, featureSize, selectExamples } from '../data';
import { Rng, deriveSeed } from '../rng';
import { tf } from '../tf';
import type { LossBatch } from '../train';
import type { LossPoint } from '../train-state';
import type { WeightformerConfig } from './config';
import { canonicalConfig, checkWeightformerConfig } from './config';
import type { AlignmentRecord, StudentBnMode, StudentFamily } from './family';
import { alignTeachers, alignmentContext, checkAlignmentRecord, familyOf } from './family';
import { generateWith } from './generate';
import type { ModelConstants, SetTensors, WeightformerModel } from './model';
import { asParams, disposeModelConstants, disposeSet, initWeightformer, modelConstants, paramSpecs, studentRows, uploadSet } from './model';
import type { MetaTrainState, ValPoint } from './meta-state';
import type { ParamsOf, StudentArch, StudentParams, TeacherFeatures } from './tokens';
import { assembleSet, teacherFeatures } from './tokens';

export type { MetaTrainState, ValPoint } from './meta-state';

/** `A`: the student architecture type (MLP by default, `CnnArchitecture` for CNN zoos). */
export interface MetaTrainOptions<A extends StudentArch = ArchitectureSpec> {
  arch: A;
  config: WeightformerConfig;
  /** The meta-training pool (at least 2, at least tMax). */
  zoo: Array<ParamsOf<A>>;
  /**
   * The alignment target, stored with the model: `zooReference(zoo)` (see there for why), or with
   * `alignment` `zooReferenceWith(zoo, …)` with the same images.
   */
  reference: ParamsOf<A>;
  /**
   * How zoo and validation teachers are aligned to `reference`: absent, weight matching (the default);
   * `{method: 'activations', samples}`, activation matching on the first `samples` consolidation examples.
   * Recorded in the model (and the fingerprint), so generating with it aligns the same way.
   */
  alignment?: AlignmentRecord;
  /** The only data meta-training reads (batches, and the probe batch of probe tokens). */
  consolidation: Dataset;
  /** Chooses the returned checkpoint: held-out ensembles (never in the zoo) scored on held-out data. */
  validation: { ensembles: Array<Array<ParamsOf<A>>>; data: Dataset };
  steps: number;
  batchSize: number;
  learningRate: number;
  tMin: number;
  tMax: number;
  temperature: number;
  kdWeight: number;
  seed: number;
  /** Steps between `onCheckpoint` calls; 0: none. */
  checkpointEvery: number;
  /** Steps between validations; 0: only before the first and after the last step. */
  evalEvery: number;
  /**
   * CNNs with BN: how the generated student normalises in the meta-loss (default 'eval', see
   * `StudentBnMode`). Validation always scores in eval mode, as the student is used. Ignored for MLPs.
   */
  studentBn?: StudentBnMode;
}

export interface MetaStepInfo {
  step: number;
  totalSteps: number;
  loss: number;
}

export interface MetaTrainHooks {
  onStep?(info: MetaStepInfo): void | Promise<void>;
  onCheckpoint?(state: MetaTrainState): void | Promise<void>;
  /** Polled before every step; true stops with a `MetaTrainingAbortedError` carrying the state. */
  shouldAbort?(): boolean;
}

export interface MetaTrainResult<A extends StudentArch = ArchitectureSpec> {
  /** The best model by validation accuracy (the last one without validation ensembles). */
  model: WeightformerModel<A>;
  curve: LossPoint[];
  valCurve: ValPoint[];
  bestStep: number;
  steps: number;
}

export class MetaTrainingAbortedError extends Error {
  override name = 'MetaTrainingAbortedError';
  constructor(public readonly state: MetaTrainState) {
    super(`meta-training aborted after step ${state.step}`);
  }
}

/** The options with the family's types erased (the family adapter checks them at run time). */
type AnyOptions = MetaTrainOptions<StudentArch> & { zoo: StudentParams[]; reference: StudentParams; validation: { ensembles: StudentParams[][]; data: Dataset } };

function checkOptions(o: AnyOptions): void {
  const family = familyOf(o.arch);
  family.checkArch(o.arch);
  checkWeightformerConfig(o.config);
  if (o.config.probeTokens && !family.probeTokens) throw new InputError(`probe tokens are not supported for ${family.name} students`);
  family.checkParams(o.reference, o.arch);
  for (const p of o.zoo) family.checkParams(p, o.arch);
  for (const e of o.validation.ensembles) {
    if (e.length < 1) throw new InputError('a validation ensemble is empty');
    for (const p of e) family.checkParams(p, o.arch);
  }
  if (o.alignment !== undefined) checkAlignmentRecord(o.alignment, family, 'metaTrain');
  if (o.studentBn !== undefined && o.studentBn !== 'eval' && o.studentBn !== 'train') throw new InputError(`studentBn must be eval or train, got ${String(o.studentBn)}`);
  const int = (name: string, v: number, min: number): void => {
    if (!Number.isInteger(v) || v < min) throw new InputError(`${name} must be an integer ≥ ${min}, got ${v}`);
  };
  int('steps', o.steps, 0);
  int('batchSize', o.batchSize, 1);
  int('checkpointEvery', o.checkpointEvery, 0);
  int('evalEvery', o.evalEvery, 0);
  int('tMin', o.tMin, 1);
  int('tMax', o.tMax, o.tMin);
  if (o.zoo.length < 2) throw new InputError(`the zoo needs at least 2 teachers, got ${o.zoo.length}`);
  if (o.tMax > o.zoo.length) throw new InputError(`tMax ${o.tMax} exceeds the zoo size ${o.zoo.length}`);
  if (!(o.learningRate > 0) || !Number.isFinite(o.learningRate)) throw new InputError(`learningRate must be positive, got ${o.learningRate}`);
  if (!(o.temperature > 0) || !Number.isFinite(o.temperature)) throw new InputError(`temperature must be positive, got ${o.temperature}`);
  if (!(o.kdWeight >= 0 && o.kdWeight <= 1)) throw new InputError(`kdWeight must be in [0, 1], got ${o.kdWeight}`);
  const inputSize = family.inputSize(o.arch);
  const outputSize = family.outputSize(o.arch);
  if (o.consolidation.n < 1 || featureSize(o.consolidation) !== inputSize) {
    throw new InputError(`the consolidation set must be non-empty with ${inputSize} features`);
  }
  for (const ds of [o.consolidation, o.validation.data]) {
    for (const label of ds.y) if (!(label >= 0 && label < outputSize)) throw new InputError(`label ${label} outside 0..${outputSize - 1}`);
  }
  if (o.validation.ensembles.length > 0 && (o.validation.data.n < 1 || featureSize(o.validation.data) !== inputSize)) {
    throw new InputError(`the validation data must be non-empty with ${inputSize} features`);
  }
  if (o.config.probeTokens && o.consolidation.n < o.config.probeSize) {
    throw new InputError(`probe tokens need ${o.config.probeSize} consolidation examples, there are ${o.consolidation.n}`);
  }
}

function fingerprintOf(o: AnyOptions): string {
  const family = familyOf(o.arch);
  const digest = (p: StudentParams): string => family.digest(p);
  // MLP runs hash exactly what they hashed before families existed (their checkpoints stay resumable).
  // Likewise a run without `alignment` (weight matching) hashes what it always did.
  const extra = {
    ...(family.name === 'mlp' ? {} : { studentBn: o.studentBn ?? 'eval' }),
    ...(o.alignment ? { alignment: { method: o.alignment.method, samples: o.alignment.samples } } : {}),
  };
  return createHash('sha256')
    .update(
      JSON.stringify({
        trainer: 'metaTrain/1',
        arch: family.signature(o.arch),
        config: canonicalConfig(o.config),
        zoo: o.zoo.map(digest),
        reference: digest(o.reference),
        consolidation: datasetDigest(o.consolidation),
        validation: { ensembles: o.validation.ensembles.map((e) => e.map(digest)), data: o.validation.ensembles.length > 0 ? datasetDigest(o.validation.data) : null },
        steps: o.steps,
        batchSize: o.batchSize,
        learningRate: o.learningRate,
        tMin: o.tMin,
        tMax: o.tMax,
        temperature: o.temperature,
        kdWeight: o.kdWeight,
        seed: o.seed,
        evalEvery: o.evalEvery,
        adam: [ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON],
        ...extra,
      }),
    )
    .digest('hex');
}

/** All parameters as one vector in `paramSpecs` order. */
export function flattenWeightformerParams(m: WeightformerModel<StudentArch>): Float32Array {
  const specs = paramSpecs(m.arch, m.config);
  const out = new Float32Array(specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0));
  let at = 0;
  for (const s of specs) {
    const v = m.params[s.name];
    if (!v) throw new Error(`parameter ${s.name} missing`);
    out.set(v, at);
    at += v.length;
  }
  return out;
}

/** `m` with its parameters replaced by the flat vector `flat` (copied). */
export function withFlatParams<A extends StudentArch>(m: WeightformerModel<A>, flat: Float32Array): WeightformerModel<A> {
  const params: Record<string, Float32Array> = {};
  let at = 0;
  for (const s of paramSpecs(m.arch, m.config)) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    params[s.name] = flat.slice(at, at + n);
    at += n;
  }
  if (at !== flat.length) throw new Error('withFlatParams: size mismatch');
  return { ...m, params };
}

/** The probe batch of probe tokens: a fixed, seeded choice of consolidation examples. */
export function probeBatch(consolidation: Dataset, size: number, seed: number): Dataset {
  const order = new Rng(deriveSeed(seed, 'probe-batch')).permutation(consolidation.n);
  return selectExamples(consolidation, order.subarray(0, size));
}

/** The first `k` entries of a random permutation of 0..n-1 (partial Fisher–Yates). */
function sampleWithoutReplacement(rng: Rng, n: number, k: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  for (let i = 0; i < k; i++) {
    const j = i + rng.nextInt(n - i);
    const tmp = a[i] ?? 0;
    a[i] = a[j] ?? 0;
    a[j] = tmp;
  }
  return a.slice(0, k);
}

/** What one meta-step needs of the model and the student family (fixed for a run). */
export interface MetaStepContext {
  names: string[];
  shapes: number[][];
  /** Element count of each parameter tensor, in `names` order. */
  sizes: number[];
  constants: ModelConstants;
  arch: StudentArch;
  family: StudentFamily;
  studentBn: StudentBnMode;
}

/** One meta-batch as host arrays: inputs, one-hot labels, the subset's mean soft targets and their −entropy. */
export interface MetaBatchArrays {
  x: Float32Array;
  yOneHot: Float32Array;
  kdProbs: Float32Array;
  negEntropy: Float32Array;
  n: number;
  features: number;
  classes: number;
  kdWeight: number;
  temperature: number;
}

/**
 * One meta-training step on the device: loss and gradients of the functional student built from `set`,
 * then one Adam update over all parameters as a single flat vector (a handful of element-wise kernels
 * instead of ~10 per parameter tensor). Returns new tensors; the caller disposes the old ones. Exported
 * so that bench/ times and profiles exactly the step meta-training runs.
 */
export function metaStepTensors(
  ctx: MetaStepContext,
  state: { params: tf.Tensor[]; m: tf.Tensor; v: tf.Tensor },
  set: SetTensors,
  b: MetaBatchArrays,
  t: number,
  learningRate: number,
): { loss: tf.Scalar; params: tf.Tensor[]; m: tf.Tensor; v: tf.Tensor } {
  return tf.tidy(() => {
    const batch: LossBatch = {
      x: tf.tensor2d(b.x, [b.n, b.features]),
      yOneHot: tf.tensor2d(b.yOneHot, [b.n, b.classes]),
      kd: { probs: tf.tensor2d(b.kdProbs, [b.n, b.classes]), negEntropy: tf.tensor1d(b.negEntropy), weight: b.kdWeight, temperature: b.temperature },
    };
    const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) =>
      ctx.family.loss(studentRows(asParams(ctx.names, ps), ctx.constants, set), ctx.constants.layout, ctx.arch, batch, ctx.studentBn),
    )(state.params);
    const flatP = tf.concat(state.params.map((p) => tf.reshape(p, [-1])));
    const flatG = tf.concat(grads.map((g) => tf.reshape(g, [-1])));
    const updated = adamUpdate({ params: [flatP], m: [state.m], v: [state.v] }, [flatG], t, learningRate);
    const newFlat = updated.params[0] as tf.Tensor;
    const pieces = tf.split(newFlat, ctx.sizes).map((piece, i) => tf.reshape(piece, ctx.shapes[i] ?? []));
    return { loss: value, params: pieces, m: updated.m[0] as tf.Tensor, v: updated.v[0] as tf.Tensor };
  });
}

/**
 * Meta-trains a WeightFormer; returns the best model by validation accuracy.
 *
 * @example
 * const { model, bestStep, valCurve } = await metaTrain(
 *   { arch, config: weightformerConfig(), zoo, reference: zoo[0], consolidation: split.consolidation,
 *     validation: { ensembles: [heldOut], data: split.validation }, steps: 600, batchSize: 256,
 *     learningRate: 1e-3, tMin: 2, tMax: 6, temperature: 2, kdWeight: 0.5, seed: 1,
 *     checkpointEvery: 50, evalEvery: 50 },
 *   { onStep: (s) => heartbeat(s), onCheckpoint: (st) => save(serializeMetaTrainState(st)) },
 * );
 */
export async function metaTrain<A extends StudentArch = ArchitectureSpec>(
  options: MetaTrainOptions<A>,
  hooks: MetaTrainHooks = {},
  resumeFrom?: MetaTrainState,
): Promise<MetaTrainResult<A>> {
  const o = options as unknown as AnyOptions;
  checkOptions(o);
  const family = familyOf(o.arch);
  const studentBn: StudentBnMode = o.studentBn ?? 'eval';
  const fingerprint = fingerprintOf(o);
  if (resumeFrom) {
    if (resumeFrom.fingerprint !== fingerprint) {
      throw new InputError('the checkpoint belongs to a different meta-training run (zoo, data or hyper-parameters differ)');
    }
    if (resumeFrom.step > o.steps || resumeFrom.curve.length !== resumeFrom.step) throw new InputError('the checkpoint position does not fit this run');
  }
  const probe = o.config.probeTokens ? probeBatch(o.consolidation, o.config.probeSize, o.seed) : undefined;
  // Alignment happens once, up front (activation matching is asynchronous and reads the consolidation
  // set's first `samples` examples): the zoo and the validation ensembles, aligned to the reference.
  const alignment = alignmentContext(o.alignment, o.consolidation);
  const alignedZoo = await alignTeachers(family, o.reference, o.zoo, alignment);
  const alignedValidation: StudentParams[][] = [];
  for (const e of o.validation.ensembles) alignedValidation.push(await alignTeachers(family, o.reference, e, alignment));
  // The fingerprint covers the architecture and the alignment, so a resumed model has this run's family,
  // shapes and alignment record.
  const model0: WeightformerModel<StudentArch> =
    resumeFrom?.model ??
    initWeightformer<StudentArch>(o.arch, o.config, o.reference, o.zoo, deriveSeed(o.seed, 'weightformer-init'), probe,
      o.alignment ? { alignment: o.alignment, zoo: alignedZoo } : undefined);
  const specs = paramSpecs(model0.arch, model0.config);
  const names = specs.map((s) => s.name);
  const sizes = specs.map((s) => s.shape.reduce((a, b) => a * b, 1));
  const total = sizes.reduce((a, b) => a + b, 0);

  // Precomputed once: the zoo's and the validation ensembles' tokens, the zoo's soft targets.
  const layoutConst = modelConstants(model0);
  const { layout, config } = layoutConst;
  const featuresOf = (aligned: StudentParams): TeacherFeatures => teacherFeatures(layout, config, model0.stats, aligned);
  const zooFeatures = alignedZoo.map(featuresOf);
  const valFeatures = alignedValidation.map((e) => e.map(featuresOf));
  const classes = family.outputSize(o.arch);
  const zooProbs: Float32Array[] = [];
  for (const p of o.zoo) zooProbs.push(await family.predictProbs(p, o.consolidation, o.temperature));
  const d = featureSize(o.consolidation);
  const batchSize = Math.min(o.batchSize, o.consolidation.n);

  let step = resumeFrom?.step ?? 0;
  const curve = resumeFrom?.curve.slice() ?? [];
  const valCurve = resumeFrom?.valCurve.map((v) => ({ ...v })) ?? [];
  let best: MetaTrainState['best'] = resumeFrom?.best ? { ...resumeFrom.best, params: new Float32Array(resumeFrom.best.params) } : null;
  const rng = resumeFrom ? Rng.fromState(resumeFrom.rngState) : new Rng(deriveSeed(o.seed, 'meta-train-stream'));

  const flat0 = flattenWeightformerParams(model0);
  const upload = (a: Float32Array, shape: number[]): tf.Tensor => tf.tensor(new Float32Array(a), shape, 'float32');
  const splitFlat = (flat: Float32Array): tf.Tensor[] => {
    let at = 0;
    return specs.map((s, i) => {
      const t = upload(flat.subarray(at, at + (sizes[i] ?? 0)), s.shape);
      at += sizes[i] ?? 0;
      return t;
    });
  };
  let params: tf.Tensor[] = splitFlat(flat0);
  let m: tf.Tensor = upload(resumeFrom?.adam.m ?? new Float32Array(total), [total]);
  let v: tf.Tensor = upload(resumeFrom?.adam.v ?? new Float32Array(total), [total]);

  const downloadFlat = async (ts: tf.Tensor[]): Promise<Float32Array> => {
    const out = new Float32Array(total);
    let at = 0;
    for (const t of ts) {
      const a = await t.data();
      out.set(a as Float32Array, at);
      at += a.length;
    }
    return out;
  };
  const snapshot = async (): Promise<MetaTrainState> => ({
    version: 1,
    fingerprint,
    step,
    model: withFlatParams(model0, await downloadFlat(params)),
    adam: { t: step, m: new Float32Array(await m.data()), v: new Float32Array(await v.data()) },
    rngState: rng.getState(),
    curve: curve.slice(),
    valCurve: valCurve.map((p) => ({ ...p })),
    best: best ? { ...best, params: new Float32Array(best.params) } : null,
  });

  const validate = async (): Promise<void> => {
    if (valFeatures.length === 0) return;
    const p = asParams(names, params);
    let sum = 0;
    for (const f of valFeatures) sum += await family.accuracy(await generateWith(p, layoutConst, model0, f), o.validation.data);
    const acc = sum / valFeatures.length;
    valCurve.push({ step, accuracy: acc });
    if (!best || acc > best.accuracy) best = { step, accuracy: acc, params: await downloadFlat(params) };
  };

  try {
    if (step === 0 && valCurve.length === 0) await validate();
    while (step < o.steps) {
      if (hooks.shouldAbort?.()) throw new MetaTrainingAbortedError(await snapshot());

      // The step's draws, all from the checkpointed stream: subset size, subset, batch.
      const T = o.tMin + rng.nextInt(o.tMax - o.tMin + 1);
      const subset = sampleWithoutReplacement(rng, o.zoo.length, T);
      const rows = sampleWithoutReplacement(rng, o.consolidation.n, batchSize);

      const setArrays = assembleSet(layout, config, Array.from(subset, (i) => zooFeatures[i] as TeacherFeatures));
      const xb = new Float32Array(batchSize * d);
      const yb = new Float32Array(batchSize * classes);
      const pb = new Float32Array(batchSize * classes);
      const hb = new Float32Array(batchSize);
      for (let r = 0; r < batchSize; r++) {
        const i = rows[r] ?? 0;
        xb.set(o.consolidation.x.subarray(i * d, (i + 1) * d), r * d);
        yb[r * classes + (o.consolidation.y[i] ?? 0)] = 1;
        let negEntropy = 0;
        for (let c = 0; c < classes; c++) {
          let s = 0;
          for (const z of subset) s += zooProbs[z]?.[i * classes + c] ?? 0;
          const prob = s / T;
          pb[r * classes + c] = prob;
          if (prob > 0) negEntropy += prob * Math.log(prob);
        }
        hb[r] = negEntropy;
      }

      const t = step + 1;
      const set = uploadSet(layoutConst, setArrays);
      let next: { loss: tf.Scalar; params: tf.Tensor[]; m: tf.Tensor; v: tf.Tensor };
      try {
        next = metaStepTensors(
          { names, shapes: specs.map((s) => s.shape), sizes, constants: layoutConst, arch: o.arch, family, studentBn },
          { params, m, v },
          set,
          { x: xb, yOneHot: yb, kdProbs: pb, negEntropy: hb, n: batchSize, features: d, classes, kdWeight: o.kdWeight, temperature: o.temperature },
          t,
          o.learningRate,
        );
      } finally {
        disposeSet(set);
      }
      tf.dispose([...params, m, v]);
      params = next.params;
      m = next.m;
      v = next.v;
      const loss = (await next.loss.data())[0] ?? NaN;
      next.loss.dispose();
      if (!Number.isFinite(loss)) throw new InputError(`meta-training diverged at step ${t} (loss ${loss}); lower the learning rate`);

      step = t;
      curve.push({ step, loss });
      if ((o.evalEvery > 0 && step % o.evalEvery === 0) || step === o.steps) await validate();
      await hooks.onStep?.({ step, totalSteps: o.steps, loss });
      if (o.checkpointEvery > 0 && step % o.checkpointEvery === 0 && hooks.onCheckpoint) await hooks.onCheckpoint(await snapshot());
      await nextMacrotask();
    }
    const finalFlat = best ? best.params : await downloadFlat(params);
    return {
      model: withFlatParams(model0, finalFlat) as WeightformerModel<A>,
      curve,
      valCurve,
      bestStep: best ? best.step : step,
      steps: step,
    };
  } finally {
    tf.dispose([...params, m, v]);
    disposeModelConstants(layoutConst);
  }
}

