/**
 * The safetensors format (https://github.com/huggingface/safetensors), read and written exactly:
 *
 *   u64 little-endian N | N bytes of UTF-8 JSON header | byte buffer
 *
 * The header is an object `{ "<tensor name>": { "dtype": "F32", "shape": [5, 6], "data_offsets": [begin,
 * end] }, ..., "__metadata__": { "<str>": "<str>" } }` (metadata optional); offsets are relative to the
 * start of the byte buffer; values are little-endian and C-ordered (row-major).
 *
 * Reading validates as the reference implementation (Rust `SafeTensors::read_metadata` + `validate`) does,
 * plus two rules the format's README states but the reference reader (0.8) does not enforce; every failure
 * is an InputError saying what is wrong, because the bytes may be someone else's:
 *   - at least 8 bytes; N ≤ 100 000 000 (the reference's MAX_HEADER_SIZE) and 8 + N ≤ file size;
 *   - the header is valid UTF-8 and a JSON object; it starts with `{` (README rule: no leading whitespace
 *     or BOM) and no object in it repeats a key (README rule; JSON.parse would silently keep the last);
 *   - numbers are integers (`1.0` is refused, as the reference's serde refuses it for a usize);
 *   - `__metadata__`, when present, maps strings to strings;
 *   - each tensor has a known dtype, a shape of non-negative integers, and `[begin, end]` integer offsets
 *     with begin ≤ end ≤ buffer size;
 *   - sorted by offsets, tensors tile the buffer exactly: the first begins at 0, each begins where the
 *     previous ends (no gaps, no overlaps), and the last ends at the end of the file (no trailing bytes);
 *   - end − begin = prod(shape) · dtype size, without overflow.
 * Unknown extra fields inside a tensor's entry are ignored, as the reference's serde derive ignores them.
 * Numbers written as `5.0` cannot be told from `5` after JSON.parse and are accepted.
 *
 * Writing (float32 only: what our parameters are) reproduces the reference serializer byte for byte:
 * tensors sorted by name (all F32, so the reference's "descending dtype alignment, then name" order reduces
 * to name order), compact JSON with `__metadata__` first and each entry's keys in the order dtype, shape,
 * data_offsets, the header padded with spaces to a multiple of 8 so the buffer is 8-byte aligned, then the
 * data. Metadata keys are sorted (the reference's HashMap order is arbitrary), so equal inputs give equal
 * bytes.
 */
import { InputError } from '../util/errors';

/** The reference's upper bound on the header length. */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;
export const SAFETENSORS_METADATA_KEY = '__metadata__';

/** Bytes per element of every dtype of the reference format. */
const DTYPE_BYTES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
} as const;

export type SafetensorsDtype = keyof typeof DTYPE_BYTES;

/** The dtypes `tensorToFloat32` converts. */
export const FLOAT_DTYPES: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16', 'F64'];

export interface SafetensorsTensor {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** The tensor's bytes: a view into the parsed file, little-endian. */
  data: Uint8Array;
}

export interface Safetensors {
  /** In the order of their data offsets. */
  tensors: SafetensorsTensor[];
  /** `__metadata__`, or undefined when the header has none. */
  metadata: Record<string, string> | undefined;
}

/** A float32 tensor to write: `data` holds prod(shape) values, row-major. */
export interface Float32TensorInput {
  shape: readonly number[];
  data: Float32Array;
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  if (v === undefined) return 'missing';
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** Sets an own enumerable property, even for the key `__proto__` (which plain assignment would not create). */
function setOwn<T>(target: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

/** True unless `s` holds a lone surrogate (which has no UTF-8 encoding). */
function isWellFormed(s: string): boolean {
  return typeof s === 'string' && !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

function isDtype(v: unknown): v is SafetensorsDtype {
  return typeof v === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, v);
}

/** Element count of `shape`, or undefined when it exceeds what a JS number holds exactly. */
function elementCount(shape: readonly number[]): number | undefined {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return undefined;
  }
  return n;
}

/**
 * Lexical rules JSON.parse cannot check, on `text` (valid JSON): no object repeats a key (JSON.parse keeps
 * the last silently, which would let two tensors of one name, or two dtypes of one tensor, through), and
 * every number is an integer literal (after JSON.parse, `5.0` and `5` are the same number).
 */
function checkHeaderLexically(text: string, fail: (message: string) => never): void {
  // One entry per open container: the keys seen so far for an object, null for an array.
  const open: Array<Set<string> | null> = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        const keys = open[open.length - 1];
        if (keys?.has(key)) {
          fail(open.length === 1 ? `the header lists ${show(key)} twice` : `an entry of the header repeats the field ${show(key)}`);
        }
        keys?.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === '{') {
      open.push(new Set());
      expectKey = true;
    } else if (c === '[') {
      open.push(null);
    } else if (c === '}' || c === ']') {
      open.pop();
      expectKey = false;
    } else if (c === ',') {
      expectKey = open[open.length - 1] !== null;
    } else if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) {
      let j = i + 1;
      while (j < text.length && /[-+0-9.eE]/.test(text[j] ?? '')) j++;
      const literal = text.slice(i, j);
      if (/[.eE]/.test(literal)) fail(`the header holds the number ${literal}; shapes and offsets are integers`);
      i = j - 1;
    }
  }
}

