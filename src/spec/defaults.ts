/**
 * The one place defaults are applied to a pipeline spec.
 *
 * Defaults come from the schema's `default`s (every object property without one is filled recursively), plus
 * the code defaults the schema cannot express:
 *   - `data.splitSeed` defaults to the pipeline `seed`;
 *   - `tracking.experiment` defaults to the pipeline `name`;
 *   - `stages`: for each stage, `stages.default` is merged (key by key, recursively) under the stage's own
 *     settings, then the schema defaults of a stage fill the rest; the result has one entry per stage and no
 *     `default` entry;
 *   - `architecture`: the schema defaults only `family` (to `mlp`); the family's own settings are filled from
 *     its row of `ARCHITECTURE_DEFAULTS` (one table per family, below), and no other family's settings are
 *     added. The families share some key names with different defaults (`hidden`: [64] for mlp, [] for
 *     cnn), so these cannot be schema `default`s:
 *       mlp:    inputSize 784, hidden [64], outputSize 10, activation relu;
 *       cnn:    inputShape [28, 28, 1], channels [16, 32], kernelSize 3, batchNorm true, pool max, hidden [],
 *               outputSize 10;
 *       resnet: inputShape [28, 28, 1], width 16, stages 3, blocksPerStage 1, kernelSize 3, outputSize 10;
 *       vit:    inputShape [28, 28, 1], patchSize 7, dim 32, heads 4, depth 2, mlpRatio 2, outputSize 10.
 *
 * `applyDefaults` expects input that already passed the schema (it does not validate) and returns a new
 * object; applying it to its own output gives the same spec.
 */
import { deref, PIPELINE_SCHEMA, type SchemaNode } from './schema.js';
import {
  ARCHITECTURE_FAMILIES, STAGE_NAMES, type ArchitectureFamily, type ArchitectureOf, type PipelineSpec, type StageName,
  type StageOptions,
} from './types.js';

type DeepPartial<T> = T extends Array<unknown> ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

/** A pipeline as written in a file: only `version` and `name` are required. */
export type RawPipeline = DeepPartial<Omit<PipelineSpec, 'version' | 'name' | 'stages'>> & {
  version: 1;
  name: string;
  stages?: Partial<Record<StageName | 'default', DeepPartial<StageOptions>>>;
};

/** Every setting of a family but `family` itself. */
export type FamilySettings<F extends ArchitectureFamily> = Omit<ArchitectureOf<F>, 'family'>;

/**
 * The defaults of each architecture family: one row per family, listing every setting of that family (its
 * keys, in this order, are the family's settings in messages).
 */
