/**
 * The ViT parameter file, and its digest (the content address used in training fingerprints).
 *
 * Layout (little-endian): "WFVT"  u32 version  utf8 JSON header (the `VitArchitecture`)  f32 arrays in
 * `vitParamShapes` order (each row-major)  sha256 trailer.
 *
 * Loading validates everything (`validateVitParams`): the bytes may be someone else's.
 */
import { createHash } from 'node:crypto';
import { InputError } from '../../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from '../bytes';
import type { VitArchitecture, VitParams } from './architecture';
import { checkVitArchitecture, validateVitParams, vitArchitectureOf, vitParamArrays, vitParamsFromArrays, vitParamShapes, vitSignature } from './architecture';

const FORMAT = { magic: 'WFVT', version: 1, what: 'ViT parameter file' };

/** Bytes of `p`; refuses (InputError) invalid or non-finite parameters. */
export function serializeVitParams(p: VitParams): Uint8Array {
  validateVitParams(p);
  const out = new ByteWriter();
  out.ascii(FORMAT.magic);
  out.u32(FORMAT.version);
  out.utf8(JSON.stringify(vitArchitectureOf(p)));
  for (const a of vitParamArrays(p)) out.f32Array(a);
  return out.finishWithChecksum();
}

/** Parses and validates a ViT parameter file; InputError says what is wrong with it. */
export function deserializeVitParams(bytes: Uint8Array): VitParams {
  const r = openContainer(bytes, FORMAT);
  const arch = readJsonHeader<VitArchitecture>(r, FORMAT.what);
  if (typeof arch !== 'object' || arch === null) throw new InputError(`${FORMAT.what}: unreadable header`);
  checkVitArchitecture(arch);
  const sizes = vitParamShapes(arch).map((s) => s.reduce((a, v) => a * v, 1));
  // Checked before allocating: a damaged header must not ask for gigabytes.
  const count = sizes.reduce((a, v) => a + v, 0);
  if (r.remaining !== 4 * count) throw new InputError(`${FORMAT.what}: ${r.remaining} bytes of values do not fit ${vitSignature(arch)}`);
  const params = vitParamsFromArrays(arch, sizes.map((n) => r.f32Array(n)));
  r.expectEnd();
  validateVitParams(params);
  return params;
}

/** sha256 (hex) of the parameter file: the content address of a ViT. */
export function vitParamsDigest(p: VitParams): string {
  return createHash('sha256').update(serializeVitParams(p)).digest('hex');
}