/**
 * Parses and validates a safetensors file (see the module comment for every rule). The tensors' `data` are
 * views into `bytes`. `what` names the file in messages.
 *
 * @example
 * const { tensors, metadata } = parseSafetensors(readFileSync('model.safetensors'), 'model.safetensors');
 */
export function parseSafetensors(bytes: Uint8Array, what = 'safetensors file'): Safetensors {
  const fail = (message: string): never => {
    throw new InputError(`${what}: ${message}`);
  };
  if (!(bytes instanceof Uint8Array)) fail('the content is not bytes');
  if (bytes.length < 8) fail(`${bytes.length} bytes is too short for the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const declared = view.getBigUint64(0, true);
  if (declared > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    fail(`the header length ${declared} exceeds the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit (a damaged or non-safetensors file)`);
  }
  const headerBytes = Number(declared);
  if (8 + headerBytes > bytes.length) {
    fail(`the header length ${headerBytes} runs past the end of the ${bytes.length}-byte file (truncated?)`);
  }
  const headerRaw = bytes.subarray(8, 8 + headerBytes);
  if (headerRaw[0] !== 0x7b) fail('the header does not start with "{"');
  let text = '';
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerRaw);
  } catch {
    fail('the header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text) as unknown;
  } catch (err) {
    fail(`the header is not valid JSON (${(err as Error).message})`);
  }
  if (!isRecord(header)) fail('the header is not a JSON object');
  const entries = header as Record<string, unknown>;
  checkHeaderLexically(text, fail);

  let metadata: Record<string, string> | undefined;
  const rawMetadata = entries[SAFETENSORS_METADATA_KEY];
  if (rawMetadata !== undefined) {
    if (!isRecord(rawMetadata)) fail(`${SAFETENSORS_METADATA_KEY} is ${show(rawMetadata)}; expected an object of strings`);
    metadata = {};
    for (const [k, v] of Object.entries(rawMetadata as Record<string, unknown>)) {
      if (typeof v !== 'string') fail(`${SAFETENSORS_METADATA_KEY}.${k} is ${show(v)}; metadata values must be strings`);
      setOwn(metadata, k, v as string);
    }
  }

  const dataStart = 8 + headerBytes;
  const dataLength = bytes.length - dataStart;
  const parsed: Array<SafetensorsTensor & { begin: number; end: number }> = [];
  for (const [name, info] of Object.entries(entries)) {
    if (name === SAFETENSORS_METADATA_KEY) continue;
    const where = `tensor ${show(name)}`;
    if (!isRecord(info)) fail(`${where} is ${show(info)}; expected {dtype, shape, data_offsets}`);
    const { dtype, shape, data_offsets: offsets } = info as Record<string, unknown>;
    if (!isDtype(dtype)) fail(`${where} has dtype ${show(dtype)}; expected one of ${Object.keys(DTYPE_BYTES).join(', ')}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      fail(`${where} has shape ${show(shape)}; expected a list of non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && (o as number) >= 0)) {
      fail(`${where} has data_offsets ${show(offsets)}; expected [begin, end], non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) fail(`${where} has data_offsets [${begin}, ${end}] that end before they begin`);
    if (end > dataLength) {
      fail(`${where} has data_offsets [${begin}, ${end}] out of range: the byte buffer holds ${dataLength} bytes`);
    }
    const count = elementCount(shape as number[]);
    const size = DTYPE_BYTES[dtype as SafetensorsDtype];
    const expectedBytes = count === undefined ? undefined : count * size;
    if (expectedBytes === undefined || !Number.isSafeInteger(expectedBytes)) fail(`${where} has shape ${show(shape)} whose size overflows`);
    if (end - begin !== expectedBytes) {
      fail(`${where} holds ${end - begin} bytes but its shape [${(shape as number[]).join(', ')}] of ${dtype} needs ${expectedBytes}`);
    }
    parsed.push({
      name,
      dtype: dtype as SafetensorsDtype,
      shape: shape as number[],
      data: bytes.subarray(dataStart + begin, dataStart + end),
      begin,
      end,
    });
  }

  // The reference orders by offsets and demands that they tile the buffer exactly.
  parsed.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const t of parsed) {
    if (t.begin !== cursor) {
      fail(
        t.begin < cursor
          ? `tensor ${show(t.name)} begins at byte ${t.begin}, inside the previous tensor (which ends at ${cursor}): tensors overlap`
          : `tensor ${show(t.name)} begins at byte ${t.begin} but the previous tensor ends at ${cursor}: the buffer has a gap`,
      );
    }
    cursor = t.end;
  }
  if (cursor !== dataLength) {
    fail(`the tensors cover ${cursor} bytes of the ${dataLength}-byte buffer: ${dataLength - cursor} trailing bytes belong to no tensor`);
  }
  return { tensors: parsed.map(({ name, dtype, shape, data }) => ({ name, dtype, shape, data })), metadata };
}

