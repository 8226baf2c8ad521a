import assert from 'node:assert/strict';
import { initBackend } from '../src/ml/backend';
import { GRADIENT_KERNELS } from '../src/ml/gradients';
import type { MlpParams, MlpTensors } from '../src/ml/mlp';
import { initMlp, paramsToTensors, disposeMlpTensors } from '../src/ml/mlp';
import { Rng } from '../src/ml/rng';
import { tf } from '../src/ml/tf';
import { mlpLoss } from '../src/ml/train';

/** A tensor of uniform values in ±[lo, hi] (kept away from 0, where relu/maximum/abs have kinks). */
function awayFromZero(rng: Rng, shape: number[], lo = 0.2, hi = 1): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = (rng.nextFloat() < 0.5 ? -1 : 1) * (lo + (hi - lo) * rng.nextFloat());
  return tf.tensor(v, shape);
}
function positive(rng: Rng, shape: number[]): tf.Tensor {
  return tf.abs(awayFromZero(rng, shape, 0.5, 2));
}

interface GradCase {
  kernel: string;
  label: string;
  inputs: (rng: Rng) => tf.Tensor[];
  f: (...xs: tf.Tensor[]) => tf.Tensor;
}

const CASES: GradCase[] = [
  { kernel: 'BatchMatMul', label: 'a·b', inputs: (r) => [awayFromZero(r, [3, 4]), awayFromZero(r, [4, 2])], f: (a, b) => tf.matMul(a!, b!) },
  { kernel: 'BatchMatMul', label: 'a·bᵀ', inputs: (r) => [awayFromZero(r, [3, 4]), awayFromZero(r, [2, 4])], f: (a, b) => tf.matMul(a!, b!, false, true) },
  { kernel: 'BatchMatMul', label: 'aᵀ·b', inputs: (r) => [awayFromZero(r, [4, 3]), awayFromZero(r, [4, 2])], f: (a, b) => tf.matMul(a!, b!, true, false) },
  { kernel: 'BatchMatMul', label: 'aᵀ·bᵀ', inputs: (r) => [awayFromZero(r, [4, 3]), awayFromZero(r, [2, 4])], f: (a, b) => tf.matMul(a!, b!, true, true) },
  { kernel: 'BatchMatMul', label: '3-D · 2-D (broadcast batch)', inputs: (r) => [awayFromZero(r, [2, 3, 4]), awayFromZero(r, [4, 2])], f: (a, b) => tf.matMul(a!, b!) },
  { kernel: 'Add', label: 'broadcast', inputs: (r) => [awayFromZero(r, [3, 4]), awayFromZero(r, [4])], f: (a, b) => tf.add(a!, b!) },
  { kernel: 'Sub', label: 'broadcast', inputs: (r) => [awayFromZero(r, [3, 1]), awayFromZero(r, [3, 4])], f: (a, b) => tf.sub(a!, b!) },
  { kernel: 'Multiply', label: 'broadcast', inputs: (r) => [awayFromZero(r, [3, 4]), awayFromZero(r, [1, 4])], f: (a, b) => tf.mul(a!, b!) },
  { kernel: 'RealDiv', label: 'broadcast', inputs: (r) => [awayFromZero(r, [3, 4]), positive(r, [4])], f: (a, b) => tf.div(a!, b!) },
  { kernel: 'SquaredDifference', label: '', inputs: (r) => [awayFromZero(r, [3, 4]), awayFromZero(r, [3, 4])], f: (a, b) => tf.squaredDifference(a!, b!) },
  {
    kernel: 'Maximum',
    label: 'no ties',
    inputs: (r) => {
      const a = awayFromZero(r, [3, 4]);
      return [a, tf.add(a, awayFromZero(r, [3, 4], 0.1, 0.5))]; // |a − b| ≥ 0.1 ≫ the finite-difference step
    },
    f: (a, b) => tf.maximum(a!, b!),
  },
  { kernel: 'AddN', label: '', inputs: (r) => [awayFromZero(r, [3, 4]), awayFromZero(r, [3, 4])], f: (a, b) => tf.addN([a!, b!, a!]) },
  { kernel: 'Neg', label: '', inputs: (r) => [awayFromZero(r, [5])], f: (a) => tf.neg(a!) },
  { kernel: 'Identity', label: 'clone', inputs: (r) => [awayFromZero(r, [5])], f: (a) => tf.clone(a!) },
  { kernel: 'Cast', label: 'float32→float32', inputs: (r) => [awayFromZero(r, [5])], f: (a) => tf.cast(a!, 'float32') },
  { kernel: 'Sum', label: 'axis 1', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.sum(a!, 1) },
  { kernel: 'Sum', label: 'all, keepDims', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.sum(a!, undefined, true) },
  { kernel: 'Mean', label: 'axis 0', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.mean(a!, 0) },
  { kernel: 'Reshape', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.reshape(a!, [2, 6]) },
  { kernel: 'ExpandDims', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.expandDims(a!, 1) },
  { kernel: 'Transpose', label: '3-D', inputs: (r) => [awayFromZero(r, [2, 3, 4])], f: (a) => tf.transpose(a!, [2, 0, 1]) },
  { kernel: 'Relu', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.relu(a!) },
  { kernel: 'Tanh', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.tanh(a!) },
  { kernel: 'Sigmoid', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.sigmoid(a!) },
  { kernel: 'Exp', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.exp(a!) },
  { kernel: 'Log', label: '', inputs: (r) => [positive(r, [3, 4])], f: (a) => tf.log(a!) },
  { kernel: 'Square', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.square(a!) },
  { kernel: 'Sqrt', label: '', inputs: (r) => [positive(r, [3, 4])], f: (a) => tf.sqrt(a!) },
  { kernel: 'Rsqrt', label: '', inputs: (r) => [positive(r, [3, 4])], f: (a) => tf.rsqrt(a!) },
  { kernel: 'Erf', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.erf(a!) },
  { kernel: 'Softmax', label: '', inputs: (r) => [awayFromZero(r, [3, 4])], f: (a) => tf.softmax(a!) },
  { kernel: 'Concat', label: 'axis 1', inputs: (r) => [awayFromZero(r, [3, 2]), awayFromZero(r, [3, 4])], f: (a, b) => tf.concat([a!, b!], 1) },
  {
    kernel: 'SplitV',
    label: 'axis 1, one piece unused',
    inputs: (r) => [awayFromZero(r, [3, 6])],
    f: (a) => {
      const [p, , q] = tf.split(a!, [1, 2, 3], 1);
      return tf.concat([tf.mul(p!, 2), q!], 1);
    },
  },
  { kernel: 'Slice', label: '', inputs: (r) => [awayFromZero(r, [4, 5])], f: (a) => tf.slice(a!, [1, 2], [2, 3]) },
  { kernel: 'Tile', label: 'rank 2', inputs: (r) => [awayFromZero(r, [2, 3])], f: (a) => tf.tile(a!, [3, 2]) },
  { kernel: 'Tile', label: 'via broadcastTo, rank 3', inputs: (r) => [awayFromZero(r, [2, 1, 3])], f: (a) => tf.broadcastTo(a!, [2, 4, 3]) },
];

