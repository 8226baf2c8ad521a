/**
 * The CNN parameter file, and its digest (the content address used in training fingerprints).
 *
 * Layout (little-endian): "WFCN"  u32 version  utf8 JSON header (the `CnnArchitecture`)
 *   per conv block: f32 kernel [k, k, cin, cout], f32 bias, and with BN f32 gamma, beta, running mean,
 *   running variance; per dense layer: f32 w (in × out, row-major), f32 b;  sha256 trailer.
 *
 * Loading validates everything (`validateCnnParams`): the bytes may be someone else's.
 */
import type { ArrayFileFormat } from '../bytes';
import { readArrayFile, sha256Hex, writeArrayFile } from '../bytes';
import type { CnnArchitecture, CnnParams } from './architecture';
import { checkCnnArchitecture, cnnArchitectureOf, cnnFlatSize, cnnSignature, initCnn, validateCnnParams } from './architecture';

/** The parameter arrays in file order (also the order of `initCnn`'s layout, so shapes come from it). */
export function cnnParamArrays(p: CnnParams): Float32Array[] {
  const out: Float32Array[] = [];
  for (const c of p.convs) {
    out.push(c.kernel, c.bias);
    if (c.bn) out.push(c.bn.gamma, c.bn.beta, c.bn.runningMean, c.bn.runningVar);
  }
  for (const l of p.dense) out.push(l.w, l.b);
  return out;
}

/** Number of float32 values the file of a CNN with this architecture holds. */
function floatCount(arch: CnnArchitecture): number {
  const k = arch.kernelSize;
  let count = 0;
  let cin = arch.inputShape[2];
  for (const cout of arch.channels) {
    count += k * k * cin * cout + cout + (arch.batchNorm ? 4 * cout : 0);
    cin = cout;
  }
  const sizes = [cnnFlatSize(arch), ...arch.hidden, arch.outputSize];
  for (let l = 0; l + 1 < sizes.length; l++) count += ((sizes[l] ?? 0) + 1) * (sizes[l + 1] ?? 0);
  return count;
}

/** The file format: the architecture as header, arrays in `cnnParamArrays` order. */
const FORMAT: ArrayFileFormat<CnnArchitecture, CnnParams> = {
  magic: 'WFCN',
  version: 1,
  what: 'CNN parameter file',
  architectureOf: cnnArchitectureOf,
  arrays: cnnParamArrays,
  validate: validateCnnParams,
  checkArchitecture: checkCnnArchitecture,
  floatCount,
  signature: cnnSignature,
  build: (arch, read) => {
    // The architecture fixes every array's length; a fresh init supplies the shapes, the file the values.
    const params = initCnn(arch, 0);
    for (const a of cnnParamArrays(params)) a.set(read(a.length));
    return params;
  },
};

/** Bytes of `p`; refuses (InputError) invalid or non-finite parameters. */
export function serializeCnnParams(p: CnnParams): Uint8Array {
  return writeArrayFile(FORMAT, p);
}

/** Parses and validates a CNN parameter file; InputError says what is wrong with it. */
export function deserializeCnnParams(bytes: Uint8Array): CnnParams {
  return readArrayFile(FORMAT, bytes);
}

/** sha256 (hex) of the parameter file: the content address of a CNN. */
export function cnnParamsDigest(p: CnnParams): string {
  return sha256Hex(serializeCnnParams(p));
}
