/**
 * The ResNet parameter file, and its digest (the content address used in training fingerprints).
 *
 * Layout (little-endian): "WFRN"  u32 version  utf8 JSON header (the `ResnetArchitecture`)
 *   per conv in `resnetConvs` order (stem, then per block conv1, conv2): f32 kernel [k, k, cin, cout],
 *   bias, gamma, beta, running mean, running variance;  f32 head w (width × classes), head b;
 *   sha256 trailer.
 *
 * Loading validates everything (`validateResnetParams`): the bytes may be someone else's.
 */
import type { ArrayFileFormat } from '../bytes';
import { readArrayFile, sha256Hex, writeArrayFile } from '../bytes';
import type { ResnetArchitecture, ResnetParams } from './architecture';
import { checkResnetArchitecture, initResnet, resnetArchitectureOf, resnetParamArrays, resnetSignature, validateResnetParams } from './architecture';

/** Number of float32 values the file of a ResNet with this architecture holds. */
function floatCount(arch: ResnetArchitecture): number {
  const { kernelSize: k, width } = arch;
  const conv = (cin: number): number => k * k * cin * width + 5 * width;
  return conv(arch.inputShape[2]) + 2 * arch.stages * arch.blocksPerStage * conv(width) + (width + 1) * arch.outputSize;
}

/** The file format: the architecture as header, arrays in `resnetParamArrays` order. */
const FORMAT: ArrayFileFormat<ResnetArchitecture, ResnetParams> = {
  magic: 'WFRN',
  version: 1,
  what: 'ResNet parameter file',
  architectureOf: resnetArchitectureOf,
  arrays: resnetParamArrays,
  validate: validateResnetParams,
  checkArchitecture: checkResnetArchitecture,
  floatCount,
  signature: resnetSignature,
  build: (arch, read) => {
    // The architecture fixes every array's length; a fresh init supplies the shapes, the file the values.
    const params = initResnet(arch, 0);
    for (const a of resnetParamArrays(params)) a.set(read(a.length));
    return params;
  },
};

/** Bytes of `p`; refuses (InputError) invalid or non-finite parameters. */
export function serializeResnetParams(p: ResnetParams): Uint8Array {
  return writeArrayFile(FORMAT, p);
}

/** Parses and validates a ResNet parameter file; InputError says what is wrong with it. */
export function deserializeResnetParams(bytes: Uint8Array): ResnetParams {
  return readArrayFile(FORMAT, bytes);
}

/** sha256 (hex) of the parameter file: the content address of a ResNet. */
export function resnetParamsDigest(p: ResnetParams): string {
  return sha256Hex(serializeResnetParams(p));
}