/** Central differences of Σ f(xs)·weights with respect to each element of each input, in float32. */
async function numericGrads(f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], weights: tf.Tensor, eps: number): Promise<Float32Array[]> {
  const objective = async (vals: Float32Array[]): Promise<number> => {
    const y = tf.tidy(() => tf.sum(tf.mul(f(...vals.map((v, i) => tf.tensor(v, xs[i]!.shape))), weights)));
    const out = (await y.data())[0]!;
    y.dispose();
    return out;
  };
  const base = await Promise.all(xs.map(async (x) => new Float32Array(await x.data())));
  const grads: Float32Array[] = [];
  for (let k = 0; k < xs.length; k++) {
    const g = new Float32Array(base[k]!.length);
    for (let i = 0; i < g.length; i++) {
      const plus = base.map((b) => new Float32Array(b));
      const minus = base.map((b) => new Float32Array(b));
      plus[k]![i]! += eps;
      minus[k]![i]! -= eps;
      g[i] = ((await objective(plus)) - (await objective(minus))) / (2 * eps);
    }
    grads.push(g);
  }
  return grads;
}

describe('ml gradients (tfjs-core ships none; ours vs finite differences)', function () {
  before(async () => {
    await initBackend('cpu');
  });

  it('registers a gradient for every kernel it lists', () => {
    for (const k of GRADIENT_KERNELS) assert.ok(tf.getGradient(k), `no gradient for ${k}`);
  });

  it('every registered kernel has at least one finite-difference case', () => {
    const tested = new Set(CASES.map((c) => c.kernel));
    assert.deepEqual(GRADIENT_KERNELS.filter((k) => !tested.has(k)), []);
  });

  for (const c of CASES) {
    it(`${c.kernel} ${c.label}`, async () => {
      const rng = new Rng(CASES.indexOf(c) + 1);
      const xs = c.inputs(rng);
      // The case must really exercise the kernel whose gradient it claims to test.
      const profile = await tf.profile(() => c.f(...xs));
      assert.ok(profile.kernels.some((k) => k.name === c.kernel), `${c.kernel} not run; ran ${profile.kernels.map((k) => k.name).join(',')}`);
      const outShape = tf.tidy(() => c.f(...xs)).shape;
      const weights = awayFromZero(rng, outShape);
      const analytic = tf.grads((...args: tf.Tensor[]) => tf.sum(tf.mul(c.f(...args), weights)))(xs);
      const numeric = await numericGrads(c.f, xs, weights, 1e-2);
      for (let k = 0; k < xs.length; k++) {
        assert.deepEqual(analytic[k]!.shape, xs[k]!.shape, `gradient ${k} has the input's shape`);
        const a = await analytic[k]!.data();
        const n = numeric[k]!;
        for (let i = 0; i < n.length; i++) {
          const tol = 5e-3 * Math.max(1, Math.abs(n[i]!));
          assert.ok(Math.abs(a[i]! - n[i]!) <= tol, `input ${k}[${i}]: analytic ${a[i]} vs numeric ${n[i]}`);
        }
      }
      tf.dispose([...xs, weights, ...analytic]);
    });
  }
});

