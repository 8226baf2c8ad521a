/**
 * The compute rig: one WeightFormer meta-training step (the batched model through `metaStepTensors`, the
 * exact step `metaTrain` runs, or the plain port of bench/plain-port.ts) and one student training step,
 * on whatever backend is active. Used by the suite (bench/suite.ts) and the GPU entry (bench/gpu-entry.ts).
 *
 * Shapes follow the seed prototype's meta-step (its design notes are not in this repository): MLP 784-64-10 students (74 rows),
 * T teachers, d = 64 (the default config), a batch of consolidation digits. Teachers are freshly
 * initialised MLPs: timing and kernel counts do not depend on what the teachers learned.
 */
import type { ArchitectureSpec } from '../src/spec/types';
import { adamUpdate } from '../src/ml/adam';
import { initMlp, paramsToTensors } from '../src/ml/mlp';
import { Rng, deriveSeed } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import { mlpLoss, type LossBatch } from '../src/ml/train';
import { weightformerConfig, type WeightformerConfig } from '../src/ml/weightformer/config';
import { familyOf } from '../src/ml/weightformer/family';
import { metaStepTensors, type MetaBatchArrays } from '../src/ml/weightformer/meta-train';
import { disposeModelConstants, disposeSet, initWeightformer, modelConstants, paramSpecs, uploadSet, type ModelConstants, type SetTensors } from '../src/ml/weightformer/model';
import { assembleSet, teacherFeatures } from '../src/ml/weightformer/tokens';
import { plainMetaStep } from './plain-port';

export type MetaStepImplementation = 'batched' | 'plain-port';

export interface MetaStepShape {
  teachers: number;
  batchSize: number;
  hidden: number[];
  config?: Partial<WeightformerConfig>;
  seed: number;
}

export const PROTOTYPE_SHAPE: MetaStepShape = { teachers: 4, batchSize: 256, hidden: [64], seed: 1 };

/** A prepared step: `run` performs one step and reads its loss back (so the work is finished). */
export interface StepRig {
  /** One step; the new state replaces the old. Returns the loss. */
  run(): Promise<number>;
  /** The kernels one step dispatches, counted by `tf.profile` (not timed). */
  kernels(): Promise<{ count: number; byName: Record<string, number> }>;
  dispose(): void;
}

/**
 * A batch of seeded random "digits" (pixels in [0, 1], labels 0–9) with uniform soft targets: timing and
 * kernel counts do not depend on the pixels, and leaving the embedded MNIST out keeps the GPU bundle small.
 */
function syntheticBatch(n: number, classes: number, seed: number): MetaBatchArrays {
  const rng = new Rng(deriveSeed(seed, 'bench-batch'));
  const features = 784;
  const x = new Float32Array(n * features);
  for (let i = 0; i < x.length; i++) x[i] = rng.nextFloat();
  const yOneHot = new Float32Array(n * classes);
  for (let i = 0; i < n; i++) yOneHot[i * classes + rng.nextInt(classes)] = 1;
  const kdProbs = new Float32Array(n * classes).fill(1 / classes);
  const negEntropy = new Float32Array(n).fill(-Math.log(classes));
  return { x, yOneHot, kdProbs, negEntropy, n, features, classes, kdWeight: 0.5, temperature: 2 };
}

function lossBatchOf(b: MetaBatchArrays): LossBatch {
  return {
    x: tf.tensor2d(b.x, [b.n, b.features]),
    yOneHot: tf.tensor2d(b.yOneHot, [b.n, b.classes]),
    kd: { probs: tf.tensor2d(b.kdProbs, [b.n, b.classes]), negEntropy: tf.tensor1d(b.negEntropy), weight: b.kdWeight, temperature: b.temperature },
  };
}

async function countKernels(f: () => tf.TensorContainer): Promise<{ count: number; byName: Record<string, number> }> {
  const info = await tf.profile(() => {
    const out = f();
    tf.dispose(out);
    return [];
  });
  const byName: Record<string, number> = {};
  for (const k of info.kernels) byName[k.name] = (byName[k.name] ?? 0) + 1;
  return { count: info.kernels.length, byName };
}

export interface MetaStepRigParts {
  arch: ArchitectureSpec;
  constants: ModelConstants;
  set: SetTensors;
  names: string[];
  params: tf.Tensor[];
}

/** The model, constants and one uploaded teacher set of `shape` (shared by both implementations). */
export function metaStepParts(shape: MetaStepShape): MetaStepRigParts & { shapes: number[][]; sizes: number[]; config: WeightformerConfig } {
  const arch: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden: shape.hidden, outputSize: 10, activation: 'relu' };
  const config = weightformerConfig(shape.config ?? {});
  const zoo = Array.from({ length: shape.teachers }, (_, i) => initMlp(arch, deriveSeed(shape.seed, 'bench-teacher', i)));
  const model = initWeightformer(arch, config, zoo[0] ?? initMlp(arch, 0), zoo, deriveSeed(shape.seed, 'bench-weightformer'));
  // Non-zero output adapters, as after training, so the whole graph (and its gradient) is exercised.
  for (const s of paramSpecs(arch, config)) {
    if (!s.name.startsWith('out.')) continue;
    const v = model.params[s.name] as Float32Array;
    for (let i = 0; i < v.length; i++) v[i] = Math.sin(i + 1) * 0.01;
  }
  const constants = modelConstants(model);
  const family = familyOf(arch);
  const features = zoo.map((p) => teacherFeatures(constants.layout, config, model.stats, family.align(model.reference, p)));
  const set = uploadSet(constants, assembleSet(constants.layout, config, features));
  const specs = paramSpecs(arch, config);
  const params = specs.map((s) => tf.tensor(model.params[s.name] as Float32Array, s.shape, 'float32'));
  return { arch, constants, set, names: specs.map((s) => s.name), params, shapes: specs.map((s) => s.shape), sizes: specs.map((s) => s.shape.reduce((a, b) => a * b, 1)), config };
}

