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
import { createHash } from 'node:crypto';
import { InputError } from '../../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from '../bytes';
import type { ResnetArchitecture, ResnetParams } from './architecture';
import { checkResnetArchitecture, initResnet, resnetArchitectureOf, resnetParamArrays, resnetSignature, validateResnetParams } from './architecture';

const FORMAT = { magic: 'WFRN', version: 1, what: 'ResNet parameter file' };

/** Number of float32 values the file of a ResNet with this architecture holds. */
function floatCount(arch: ResnetArchitecture): number {
  const { kernelSize: k, width } = arch;
  const conv = (cin: number): number => k * k * cin * width + 5 * width;
  return conv(arch.inputShape[2]) + 2 * arch.stages * arch.blocksPerStage * conv(width) + (width + 1) * arch.outputSize;
}

/** Bytes of `p`; refuses (InputError) invalid or non-finite parameters. */
export function serializeResnetParams(p: ResnetParams): Uint8Array {
  validateResnetParams(p);
  const out = new ByteWriter();
  out.ascii(FORMAT.magic);
  out.u32(FORMAT.version);
  out.utf8(JSON.stringify(resnetArchitectureOf(p)));
  for (const a of resnetParamArrays(p)) out.f32Array(a);
  return out.finishWithChecksum();
}

/** Parses and validates a ResNet parameter file; InputError says what is wrong with it. */
export function deserializeResnetParams(bytes: Uint8Array): ResnetParams {
  const r = openContainer(bytes, FORMAT);
  const arch = readJsonHeader<ResnetArchitecture>(r, FORMAT.what);
  if (typeof arch !== 'object' || arch === null) throw new InputError(`${FORMAT.what}: unreadable header`);
  checkResnetArchitecture(arch);
  // Checked before allocating: a damaged header must not ask for gigabytes.
  if (r.remaining !== 4 * floatCount(arch)) throw new InputError(`${FORMAT.what}: ${r.remaining} bytes of values do not fit ${resnetSignature(arch)}`);
  // The architecture fixes every array's length; a fresh init supplies the shapes, the file the values.
  const params = initResnet(arch, 0);
  for (const a of resnetParamArrays(params)) a.set(r.f32Array(a.length));
  r.expectEnd();
  validateResnetParams(params);
  return params;
}

/** sha256 (hex) of the parameter file: the content address of a ResNet. */
export function resnetParamsDigest(p: ResnetParams): string {
  return createHash('sha256').update(serializeResnetParams(p)).digest('hex');
}