/** The MLP loss in float64 on the host, written independently of tfjs, as the reference. */
function referenceLoss(p: MlpParams, x: number[][], y: number[], kd?: { probs: number[][]; weight: number; temperature: number }): number {
  let total = 0;
  x.forEach((row, r) => {
    let h = row;
    p.layers.forEach((layer, l) => {
      const z: number[] = [];
      for (let o = 0; o < layer.outSize; o++) {
        let s = layer.b[o]!;
        for (let i = 0; i < layer.inSize; i++) s += h[i]! * layer.w[i * layer.outSize + o]!;
        z.push(s);
      }
      h = l + 1 < p.layers.length ? z.map((v) => (p.activation === 'relu' ? Math.max(0, v) : Math.tanh(v))) : z;
    });
    const logSoftmax = (z: number[]): number[] => {
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((s, v) => s + Math.exp(v - m), 0));
      return z.map((v) => v - lse);
    };
    const ce = -logSoftmax(h)[y[r]!]!;
    if (!kd) {
      total += ce;
      return;
    }
    const logQ = logSoftmax(h.map((v) => v / kd.temperature));
    const pT = kd.probs[r]!;
    const kl = pT.reduce((s, pv, c) => s + (pv > 0 ? pv * (Math.log(pv) - logQ[c]!) : 0), 0);
    total += (1 - kd.weight) * ce + kd.weight * kd.temperature ** 2 * kl;
  });
  return total / x.length;
}

