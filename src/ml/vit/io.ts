/**
 * The ViT parameter file, and its digest (the content address used in training fingerprints).
 *
 * Layout (little-endian): "WFVT"  u32 version  utf8 JSON header (the `VitArchitecture`)  f32 arrays in
 * `vitParamShapes` order (each row-major)  sha256 trailer.
 *
 * Loading validates everything (`validateVitParams`): the bytes may be someone else's.
 */
import type { ArrayFileFormat } from '../bytes';
import { readArrayFile, sha256Hex, writeArrayFile } from '../bytes';
import type { VitArchitecture, VitParams } from './architecture';
import { checkVitArchitecture, validateVitParams, vitArchitectureOf, vitParamArrays, vitParamsFromArrays, vitParamShapes, vitSignature } from './architecture';

/** Values per array of `arch`, in `vitParamShapes` order. */
function arraySizes(arch: VitArchitecture): number[] {
  return vitParamShapes(arch).map((s) => s.reduce((a, v) => a * v, 1));
}

/** The file format: the architecture as header, arrays in `vitParamShapes` order. */
const FORMAT: ArrayFileFormat<VitArchitecture, VitParams> = {
  magic: 'WFVT',
  version: 1,
  what: 'ViT parameter file',
  architectureOf: vitArchitectureOf,
  arrays: vitParamArrays,
  validate: validateVitParams,
  checkArchitecture: checkVitArchitecture,
  floatCount: (arch) => arraySizes(arch).reduce((a, v) => a + v, 0),
  signature: vitSignature,
  build: (arch, read) => vitParamsFromArrays(arch, arraySizes(arch).map(read)),
};

/** Bytes of `p`; refuses (InputError) invalid or non-finite parameters. */
export function serializeVitParams(p: VitParams): Uint8Array {
  return writeArrayFile(FORMAT, p);
}

/** Parses and validates a ViT parameter file; InputError says what is wrong with it. */
export function deserializeVitParams(bytes: Uint8Array): VitParams {
  return readArrayFile(FORMAT, bytes);
}

/** sha256 (hex) of the parameter file: the content address of a ViT. */
export function vitParamsDigest(p: VitParams): string {
  return sha256Hex(serializeVitParams(p));
}
