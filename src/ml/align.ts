/**
 * Aligning teachers' hidden units to a reference teacher, and averaging parameters.
 *
 * Independently trained networks compute the same function up to a permutation of each hidden layer's
 * units, so unit i of one teacher is generally not unit i of another; averaging them unaligned destroys
 * both. Weight matching (Ainsworth et al., "Git Re-Basin", 2023) picks, layer by layer, the permutation
 * that maximises the summed similarity of each unit's weights to the reference's — incoming weights and
 * bias, and outgoing weights — with a linear assignment solver, and repeats over the layers until no
 * permutation changes (each layer's choice depends on its neighbours'). Permuting hidden units never
 * changes the network's function, only the order of its units.
 */
import { InputError } from '../util/errors';
import type { MlpLayer, MlpParams } from './mlp';
import { architectureSignature } from './mlp';

interface AssignmentResult {
  rowAssignments: Float64Array;
}
type LinearSumAssignment = (cost: number[][], options?: { maximaze?: boolean }) => AssignmentResult;

/**
 * `linear-sum-assignment` (mljs, Jonker–Volgenant) ships only as an ES module. Node ≥ 20.19 loads ES
 * modules with `require`, which keeps alignment synchronous; the type is declared here because the
 * compiler, targeting CommonJS under `node16` resolution, refuses to import an ES module's types.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { linearSumAssignment } = require('linear-sum-assignment') as { linearSumAssignment: LinearSumAssignment };

/** Passes over all hidden layers; weight matching typically settles in 2–4. */
const MAX_PASSES = 10;

/**
 * For an n × n similarity matrix (row-major), the permutation `perm` maximising Σ_i sim[i][perm[i]]:
 * reference unit i is matched by teacher unit perm[i].
 */
export function maximizeAssignment(similarity: Float64Array, n: number): Int32Array {
  const rows: number[][] = [];
  for (let i = 0; i < n; i++) rows.push(Array.from(similarity.subarray(i * n, (i + 1) * n)));
  const { rowAssignments } = linearSumAssignment(rows, { maximaze: true });
  const perm = new Int32Array(n);
  const used = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const j = rowAssignments[i] ?? -1;
    if (!(j >= 0 && j < n) || used[j]) throw new Error(`assignment solver returned an invalid permutation at row ${i}`);
    used[j] = 1;
    perm[i] = j;
  }
  return perm;
}

function checkSameArchitecture(list: MlpParams[]): void {
  const first = list[0];
  if (!first) throw new InputError('need at least one model');
  const sig = architectureSignature(first);
  for (const p of list) {
    const other = architectureSignature(p);
    if (other !== sig) throw new InputError(`models differ in architecture: ${sig} vs ${other}`);
  }
}

function layerAt(p: MlpParams, l: number): MlpLayer {
  const layer = p.layers[l];
  if (!layer) throw new Error(`layer ${l} missing`);
  return layer;
}

/**
 * Similarity of reference unit i to teacher unit j in hidden layer l, given the teacher's current
 * permutations of the neighbouring layers (the input layer and the output layer are never permuted).
 */
function similarityMatrix(ref: MlpParams, teacher: MlpParams, l: number, perms: Int32Array[]): Float64Array {
  const inL = layerAt(ref, l);
  const inT = layerAt(teacher, l);
  const outR = layerAt(ref, l + 1);
  const outT = layerAt(teacher, l + 1);
  const n = inL.outSize;
  const prevPerm = l > 0 ? perms[l - 1] : undefined; // teacher's input units, in reference order
  const nextPerm = l + 1 < perms.length ? perms[l + 1] : undefined; // teacher's output units, in reference order
  const sim = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      // Incoming: column i of the reference vs column j of the teacher, inputs matched by prevPerm.
      let s = (inL.b[i] ?? 0) * (inT.b[j] ?? 0);
      for (let k = 0; k < inL.inSize; k++) {
        const kt = prevPerm ? (prevPerm[k] ?? 0) : k;
        s += (inL.w[k * n + i] ?? 0) * (inT.w[kt * n + j] ?? 0);
      }
      // Outgoing: row i of the next reference layer vs row j of the teacher's, outputs matched by nextPerm.
      const o = outR.outSize;
      for (let c = 0; c < o; c++) {
        const ct = nextPerm ? (nextPerm[c] ?? 0) : c;
        s += (outR.w[i * o + c] ?? 0) * (outT.w[j * o + ct] ?? 0);
      }
      sim[i * n + j] = s;
    }
  }
  return sim;
}

