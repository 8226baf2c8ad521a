/**
 * The MLP parameter file: what teachers, students and WeightFormer references are stored as.
 *
 * Layout (little-endian):
 *   "WFMP"  u32 version=1  u32 activation (0 relu, 1 tanh)  u32 layerCount
 *   per layer: u32 inSize  u32 outSize
 *   per layer: f32[inSize·outSize] w (row-major)  f32[outSize] b
 *   sha256 of everything above (32 bytes)
 *
 * Loading validates everything (magic, version, checksum, shapes that chain, finite values) because the
 * bytes may come from a URL or an MLflow model of someone else's: a bad file must fail as InputError
 * (not retried), never train or score as garbage.
 */
import { createHash } from 'node:crypto';
import { InputError } from '../util/errors';
import { ByteWriter, openContainer } from './bytes';
import type { Activation, MlpLayer, MlpParams } from './mlp';

const MAGIC = 'WFMP';
const VERSION = 1;
const ACTIVATIONS: readonly Activation[] = ['relu', 'tanh'];
/** Sanity bounds: anything larger is a damaged header, not a model we could run. */
const MAX_LAYERS = 256;
const MAX_LAYER_SIZE = 1 << 24;
const WHAT = 'parameter file';

function checkFinite(values: Float32Array, where: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new InputError(`${WHAT}: non-finite value in ${where} at index ${i}`);
  }
}

/** Throws InputError unless the layer shapes are consistent and every value is finite. */
export function validateParams(p: MlpParams): void {
  if (!ACTIVATIONS.includes(p.activation)) throw new InputError(`${WHAT}: unknown activation ${String(p.activation)}`);
  if (p.layers.length < 1 || p.layers.length > MAX_LAYERS) throw new InputError(`${WHAT}: ${p.layers.length} layers`);
  p.layers.forEach((l, i) => {
    if (!Number.isInteger(l.inSize) || !Number.isInteger(l.outSize) || l.inSize < 1 || l.outSize < 1) {
      throw new InputError(`${WHAT}: layer ${i} has shape ${l.inSize}×${l.outSize}`);
    }
    if (l.w.length !== l.inSize * l.outSize || l.b.length !== l.outSize) {
      throw new InputError(`${WHAT}: layer ${i} arrays do not match its shape ${l.inSize}×${l.outSize}`);
    }
    const prev = p.layers[i - 1];
    if (prev && prev.outSize !== l.inSize) {
      throw new InputError(`${WHAT}: layer ${i} takes ${l.inSize} inputs but layer ${i - 1} gives ${prev.outSize}`);
    }
    checkFinite(l.w, `layer ${i} weights`);
    checkFinite(l.b, `layer ${i} bias`);
  });
}

/**
 * Bytes of `p` in the format above. Refuses (InputError) non-finite parameters: a diverged model must
 * never become an artifact.
 */
export function serializeParams(p: MlpParams): Uint8Array {
  validateParams(p);
  const out = new ByteWriter();
  out.ascii(MAGIC);
  out.u32(VERSION);
  out.u32(ACTIVATIONS.indexOf(p.activation));
  out.u32(p.layers.length);
  for (const l of p.layers) {
    out.u32(l.inSize);
    out.u32(l.outSize);
  }
  for (const l of p.layers) {
    out.f32Array(l.w);
    out.f32Array(l.b);
  }
  return out.finishWithChecksum();
}

/** Parses and validates a parameter file; InputError says what is wrong with it. */
export function deserializeParams(bytes: Uint8Array): MlpParams {
  const r = openContainer(bytes, { magic: MAGIC, version: VERSION, what: WHAT });
  const activation = ACTIVATIONS[r.u32()];
  if (!activation) throw new InputError(`${WHAT}: unknown activation code`);
  const layerCount = r.u32();
  if (layerCount < 1 || layerCount > MAX_LAYERS) throw new InputError(`${WHAT}: implausible layer count ${layerCount}`);
  const shapes: Array<[number, number]> = [];
  for (let i = 0; i < layerCount; i++) {
    const inSize = r.u32();
    const outSize = r.u32();
    if (inSize < 1 || outSize < 1 || inSize > MAX_LAYER_SIZE || outSize > MAX_LAYER_SIZE) {
      throw new InputError(`${WHAT}: implausible layer ${i} shape ${inSize}×${outSize}`);
    }
    shapes.push([inSize, outSize]);
  }
  const layers: MlpLayer[] = shapes.map(([inSize, outSize]) => ({ w: r.f32Array(inSize * outSize), b: r.f32Array(outSize), inSize, outSize }));
  r.expectEnd();
  const params: MlpParams = { activation, layers };
  validateParams(params);
  return params;
}

/** sha256 (hex) of the parameter file: the content address of a model. */
export function paramsDigest(p: MlpParams): string {
  return createHash('sha256').update(serializeParams(p)).digest('hex');
}
