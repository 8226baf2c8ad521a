/**
 * The pipeline JSON Schema (`schemas/pipeline.schema.json`) and its compiled ajv validator.
 *
 * The schema is the source of truth for the file format: its `default`s feed `applyDefaults`, its property
 * lists feed the did-you-mean suggestions, and editors use it through the `# yaml-language-server: $schema=`
 * comment at the top of each pipeline file.
 */
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import schemaJson from '../../schemas/pipeline.schema.json';

/** A (sub)schema as this module reads it: only the keywords the pipeline schema uses. */
export interface SchemaNode {
  $ref?: string;
  type?: string | string[];
  properties?: Record<string, SchemaNode>;
  additionalProperties?: boolean | SchemaNode;
  required?: string[];
  items?: SchemaNode;
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
  description?: string;
  definitions?: Record<string, SchemaNode>;
  [keyword: string]: unknown;
}

/** The pipeline schema, as loaded from `schemas/pipeline.schema.json`. */
export const PIPELINE_SCHEMA: SchemaNode = schemaJson as unknown as SchemaNode;

/** Follows a local `$ref` (`#/definitions/x`); other schemas are returned unchanged. */
export function deref(schema: SchemaNode): SchemaNode {
  let s = schema;
  for (let hops = 0; s.$ref !== undefined; hops++) {
    const m = /^#\/definitions\/([A-Za-z0-9_]+)$/.exec(s.$ref);
    const target = m ? PIPELINE_SCHEMA.definitions?.[m[1]!] : undefined;
    if (!target || hops > 16) throw new Error(`pipeline schema: unresolvable $ref ${s.$ref}`);
    // Keywords next to the $ref (description, default) belong to the referring property; the target's to it.
    s = { ...target, ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== '$ref')) };
  }
  return s;
}

/** The subschema of the property at a JSON pointer's segments, or undefined if the schema has none. */
export function schemaAt(segments: readonly string[]): SchemaNode | undefined {
  let s: SchemaNode | undefined = PIPELINE_SCHEMA;
  for (const seg of segments) {
    if (!s) return undefined;
    s = deref(s);
    if (s.properties && Object.prototype.hasOwnProperty.call(s.properties, seg)) s = s.properties[seg];
    else if (s.items && /^\d+$/.test(seg)) s = s.items;
    else if (s.additionalProperties && typeof s.additionalProperties === 'object') s = s.additionalProperties;
    else return undefined;
  }
  return s ? deref(s) : undefined;
}

let validator: ValidateFunction | undefined;

/** Validates a plain value against the pipeline schema; returns every error (empty when valid). */
export function schemaErrors(value: unknown): ErrorObject[] {
  if (!validator) {
    const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true, verbose: true });
    validator = ajv.compile(PIPELINE_SCHEMA);
  }
  return validator(value) ? [] : [...(validator.errors ?? [])];
}
