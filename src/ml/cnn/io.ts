/**
 * The CNN parameter file, and its digest (the content address used in training fingerprints).
 *
 * Layout (little-endian): "WFCN"  u32 version  utf8 JSON header (the `CnnArchitecture`)
 *   per conv block: f32 kernel [k, k, cin, cout], f32 bias, and with BN f32 gamma, beta, running mean,
 *   running variance; per dense layer: f32 w (in × out, row-major), f32 b;  sha256 trailer.
 *
 * Loading validates everything (`validateCnnParams`): the bytes may be someone else's.
 */
import { createHash } from 'node:crypto';
import { InputError } from '../../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from '../bytes';
import type { CnnArchitecture, CnnParams } from './architecture';
import { checkCnnArchitecture, cnnArchitectureOf, cnnFlatSize, cnnSignature, initCnn, validateCnnParams } from './architecture';

const FORMAT = { magic: 'WFCN', version: 1, what: 'CNN parameter file' };

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

/** Bytes of `p`; refuses (InputError) invalid or non-finite parameters. */
export function serializeCnnParams(p: CnnParams): Uint8Array {
  validateCnnParams(p);
  const out = new ByteWriter();
  out.ascii(FORMAT.magic);
  out.u32(FORMAT.version);
  out.utf8(JSON.stringify(cnnArchitectureOf(p)));
  for (const a of cnnParamArrays(p)) out.f32Array(a);
  return out.finishWithChecksum();
}

/** Parses and validates a CNN parameter file; InputError says what is wrong with it. */
export function deserializeCnnParams(bytes: Uint8Array): CnnParams {
  const r = openContainer(bytes, FORMAT);
  const arch = readJsonHeader<CnnArchitecture>(r, FORMAT.what);
  if (typeof arch !== 'object' || arch === null) throw new InputError(`${FORMAT.what}: unreadable header`);
  checkCnnArchitecture(arch);
  // Checked before allocating: a damaged header must not ask for gigabytes.
  if (r.remaining !== 4 * floatCount(arch)) throw new InputError(`${FORMAT.what}: ${r.remaining} bytes of values do not fit ${cnnSignature(arch)}`);
  // The architecture fixes every array's length; a fresh init supplies the shapes, the file the values.
  const params = initCnn(arch, 0);
  for (const a of cnnParamArrays(params)) a.set(r.f32Array(a.length));
  r.expectEnd();
  validateCnnParams(params);
  return params;
}

/** sha256 (hex) of the parameter file: the content address of a CNN. */
export function cnnParamsDigest(p: CnnParams): string {
  return createHash('sha256').update(serializeCnnParams(p)).digest('hex');
}