export const ARCHITECTURE_DEFAULTS: { readonly [F in ArchitectureFamily]: Readonly<FamilySettings<F>> } = {
  mlp: { inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' },
  cnn: { inputShape: [28, 28, 1], channels: [16, 32], kernelSize: 3, batchNorm: true, pool: 'max', hidden: [], outputSize: 10 },
  resnet: { inputShape: [28, 28, 1], width: 16, stages: 3, blocksPerStage: 1, kernelSize: 3, outputSize: 10 },
  vit: { inputShape: [28, 28, 1], patchSize: 7, dim: 32, heads: 4, depth: 2, mlpRatio: 2, outputSize: 10 },
};

/** The schema's default `architecture.family`. */
export const ARCHITECTURE_FAMILY_DEFAULT: unknown =
  deref(deref(PIPELINE_SCHEMA.properties!['architecture']!).properties!['family']!).default;

export function isArchitectureFamily(v: unknown): v is ArchitectureFamily {
  return typeof v === 'string' && (ARCHITECTURE_FAMILIES as readonly string[]).includes(v);
}

/** The settings of a family, `family` excluded, in `ARCHITECTURE_DEFAULTS` order. */
export function architectureSettings(family: ArchitectureFamily): string[] {
  return Object.keys(ARCHITECTURE_DEFAULTS[family]);
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function clone<T>(v: T): T {
  return v === undefined ? v : (JSON.parse(JSON.stringify(v)) as T);
}

/** Sets an own property (also for names like `__proto__`). */
function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Recursively merges `over` onto `base`: mappings merge key by key, anything else replaces. */
export function deepMerge(base: unknown, over: unknown): unknown {
  if (over === undefined) return clone(base);
  if (!isPlainObject(base) || !isPlainObject(over)) return clone(over);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(base)) setOwn(out, k, clone(v));
  for (const [k, v] of Object.entries(over)) setOwn(out, k, deepMerge(base[k], v));
  return out;
}

/**
 * Objects that stay absent unless the pipeline gives them (their defaults fill only a given block): their
 * absence means "off", and filling them would change every existing pipeline's hash and cache keys.
 */
const OPTIONAL_BLOCKS: ReadonlySet<string> = new Set(['/teachers/train/augment', '/zoo/train/augment', '/alignment']);

/**
 * Fills the schema defaults of `schema` into a copy of `value`; properties come out in schema order.
 * `codeDefaults` maps JSON pointers to the defaults the schema cannot express.
 */
function fill(
  schemaIn: SchemaNode, value: unknown, pointer: string, codeDefaults: ReadonlyMap<string, unknown>,
  skip: ReadonlySet<string> = new Set(),
): unknown {
  const schema = deref(schemaIn);
  if (!schema.properties || !isPlainObject(value)) return clone(value);
  const out: Record<string, unknown> = {};
  for (const [key, subIn] of Object.entries(schema.properties)) {
    if (skip.has(key)) continue;
    const sub = deref(subIn);
    const ptr = `${pointer}/${key}`;
    if (value[key] !== undefined) setOwn(out, key, fill(sub, value[key], ptr, codeDefaults));
    else if (sub.default !== undefined) setOwn(out, key, fill(sub, clone(sub.default), ptr, codeDefaults));
    else if (codeDefaults.has(ptr)) setOwn(out, key, clone(codeDefaults.get(ptr)));
    else if (sub.properties && !OPTIONAL_BLOCKS.has(ptr)) setOwn(out, key, fill(sub, {}, ptr, codeDefaults));
    // else: no default at all (the required `version` and `name`)
  }
  // Keys the schema does not list (only possible for unvalidated input) are kept as they are.
  for (const [key, v] of Object.entries(value)) {
    if (!Object.prototype.hasOwnProperty.call(schema.properties, key)) setOwn(out, key, clone(v));
  }
  return out;
}

/** Returns the fully defaulted spec of a schema-valid pipeline (see the module comment for the rules). */
export function applyDefaults(input: RawPipeline): PipelineSpec {
  const raw = input as unknown as Record<string, unknown>;
  const seedDefault = deref(PIPELINE_SCHEMA.properties!['seed']!).default;
  const codeDefaults = new Map<string, unknown>([
    ['/data/splitSeed', raw['seed'] ?? seedDefault],
    ['/tracking/experiment', raw['name']],
  ]);
  const rawArchitecture = isPlainObject(raw['architecture']) ? raw['architecture'] : {};
  const family = rawArchitecture['family'] ?? ARCHITECTURE_FAMILY_DEFAULT;
  if (isArchitectureFamily(family)) {
    for (const [key, value] of Object.entries(ARCHITECTURE_DEFAULTS[family])) codeDefaults.set(`/architecture/${key}`, value);
  }
  const out = fill(PIPELINE_SCHEMA, raw, '', codeDefaults, new Set(['stages', 'matrix', 'trigger'])) as Record<string, unknown>;
  // `trigger` is filled only when written: a pipeline without one keeps the spec (and hash) it always had.
  if (raw['trigger'] !== undefined) {
    // (`teacherTag` only when written, too: it and `teacherAlias` are alternatives.)
    const rawTrigger = isPlainObject(raw['trigger']) ? raw['trigger'] : {};
    const trigger = fill(PIPELINE_SCHEMA.properties!['trigger']!, rawTrigger, '/trigger', codeDefaults, new Set(['teacherTag'])) as Record<string, unknown>;
    if (rawTrigger['teacherTag'] !== undefined) trigger['teacherTag'] = clone(rawTrigger['teacherTag']);
    out['trigger'] = trigger;
  }

  const stageSchema = PIPELINE_SCHEMA.definitions!['stageOptions']!;
  const rawStages = isPlainObject(raw['stages']) ? raw['stages'] : {};
  const stages: Record<string, unknown> = {};
  for (const stage of STAGE_NAMES) {
    const merged = deepMerge(rawStages['default'] ?? {}, rawStages[stage] ?? {});
    setOwn(stages, stage, fill(stageSchema, merged, `/stages/${stage}`, codeDefaults));
  }
  out['stages'] = stages;
  out['matrix'] = isPlainObject(raw['matrix']) ? clone(raw['matrix']) : {};
  return out as unknown as PipelineSpec;
}