/** IEEE 754 binary16 bits → number (subnormals, infinities and NaN included). */
function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/**
 * The values of a floating-point tensor as float32 (F32 copied; F16 and BF16 widened exactly; F64 rounded
 * to the nearest float32, so values beyond float32's range become ±Infinity, for the caller's finiteness
 * check to catch). Other dtypes are an InputError.
 */
export function tensorToFloat32(t: SafetensorsTensor, what = 'safetensors file'): Float32Array {
  const n = t.data.length / DTYPE_BYTES[t.dtype];
  const view = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const out = new Float32Array(n);
  switch (t.dtype) {
    case 'F32':
      if (HOST_IS_LITTLE_ENDIAN) {
        // Copy through bytes: the tensor need not be 4-byte aligned within the file.
        new Uint8Array(out.buffer).set(t.data);
      } else {
        for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
      }
      return out;
    case 'F64':
      for (let i = 0; i < n; i++) out[i] = view.getFloat64(i * 8, true);
      return out;
    case 'F16':
      for (let i = 0; i < n; i++) out[i] = halfToNumber(view.getUint16(i * 2, true));
      return out;
    case 'BF16': {
      // bfloat16 is the upper half of a float32.
      const widened = new Uint32Array(n);
      for (let i = 0; i < n; i++) widened[i] = view.getUint16(i * 2, true) << 16;
      return new Float32Array(widened.buffer);
    }
    default:
      throw new InputError(`${what}: tensor ${show(t.name)} has dtype ${t.dtype}; only floating-point tensors (${FLOAT_DTYPES.join(', ')}) hold weights`);
  }
}

/**
 * A safetensors file of float32 tensors, byte for byte as the reference serializer writes it (see the
 * module comment). Throws InputError on an empty or `__metadata__` name, a shape that does not match the
 * data, or a name or metadata string that is not well-formed Unicode.
 *
 * @example
 * writeFileSync('model.safetensors', serializeSafetensors({ '0.weight': { shape: [5, 6], data } }, { format: 'pt' }));
 */
export function serializeSafetensors(tensors: Record<string, Float32TensorInput>, metadata?: Record<string, string>): Uint8Array {
  // Byte order of the UTF-8 encodings, as Rust's String ordering (UTF-16 order differs above U+FFFF).
  const names = Object.keys(tensors).sort((a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    const sorted: Record<string, string> = {};
    for (const key of Object.keys(metadata).sort((a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')))) {
      const value = metadata[key];
      if (typeof value !== 'string' || !isWellFormed(key) || !isWellFormed(value)) {
        throw new InputError(`safetensors metadata ${show(key)}: keys and values must be well-formed strings`);
      }
      setOwn(sorted, key, value);
    }
    setOwn(header, SAFETENSORS_METADATA_KEY, sorted);
  }
  let offset = 0;
  const chunks: Uint8Array[] = [];
  for (const name of names) {
    const t = Object.prototype.hasOwnProperty.call(tensors, name) ? tensors[name] : undefined;
    if (!t) continue;
    if (name === '' || name === SAFETENSORS_METADATA_KEY || !isWellFormed(name)) throw new InputError(`cannot name a safetensors tensor ${show(name)}`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || elementCount(t.shape) !== t.data.length) {
      throw new InputError(`safetensors tensor ${show(name)}: shape [${t.shape.join(', ')}] does not hold its ${t.data.length} values`);
    }
    const bytes = Buffer.alloc(t.data.length * 4);
    for (let i = 0; i < t.data.length; i++) bytes.writeFloatLE(t.data[i] ?? 0, i * 4);
    // Key order dtype, shape, data_offsets: the field order of the reference's TensorInfo.
    setOwn(header, name, { dtype: 'F32', shape: [...t.shape], data_offsets: [offset, offset + bytes.length] });
    offset += bytes.length;
    chunks.push(bytes);
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Buffer.alloc(json.length + ((8 - (json.length % 8)) % 8), 0x20);
  json.copy(padded);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(padded.length));
  return new Uint8Array(Buffer.concat([length, padded, ...chunks]));
}
