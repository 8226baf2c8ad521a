/**
 * The rows view of a ViT, for a WeightFormer: every layer is a matrix of rows, so a Transformer can read
 * a teacher's units as tokens and emit a student's.
 *
 * - `linear` layers (patch embedding, q, k, v, proj, fc1, fc2, head): one row per output unit — column
 *   `o` of `w` (inSize values, input order), then the bias; rowSize = inSize + 1. As for the CNN's dense
 *   layers. The rows of q, k and v are grouped by head (rows [h·dh, (h + 1)·dh) belong to head h), and
 *   these rows, with fc1's, are what alignment permutes.
 * - `norm` layers (each LayerNorm): one row per residual feature, [γ, β]; rowSize 2.
 * - `pos` (the position embeddings): one row per token (row-major patch order), its dim entries;
 *   rowSize = dim. (A token, not a feature, per row: that is the axis along which the embeddings differ
 *   in kind; a feature's entries across tokens would mix positions.)
 *
 * Order: patch_embed, pos_embed, then per block norm1, attn.q, attn.k, attn.v, attn.proj, norm2,
 * mlp.fc1, mlp.fc2, then the final norm and the head (the names are timm's).
 */
import type { MlpLayer } from '../mlp';
import { checkRowArrays, checkRowTensors, denseFromRowMatrix, denseFromRowTensor, denseToRowMatrix, rowColumn } from '../rows';
import { tf } from '../tf';
import type { VitArchitecture, VitLayerNorm, VitParams } from './architecture';
import { checkVitArchitecture, checkVitShapes, initVit, vitMlpHidden, vitPatchSize, vitTokens } from './architecture';
import type { VitLinearTensors, VitNormTensors, VitTensors } from './forward';
import { assembleVitTensors } from './forward';

export type VitRowsKind = 'linear' | 'norm' | 'pos';

export interface VitRowsLayer {
  kind: VitRowsKind;
  /** timm's parameter name, e.g. `blocks.0.attn.q`. */
  name: string;
  rows: number;
  rowSize: number;
}

/** One entry per layer, in the order above, with its row count and row length. */
export function vitRowsLayout(arch: VitArchitecture): VitRowsLayer[] {
  checkVitArchitecture(arch);
  const d = arch.dim;
  const hidden = vitMlpHidden(arch);
  const linear = (name: string, inSize: number, outSize: number): VitRowsLayer => ({ kind: 'linear', name, rows: outSize, rowSize: inSize + 1 });
  const norm = (name: string): VitRowsLayer => ({ kind: 'norm', name, rows: d, rowSize: 2 });
  const layers: VitRowsLayer[] = [linear('patch_embed', vitPatchSize(arch), d), { kind: 'pos', name: 'pos_embed', rows: vitTokens(arch), rowSize: d }];
  for (let b = 0; b < arch.depth; b++) {
    const at = `blocks.${b}`;
    layers.push(
      norm(`${at}.norm1`),
      ...['q', 'k', 'v', 'proj'].map((n) => linear(`${at}.attn.${n}`, d, d)),
      norm(`${at}.norm2`),
      linear(`${at}.mlp.fc1`, d, hidden),
      linear(`${at}.mlp.fc2`, hidden, d),
    );
  }
  layers.push(norm('norm'), linear('head', d, arch.outputSize));
  return layers;
}

/** The host layers in layout order, each as what it is. */
type HostLayer = { kind: 'linear'; layer: MlpLayer } | { kind: 'norm'; layer: VitLayerNorm } | { kind: 'pos'; values: Float32Array };

function hostLayers(p: VitParams): HostLayer[] {
  const lin = (layer: MlpLayer): HostLayer => ({ kind: 'linear', layer });
  const norm = (layer: VitLayerNorm): HostLayer => ({ kind: 'norm', layer });
  const out: HostLayer[] = [lin(p.patchEmbed), { kind: 'pos', values: p.posEmbed }];
  for (const b of p.blocks) out.push(norm(b.norm1), lin(b.q), lin(b.k), lin(b.v), lin(b.proj), norm(b.norm2), lin(b.fc1), lin(b.fc2));
  out.push(norm(p.norm), lin(p.head));
  return out;
}

/** The rows of every layer, each a row-major rows × rowSize matrix (of any values: gradients too). */
export function vitToRows(p: VitParams): Float32Array[] {
  checkVitShapes(p);
  return hostLayers(p).map((h) => {
    if (h.kind === 'pos') return new Float32Array(h.values);
    if (h.kind === 'norm') {
      const d = h.layer.gamma.length;
      const m = new Float32Array(d * 2);
      for (let i = 0; i < d; i++) {
        m[2 * i] = h.layer.gamma[i] ?? 0;
        m[2 * i + 1] = h.layer.beta[i] ?? 0;
      }
      return m;
    }
    return denseToRowMatrix(h.layer);
  });
}

/** The inverse of `vitToRows` (exact): parameters of `arch` from its rows. */
export function rowsToVitParams(rows: Float32Array[], arch: VitArchitecture): VitParams {
  checkRowArrays(rows, vitRowsLayout(arch));
  const p = initVit(arch, 0); // shapes only; every value is overwritten
  hostLayers(p).forEach((h, l) => {
    const m = rows[l] as Float32Array;
    if (h.kind === 'pos') {
      h.values.set(m);
    } else if (h.kind === 'norm') {
      for (let i = 0; i < h.layer.gamma.length; i++) {
        h.layer.gamma[i] = m[2 * i] ?? 0;
        h.layer.beta[i] = m[2 * i + 1] ?? 0;
      }
    } else {
      denseFromRowMatrix(m, h.layer);
    }
  });
  return p;
}

/**
 * The tensor version of `rowsToVitParams`, built from slices, transposes, reshapes and clones only, so
 * gradients flow from the logits back into `rows` (a generator's output). The caller disposes the result
 * (or runs it inside `tf.tidy`); the inputs stay the caller's.
 */
export function rowsToVitTensors(rows: tf.Tensor2D[], arch: VitArchitecture): VitTensors {
  const matrices = checkRowTensors(rows, vitRowsLayout(arch));
  let i = 0;
  const next = (): tf.Tensor2D => matrices[i++] as tf.Tensor2D;
  const linear = (): VitLinearTensors => denseFromRowTensor(next());
  const norm = (): VitNormTensors => {
    const m = next();
    return { gamma: rowColumn(m, 0), beta: rowColumn(m, 1) };
  };
  // The position embeddings a clone (same data, own handle): disposing the result must not dispose the caller's rows.
  return assembleVitTensors(arch, { linear, norm, pos: () => tf.clone(next()) });
}
