/**
 * WeightFormer layouts of the ResNet and ViT rows views (`resnet/rows.ts`, `vit/rows.ts`): which rows
 * each layer has, how long they are, and — for mixing weights and the outgoing-weight agreement statistic
 * — which unit of the previous layer each column reads (`LayerLayout.inputUnit`).
 *
 * Every layer after the first gets an `inputUnit` map, all −1 where no column reads the previous layer's
 * units: without one the model would treat the layer as an MLP layer whose columns are the previous
 * layer's units plus a bias, which is wrong for every layer here.
 *
 * ResNet (stem, per block conv1 and conv2, head): a conv column `t·cin + ci` reads channel `ci` at tap
 * `t`; a block's conv1 reads the residual stream, whose channel order is the previous conv2's (or the
 * stem's) — the stream shares one permutation, so that unit is the same channel; the head's column `i`
 * reads stream channel `i` after pooling. The BN running variance is every conv row's last column.
 *
 * ViT (timm order: patch_embed, pos_embed, per block norm1, attn.q/k/v/proj, norm2, mlp.fc1/fc2, final
 * norm, head): the map only names a previous layer that is the column's actual input — q reads norm1's
 * features, proj reads v's outputs (the heads side by side), fc1 reads norm2's, fc2 reads fc1's units, the
 * head reads the final norm's. k and v read norm1 too, but it is not their previous layer in the rows
 * order, so they (like the norms and the position embeddings) get no link.
 */
import { resnetRowsLayout } from '../resnet/rows';
import type { ResnetArchitecture } from '../resnet/architecture';
import { vitRowsLayout } from '../vit/rows';
import type { VitArchitecture } from '../vit/architecture';
import type { LayerLayout, Layout } from './tokens';

function unlinked(rowSize: number): Int32Array {
  return new Int32Array(rowSize).fill(-1);
}

/** Columns [0, n) read units [0, n) of the previous layer, the rest nothing. */
function identityLink(rowSize: number, n: number): Int32Array {
  const map = unlinked(rowSize);
  for (let i = 0; i < n; i++) map[i] = i;
  return map;
}

export function resnetLayoutOf(arch: ResnetArchitecture): Layout {
  const k2 = arch.kernelSize * arch.kernelSize;
  const layers: LayerLayout[] = [];
  let offset = 0;
  resnetRowsLayout(arch).forEach((r, l) => {
    let layer: LayerLayout;
    if (r.kind === 'conv') {
      const cin = r.role === 'stem' ? arch.inputShape[2] : arch.width;
      // Kernel slice, bias, then γ, β, running mean, running variance (BN is always present here).
      layer = { rows: r.rows, inSize: k2 * cin, rowSize: r.rowSize, rowOffset: offset, varianceColumn: r.rowSize - 1 };
      if (l > 0) {
        const map = unlinked(r.rowSize);
        for (let t = 0; t < k2; t++) for (let ci = 0; ci < cin; ci++) map[t * cin + ci] = ci;
        layer.inputUnit = map;
      }
    } else {
      layer = { rows: r.rows, inSize: arch.width, rowSize: r.rowSize, rowOffset: offset, inputUnit: identityLink(r.rowSize, arch.width) };
    }
    layers.push(layer);
    offset += r.rows;
  });
  return { layers, totalRows: offset };
}

/** The layers (by the timm name's last part) whose columns read the previous layer's units, one to one. */
const VIT_LINKED = new Set(['q', 'proj', 'fc1', 'fc2', 'head']);

export function vitLayoutOf(arch: VitArchitecture): Layout {
  const layers: LayerLayout[] = [];
  let offset = 0;
  let previousRows = 0;
  vitRowsLayout(arch).forEach((r, l) => {
    // Linear rows end with the bias; norm rows are [γ, β] and position rows dim entries, all "weights".
    const inSize = r.kind === 'linear' ? r.rowSize - 1 : r.rowSize;
    const layer: LayerLayout = { rows: r.rows, inSize, rowSize: r.rowSize, rowOffset: offset };
    if (l > 0) {
      const last = r.name.split('.').pop() ?? '';
      const linked = r.kind === 'linear' && VIT_LINKED.has(last);
      if (linked && inSize !== previousRows) throw new Error(`vit layout: ${r.name} reads ${inSize} units, its previous layer has ${previousRows}`);
      layer.inputUnit = linked ? identityLink(r.rowSize, inSize) : unlinked(r.rowSize);
    }
    layers.push(layer);
    offset += r.rows;
    previousRows = r.rows;
  });
  return { layers, totalRows: offset };
}
