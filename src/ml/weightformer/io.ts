/**
 * The WeightFormer file: config, architecture, reference teacher, zoo statistics and parameters.
 *
 * Layout (little-endian): "WFWF"  u32 version  utf8 JSON header  blob reference (the family's parameter
 *   file: `serializeParams` for an MLP, `serializeCnnParams` for a CNN; `arch.family` in the header says which)
 *   per layer: f32 center, f32 scale   [probe: f32 x, per layer f32 center]   parameters in paramSpecs order
 *   sha256 trailer.
 * Loading checks everything (magic, version, checksum, shapes, finiteness) and fails with InputError: a
 * model may come from a URL or a registry, and a damaged one must never write students.
 */
import { InputError } from '../../util/errors';
import { ByteWriter, openContainer, readJsonHeader } from '../bytes';
import type { WeightformerConfig } from './config';
import { canonicalConfig, checkWeightformerConfig } from './config';
import type { AlignmentRecord } from './family';
import { checkAlignmentRecord, familyOf } from './family';
import type { WeightformerModel } from './model';
import { paramSpecs } from './model';
import type { StudentArch } from './tokens';
import { layoutOf } from './tokens';

const MAGIC = 'WFWF';
const VERSION = 1;
const WHAT = 'WeightFormer file';

interface Header {
  config: WeightformerConfig;
  arch: StudentArch;
  signature: string;
  tokenNorm: number[];
  probe: { n: number; norm: number[] } | null;
  paramNames: string[];
  /** Only in files of models trained with activation matching (`WeightformerModel.alignment`); absent: weight matching. */
  alignment?: AlignmentRecord;
}

function checkFinite(a: Float32Array, where: string): void {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) throw new InputError(`${WHAT}: non-finite value in ${where}`);
}

/** Bytes of `m`; refuses non-finite parameters (a diverged model must never become an artifact). */
export function serializeWeightformer(m: WeightformerModel<StudentArch>): Uint8Array {
  const family = familyOf(m.arch);
  const layout = layoutOf(m.arch);
  const specs = paramSpecs(m.arch, m.config);
  const header: Header = {
    config: canonicalConfig(m.config),
    arch: m.arch,
    signature: m.signature,
    tokenNorm: m.stats.tokenNorm,
    probe: m.stats.probe ? { n: m.stats.probe.n, norm: m.stats.probe.norm } : null,
    paramNames: specs.map((s) => s.name),
    // Written only when set, so a weight-matching model's bytes are what they always were.
    ...(m.alignment ? { alignment: { method: m.alignment.method, samples: m.alignment.samples } } : {}),
  };
  const out = new ByteWriter();
  out.ascii(MAGIC);
  out.u32(VERSION);
  out.utf8(JSON.stringify(header));
  out.blob(family.serialize(m.reference));
  layout.layers.forEach((L, l) => {
    const size = L.rows * L.rowSize;
    for (const a of [m.stats.center[l], m.stats.scale[l]]) {
      if (!a || a.length !== size) throw new Error(`${WHAT}: zoo statistics of layer ${l} have the wrong size`);
      out.f32Array(a);
    }
  });
  if (m.stats.probe) {
    out.f32Array(m.stats.probe.x);
    for (const a of m.stats.probe.center) out.f32Array(a);
  }
  for (const s of specs) {
    const v = m.params[s.name];
    const size = s.shape.reduce((a, b) => a * b, 1);
    if (!v || v.length !== size) throw new Error(`${WHAT}: parameter ${s.name} has the wrong size`);
    checkFinite(v, s.name);
    out.f32Array(v);
  }
  return out.finishWithChecksum();
}

/** Config fields newer than the file format, with the value that means "as before the field existed". */
const ADDED_CONFIG_DEFAULTS: Partial<WeightformerConfig> = { contentGate: false, agreementStats: false };

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** Parses and validates a WeightFormer file. */
export function deserializeWeightformer(bytes: Uint8Array): WeightformerModel<StudentArch> {
  const r = openContainer(bytes, { magic: MAGIC, version: VERSION, what: WHAT });
  const header = readJsonHeader<Header>(r, WHAT);
  if (typeof header !== 'object' || header === null || typeof header.config !== 'object' || typeof header.arch !== 'object') {
    throw new InputError(`${WHAT}: inconsistent header`);
  }
  // Fields added after files were first written default to the behaviour those files had.
  header.config = { ...ADDED_CONFIG_DEFAULTS, ...header.config };
  checkWeightformerConfig(header.config);
  const family = familyOf(header.arch);
  family.checkArch(header.arch);
  if (header.config.probeTokens && !family.probeTokens) throw new InputError(`${WHAT}: probe tokens with a ${family.name} student`);
  const signature = family.signature(header.arch);
  if (header.signature !== signature) throw new InputError(`${WHAT}: signature ${String(header.signature)} does not match its architecture ${signature}`);
  const layout = layoutOf(header.arch);
  const L = layout.layers.length;
  if (!Array.isArray(header.tokenNorm) || header.tokenNorm.length !== L || !header.tokenNorm.every((v) => isNum(v) && v > 0)) {
    throw new InputError(`${WHAT}: bad token normalisation`);
  }
  const specs = paramSpecs(header.arch, header.config);
  if (!Array.isArray(header.paramNames) || header.paramNames.join(',') !== specs.map((s) => s.name).join(',')) {
    throw new InputError(`${WHAT}: its parameters do not match its config`);
  }
  const alignment = header.alignment === undefined ? undefined : checkAlignmentRecord(header.alignment, family, WHAT);
  const reference = family.deserialize(r.blob());
  family.checkParams(reference, header.arch);
  const center: Float32Array[] = [];
  const scale: Float32Array[] = [];
  for (const layer of layout.layers) {
    const size = layer.rows * layer.rowSize;
    center.push(r.f32Array(size));
    scale.push(r.f32Array(size));
  }
  let probe: WeightformerModel['stats']['probe'] = null;
  if (header.config.probeTokens) {
    const p = header.probe;
    if (!p || p.n !== header.config.probeSize || !Array.isArray(p.norm) || p.norm.length !== L || !p.norm.every((v) => isNum(v) && v > 0)) {
      throw new InputError(`${WHAT}: bad probe statistics`);
    }
    const x = r.f32Array(p.n * family.inputSize(header.arch));
    const pc = layout.layers.map((layer) => r.f32Array(layer.rows * p.n));
    probe = { x, n: p.n, center: pc, norm: p.norm.slice() };
  } else if (header.probe !== null) {
    throw new InputError(`${WHAT}: probe statistics without probe tokens`);
  }
  const params: Record<string, Float32Array> = {};
  for (const s of specs) params[s.name] = r.f32Array(s.shape.reduce((a, b) => a * b, 1));
  r.expectEnd();
  const all = [...center, ...scale, ...(probe ? [probe.x, ...probe.center] : []), ...Object.values(params)];
  all.forEach((a, i) => checkFinite(a, `array ${i}`));
  if (scale.some((a) => a.some((v) => !(v > 0)))) throw new InputError(`${WHAT}: non-positive delta scale`);
  return {
    version: 1,
    config: canonicalConfig(header.config),
    arch: header.arch,
    signature,
    reference,
    ...(alignment ? { alignment } : {}),
    stats: { center, scale, tokenNorm: header.tokenNorm.slice(), probe },
    params,
  };
}