/** Frees what `metaStepParts` uploaded. */
export function disposeMetaStepParts(parts: MetaStepRigParts): void {
  tf.dispose(parts.params);
  disposeSet(parts.set);
  disposeModelConstants(parts.constants);
}

/** A meta-training step of `implementation` on the active backend. */
export function metaStepRig(shape: MetaStepShape, implementation: MetaStepImplementation): StepRig {
  const parts = metaStepParts(shape);
  const b = syntheticBatch(shape.batchSize, parts.arch.outputSize, shape.seed);
  const total = parts.sizes.reduce((a, c) => a + c, 0);
  const lr = 1e-4;
  if (implementation === 'batched') {
    const ctx = { names: parts.names, shapes: parts.shapes, sizes: parts.sizes, constants: parts.constants, arch: parts.arch, family: familyOf(parts.arch), studentBn: 'eval' as const };
    const initial = { params: parts.params, m: tf.zeros([total]) as tf.Tensor, v: tf.zeros([total]) as tf.Tensor };
    return optimizerRig(
      initial,
      (state) => [...state.params, state.m, state.v],
      (state, t) => {
        const next = metaStepTensors(ctx, state, parts.set, b, t, lr);
        return { loss: next.loss, state: { params: next.params, m: next.m, v: next.v } };
      },
      () => {
        disposeSet(parts.set);
        disposeModelConstants(parts.constants);
      },
    );
  }
  const initial = { params: parts.params, m: parts.params.map((p) => tf.zerosLike(p)), v: parts.params.map((p) => tf.zerosLike(p)) };
  return optimizerRig(
    initial,
    (state) => [...state.params, ...state.m, ...state.v],
    (state, t) =>
      tf.tidy(() => {
        const next = plainMetaStep(parts.names, state, parts.constants, parts.set, parts.arch, lossBatchOf(b), t, lr);
        return { loss: next.loss, state: { params: next.params, m: next.m, v: next.v } };
      }),
    () => {
      disposeSet(parts.set);
      disposeModelConstants(parts.constants);
    },
  );
}

/** One student training step (MLP 784-hidden-10, CE + KD, Adam per tensor, as `trainMlp` steps). */
export function studentStepRig(hidden: number[], batchSize: number, seed: number): StepRig {
  const arch: ArchitectureSpec = { family: 'mlp', inputSize: 784, hidden, outputSize: 10, activation: 'relu' };
  const b = syntheticBatch(batchSize, 10, seed);
  const tensors = paramsToTensors(initMlp(arch, seed));
  const params: tf.Tensor[] = tensors.layers.flatMap((l) => [l.w, l.b]);
  const initial = { params, m: params.map((p) => tf.zerosLike(p)), v: params.map((p) => tf.zerosLike(p)) };
  return optimizerRig(
    initial,
    (state) => [...state.params, ...state.m, ...state.v],
    (state, t) =>
      tf.tidy(() => {
        const batch = lossBatchOf(b);
        const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) =>
          mlpLoss({ activation: 'relu', layers: arch.hidden.concat([10]).map((_, i) => ({ w: ps[2 * i] as tf.Tensor2D, b: ps[2 * i + 1] as tf.Tensor1D })) }, batch),
        )(state.params);
        const next = adamUpdate(state, grads, t, 1e-3);
        return { loss: value as tf.Scalar, state: { params: next.params, m: next.m, v: next.v } };
      }),
  );
}

/**
 * A step rig over an optimizer state: each run steps from the current state (Adam's step count t from 1),
 * frees it and keeps the new one; `kernels` counts one step's kernels without keeping its result.
 */
function optimizerRig<S>(
  initial: S,
  tensorsOf: (state: S) => tf.Tensor[],
  step: (state: S, t: number) => { loss: tf.Scalar; state: S },
  disposeInputs: () => void = () => {},
): StepRig {
  let state = initial;
  let t = 0;
  return {
    async run() {
      const next = step(state, t + 1);
      tf.dispose(tensorsOf(state));
      state = next.state;
      t++;
      const loss = (await next.loss.data())[0] ?? NaN;
      next.loss.dispose();
      return loss;
    },
    kernels: () => countKernels(() => { const n = step(state, t + 1); return [n.loss, ...tensorsOf(n.state)]; }),
    dispose() {
      tf.dispose(tensorsOf(state));
      disposeInputs();
    },
  };
}

/** Median ms per step over `reps` timed steps after `warmup` untimed ones (the first compiles shaders). */
export async function msPerStep(rig: StepRig, warmup: number, reps: number): Promise<{ ms: number; samples: number[]; lastLoss: number }> {
  let lastLoss = NaN;
  for (let i = 0; i < warmup; i++) lastLoss = await rig.run();
  const samples: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    lastLoss = await rig.run();
    samples.push(performance.now() - t0);
  }
  const sorted = samples.slice().sort((a, b) => a - b);
  return { ms: sorted[Math.floor(sorted.length / 2)] ?? NaN, samples, lastLoss };
}