/**
 * `teacher` with each hidden layer's units reordered (perms[l][i] = old index of new unit i); the function
 * it computes is unchanged.
 */
export function permuteHiddenUnits(teacher: MlpParams, perms: Int32Array[]): MlpParams {
  if (perms.length !== teacher.layers.length - 1) throw new Error('one permutation per hidden layer');
  const layers: MlpLayer[] = teacher.layers.map((layer, l) => {
    const colPerm = perms[l]; // this layer's outputs are hidden units (none for the output layer)
    const rowPerm = l > 0 ? perms[l - 1] : undefined; // its inputs are the previous layer's hidden units
    const { inSize, outSize } = layer;
    const w = new Float32Array(inSize * outSize);
    const b = new Float32Array(outSize);
    for (let r = 0; r < inSize; r++) {
      const rOld = rowPerm ? (rowPerm[r] ?? 0) : r;
      for (let c = 0; c < outSize; c++) {
        const cOld = colPerm ? (colPerm[c] ?? 0) : c;
        w[r * outSize + c] = layer.w[rOld * outSize + cOld] ?? 0;
      }
    }
    for (let c = 0; c < outSize; c++) b[c] = layer.b[colPerm ? (colPerm[c] ?? 0) : c] ?? 0;
    return { w, b, inSize, outSize };
  });
  return { activation: teacher.activation, layers };
}

/** The permutations weight matching chooses to align `teacher` to `reference`. */
export function matchWeights(reference: MlpParams, teacher: MlpParams): Int32Array[] {
  checkSameArchitecture([reference, teacher]);
  const hidden = reference.layers.length - 1;
  const perms: Int32Array[] = [];
  for (let l = 0; l < hidden; l++) perms.push(Int32Array.from({ length: layerAt(reference, l).outSize }, (_, i) => i));
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    let changed = false;
    // A fixed layer order (not a random one, as in the paper) keeps alignment a pure function of its inputs.
    for (let l = 0; l < hidden; l++) {
      const n = layerAt(reference, l).outSize;
      const perm = maximizeAssignment(similarityMatrix(reference, teacher, l, perms), n);
      const old = perms[l];
      if (!old || perm.some((p, i) => p !== old[i])) changed = true;
      perms[l] = perm;
    }
    if (!changed) break;
  }
  return perms;
}

/**
 * `teacher` with its hidden units permuted to match `reference` (weight matching). Function-preserving.
 *
 * @example
 * const aligned = teachers.map((t) => alignToReference(teachers[0], t));
 */
export function alignToReference(reference: MlpParams, teacher: MlpParams): MlpParams {
  return permuteHiddenUnits(teacher, matchWeights(reference, teacher));
}

/** Element-wise mean of parameters (accumulated in float64). */
export function averageParams(list: MlpParams[]): MlpParams {
  checkSameArchitecture(list);
  const first = list[0] as MlpParams;
  const mean = (pick: (p: MlpParams) => Float32Array): Float32Array => {
    const size = pick(first).length;
    const acc = new Float64Array(size);
    for (const p of list) {
      const a = pick(p);
      for (let i = 0; i < size; i++) acc[i] = (acc[i] ?? 0) + (a[i] ?? 0);
    }
    const out = new Float32Array(size);
    for (let i = 0; i < size; i++) out[i] = (acc[i] ?? 0) / list.length;
    return out;
  };
  return {
    activation: first.activation,
    layers: first.layers.map((layer, l) => ({
      w: mean((p) => layerAt(p, l).w),
      b: mean((p) => layerAt(p, l).b),
      inSize: layer.inSize,
      outSize: layer.outSize,
    })),
  };
}

/** The naive baseline: average the teachers as they are (unit i with unit i). */
export function naiveAverage(list: MlpParams[]): MlpParams {
  return averageParams(list);
}

/** Aligns every teacher to `list[referenceIndex]`, then averages. */
export function alignedAverage(list: MlpParams[], referenceIndex = 0): MlpParams {
  const reference = list[referenceIndex];
  if (!reference) throw new InputError(`reference index ${referenceIndex} is outside the ${list.length} models`);
  return averageParams(list.map((p, i) => (i === referenceIndex ? p : alignToReference(reference, p))));
}