describe('ml loss gradient w.r.t. MLP parameters vs float64 finite differences', function () {
  before(async () => {
    await initBackend('cpu');
  });

  for (const activation of ['tanh', 'relu'] as const) {
    for (const withKd of [false, true]) {
      it(`${activation}, ${withKd ? 'CE + KD' : 'CE'}`, async () => {
        const rng = new Rng(withKd ? 11 : 12);
        const arch = { family: 'mlp' as const, inputSize: 5, hidden: [4, 4], outputSize: 3, activation };
        const params = initMlp(arch, 3);
        for (const l of params.layers) for (let i = 0; i < l.b.length; i++) l.b[i] = rng.normal(0, 0.3);
        const rows = 6;
        const x = Array.from({ length: rows }, () => Array.from({ length: 5 }, () => rng.normal()));
        const y = Array.from({ length: rows }, () => rng.nextInt(3));
        const probs = x.map(() => {
          const raw = [rng.nextFloat(), rng.nextFloat(), 0];
          const s = raw[0]! + raw[1]!;
          return raw.map((v) => v / s); // one zero entry exercises 0·log 0
        });
        const kd = withKd ? { probs, weight: 0.7, temperature: 2 } : undefined;
        const yOneHot = y.map((c) => [0, 1, 2].map((k) => (k === c ? 1 : 0)));
        const negEntropy = probs.map((row) => row.reduce((s, pv) => s + (pv > 0 ? pv * Math.log(pv) : 0), 0));

        const t = paramsToTensors(params);
        const flat = t.layers.flatMap((l) => [l.w, l.b]);
        const batch = {
          x: tf.tensor2d(x),
          yOneHot: tf.tensor2d(yOneHot),
          ...(kd ? { kd: { probs: tf.tensor2d(probs), negEntropy: tf.tensor1d(negEntropy), weight: kd.weight, temperature: kd.temperature } } : {}),
        };
        const asMlp = (ps: tf.Tensor[]): MlpTensors => ({
          activation,
          layers: t.layers.map((_, i) => ({ w: ps[2 * i] as tf.Tensor2D, b: ps[2 * i + 1] as tf.Tensor1D })),
        });
        const { value, grads } = tf.valueAndGrads((...ps: tf.Tensor[]) => mlpLoss(asMlp(ps), batch))(flat);
        const loss = (await value.data())[0]!;
        const ref = referenceLoss(params, x, y, kd);
        assert.ok(Math.abs(loss - ref) <= 1e-5 * Math.max(1, Math.abs(ref)), `loss ${loss} vs reference ${ref}`);

        // Perturb each parameter in float64 on the host copy.
        const eps = 1e-6;
        let k = 0;
        for (const [li, layer] of params.layers.entries()) {
          for (const [name, arr] of [['w', layer.w], ['b', layer.b]] as const) {
            const g = await grads[k++]!.data();
            for (let i = 0; i < arr.length; i++) {
              const perturbed = (delta: number): number => {
                const copy: MlpParams = { activation, layers: params.layers.map((l) => ({ ...l, w: Float64Array.from(l.w) as unknown as Float32Array, b: Float64Array.from(l.b) as unknown as Float32Array })) };
                const target = copy.layers[li]!;
                (name === 'w' ? target.w : target.b)[i]! += delta;
                return referenceLoss(copy, x, y, kd);
              };
              const numeric = (perturbed(eps) - perturbed(-eps)) / (2 * eps);
              const tol = 1e-4 + 1e-3 * Math.abs(numeric);
              assert.ok(Math.abs(g[i]! - numeric) <= tol, `layer ${li} ${name}[${i}]: autodiff ${g[i]} vs numeric ${numeric}`);
            }
          }
        }
        disposeMlpTensors(t);
        tf.dispose([value, ...grads, batch.x, batch.yOneHot]);
        if (batch.kd) tf.dispose([batch.kd.probs, batch.kd.negEntropy]);
      });
    }
  }
});
