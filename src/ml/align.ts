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
 *
 * The steps that do not depend on what a unit is (the assignment solver, the coordinate ascent, the
 * similarity of feature rows, the float64 mean, aligned averaging) are exported here for the CNN, ResNet
 * and ViT alignments, which only say how their units and signatures are laid out.
 *
 * Weight matching is the default everywhere a pipeline aligns. The alternative, activation matching
 * (`align-activations.ts`, `cnn/align-activations.ts`: units matched by how their outputs correlate on
 * consolidation examples; MLP and CNN), is chosen by a pipeline's `alignment: {method: activations}`; on
 * the cnn.yaml setting it lifts the aligned average from about 60% to 80% (bench/results/).
 */
import { InputError } from '../util/errors';
import type { MlpLayer, MlpParams } from './mlp';
import { architectureSignature, cloneParams } from './mlp';

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

/** Passes over all groups of units; weight matching typically settles in 2–4. */
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

/**
 * Weight matching's coordinate ascent, for every family: one permutation per group of units (`sizes[g]`
 * units in group g), each chosen in turn to maximise its similarity given the others' current choice,
 * repeated until a pass changes nothing. `similarity(g, perms)` is group g's n × n matrix with the
 * neighbouring groups read through `perms`. A fixed group order (not a random one, as in the paper) keeps
 * alignment a pure function of its inputs.
 */
export function coordinateAscent(sizes: number[], similarity: (g: number, perms: Int32Array[]) => Float64Array): Int32Array[] {
  const perms: Int32Array[] = sizes.map((n) => Int32Array.from({ length: n }, (_, i) => i));
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    let changed = false;
    sizes.forEach((n, g) => {
      const perm = maximizeAssignment(similarity(g, perms), n);
      const old = perms[g];
      if (!old || perm.some((p, i) => p !== old[i])) changed = true;
      perms[g] = perm;
    });
    if (!changed) break;
  }
  return perms;
}

/** Throws InputError unless `list` is non-empty and all its models have the first one's signature. */
export function checkSameSignature<P>(list: P[], signature: (p: P) => string): void {
  const first = list[0];
  if (first === undefined) throw new InputError('need at least one model');
  const sig = signature(first);
  for (const p of list) {
    const other = signature(p);
    if (other !== sig) throw new InputError(`models differ in architecture: ${sig} vs ${other}`);
  }
}

function checkSameArchitecture(list: MlpParams[]): void {
  checkSameSignature(list, architectureSignature);
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
  const widths = reference.layers.slice(0, -1).map((l) => l.outSize);
  return coordinateAscent(widths, (l, perms) => similarityMatrix(reference, teacher, l, perms));
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

/**
 * Element-wise mean of models of one architecture, for every family: a copy of the first (`clone`) whose
 * arrays (`arrays`, in a fixed order, running BN statistics included) are overwritten with the means,
 * accumulated in float64 so the result does not depend on float32 rounding of partial sums.
 */
export function averageArrays<P>(list: P[], clone: (p: P) => P, arrays: (p: P) => Float32Array[]): P {
  const out = clone(list[0] as P);
  const targets = arrays(out);
  const sources = list.map(arrays);
  targets.forEach((target, a) => {
    const acc = new Float64Array(target.length);
    for (const s of sources) {
      const src = s[a] as Float32Array;
      for (let i = 0; i < acc.length; i++) acc[i] = (acc[i] ?? 0) + (src[i] ?? 0);
    }
    for (let i = 0; i < acc.length; i++) target[i] = (acc[i] ?? 0) / list.length;
  });
  return out;
}

/** Every family's aligned average: each model aligned to `list[referenceIndex]` (which stays as it is), then averaged. */
export function alignedAverageOf<P>(list: P[], referenceIndex: number, align: (reference: P, p: P) => P, average: (list: P[]) => P): P {
  const reference = list[referenceIndex];
  if (reference === undefined) throw new InputError(`reference index ${referenceIndex} is outside the ${list.length} models`);
  return average(list.map((p, i) => (i === referenceIndex ? p : align(reference, p))));
}

/**
 * The similarity of every reference unit i to every teacher unit j, from their signatures as rows of
 * units × size feature matrices (neighbouring layers already read through the teacher's permutations):
 * sim[i·n + j] = ⟨reference row i, teacher row j⟩, in float64.
 */
export function featureSimilarity(reference: { features: Float64Array; size: number }, teacher: { features: Float64Array; size: number }, n: number): Float64Array {
  const sim = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < reference.size; k++) s += (reference.features[i * reference.size + k] ?? 0) * (teacher.features[j * teacher.size + k] ?? 0);
      sim[i * n + j] = s;
    }
  }
  return sim;
}

/** Element-wise mean of parameters (accumulated in float64). */
export function averageParams(list: MlpParams[]): MlpParams {
  checkSameArchitecture(list);
  return averageArrays(list, cloneParams, (p) => p.layers.flatMap((l) => [l.w, l.b]));
}

/** The naive baseline: average the teachers as they are (unit i with unit i). */
export function naiveAverage(list: MlpParams[]): MlpParams {
  return averageParams(list);
}

/** Aligns every teacher to `list[referenceIndex]`, then averages. */
export function alignedAverage(list: MlpParams[], referenceIndex = 0): MlpParams {
  return alignedAverageOf(list, referenceIndex, alignToReference, averageParams);
}
