/**
 * Little-endian byte writing/reading with bounds checks and a sha256 trailer, shared by the parameter and
 * checkpoint formats. Explicit little-endian (not the host's typed-array order) keeps files portable;
 * the trailer turns a flipped or truncated byte into a clear InputError instead of a silently wrong model.
 */
import { createHash } from 'node:crypto';
import { InputError } from '../util/errors';

const CHECKSUM_BYTES = 32;
/** On little-endian hosts (all we run on) float arrays are copied as bytes; the loops are the portable path. */
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export class ByteWriter {
  private chunks: Uint8Array[] = [];
  private length = 0;

  private push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  ascii(text: string): void {
    this.push(Buffer.from(text, 'ascii'));
  }

  u32(value: number): void {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`u32 out of range: ${value}`);
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value, 0);
    this.push(b);
  }

  f32Array(values: Float32Array): void {
    if (HOST_IS_LITTLE_ENDIAN) {
      this.push(Buffer.from(new Uint8Array(values.buffer, values.byteOffset, values.byteLength)));
      return;
    }
    const b = Buffer.alloc(values.length * 4);
    for (let i = 0; i < values.length; i++) b.writeFloatLE(values[i] ?? 0, i * 4);
    this.push(b);
  }

  /** Length-prefixed bytes. */
  blob(bytes: Uint8Array): void {
    this.u32(bytes.length);
    this.push(bytes);
  }

  /** Length-prefixed UTF-8. */
  utf8(text: string): void {
    this.blob(Buffer.from(text, 'utf8'));
  }

  /** All bytes written, followed by their sha256. */
  finishWithChecksum(): Uint8Array {
    const body = Buffer.concat(this.chunks, this.length);
    const sum = createHash('sha256').update(body).digest();
    return new Uint8Array(Buffer.concat([body, sum]));
  }
}

export class ByteReader {
  private offset = 0;
  private readonly view: Buffer;

  /** `what` names the format in error messages, e.g. "parameter file". */
  constructor(bytes: Uint8Array, private readonly what: string) {
    this.view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.view.length - this.offset;
  }

  private need(n: number): void {
    if (n > this.remaining) throw new InputError(`${this.what} is truncated (needs ${n} more bytes at offset ${this.offset})`);
  }

  ascii(n: number): string {
    this.need(n);
    const s = this.view.toString('latin1', this.offset, this.offset + n);
    this.offset += n;
    return s;
  }

  u32(): number {
    this.need(4);
    const v = this.view.readUInt32LE(this.offset);
    this.offset += 4;
    return v;
  }

  f32Array(count: number): Float32Array {
    this.need(count * 4);
    const out = new Float32Array(count);
    if (HOST_IS_LITTLE_ENDIAN) {
      new Uint8Array(out.buffer).set(this.view.subarray(this.offset, this.offset + count * 4));
    } else {
      for (let i = 0; i < count; i++) out[i] = this.view.readFloatLE(this.offset + i * 4);
    }
    this.offset += count * 4;
    return out;
  }

  blob(): Uint8Array {
    const n = this.u32();
    this.need(n);
    const out = new Uint8Array(this.view.subarray(this.offset, this.offset + n));
    this.offset += n;
    return out;
  }

  utf8(): string {
    return Buffer.from(this.blob()).toString('utf8');
  }

  /** Fails unless exactly the checksum trailer is left. */
  expectEnd(): void {
    if (this.remaining !== 0) throw new InputError(`${this.what} has ${this.remaining} unexpected trailing bytes`);
  }
}

/**
 * Splits off and verifies the sha256 trailer; returns the body. Call before parsing so that any damaged
 * byte is reported as corruption rather than as whatever field it happened to hit.
 */
export function verifyChecksum(bytes: Uint8Array, what: string): Uint8Array {
  if (bytes.length < CHECKSUM_BYTES) throw new InputError(`${what} is truncated (${bytes.length} bytes)`);
  const body = bytes.subarray(0, bytes.length - CHECKSUM_BYTES);
  const expected = createHash('sha256').update(body).digest();
  const actual = Buffer.from(bytes.buffer, bytes.byteOffset + body.length, CHECKSUM_BYTES);
  if (!expected.equals(actual)) throw new InputError(`${what} is corrupt or truncated (checksum mismatch)`);
  return body;
}

/** How a versioned, checksummed container format names itself. */
export interface ContainerFormat {
  magic: string;
  version: number;
  /** e.g. "parameter file", used in error messages. */
  what: string;
  /** "a" or "an" before `what`. */
  article?: 'a' | 'an';
}

/**
 * Opens a container written by ByteWriter (magic, u32 version, …, sha256 trailer): checks the magic, the
 * checksum and the version, and returns a reader positioned after the version. Every binary format of the
 * library starts this way, so a damaged or foreign file gets the same clear InputError everywhere.
 */
export function openContainer(bytes: Uint8Array, format: ContainerFormat): ByteReader {
  const { magic, version, what } = format;
  if (bytes.length < 4 || Buffer.from(bytes.subarray(0, 4)).toString('latin1') !== magic) {
    throw new InputError(`not ${format.article ?? 'a'} ${what} (expected magic ${magic})`);
  }
  const reader = new ByteReader(verifyChecksum(bytes, what), what);
  reader.ascii(4);
  const found = reader.u32();
  if (found !== version) throw new InputError(`${what} version ${found} is not supported (expected ${version})`);
  return reader;
}

/** Reads a length-prefixed JSON header; an unparsable one is an InputError naming the format. */
export function readJsonHeader<T>(reader: ByteReader, what: string): T {
  try {
    return JSON.parse(reader.utf8()) as T;
  } catch {
    throw new InputError(`${what}: unreadable header`);
  }
}

/**
 * A parameter file of the conv and transformer families: magic, u32 version, the architecture as a JSON
 * header, then every parameter array as f32 in a fixed order, then the sha256 trailer. The header says how
 * long each array is, so the file needs no other framing.
 */
export interface ArrayFileFormat<A, P> extends ContainerFormat {
  /** The architecture `p` has: the header. */
  architectureOf(p: P): A;
  /** `p`'s arrays in file order. */
  arrays(p: P): Float32Array[];
  /** Throws InputError unless `p` is consistent and finite (files are refused otherwise, both ways). */
  validate(p: P): void;
  /** Throws InputError unless a header read from a file describes a buildable architecture. */
  checkArchitecture(arch: A): void;
  /** Float32 values a file of `arch` holds, computed without allocating them. */
  floatCount(arch: A): number;
  /** Names `arch` in error messages. */
  signature(arch: A): string;
  /** Parameters of `arch` whose arrays, in file order, are read with `read(length)`. */
  build(arch: A, read: (length: number) => Float32Array): P;
}

/** Bytes of `p` in `format`; refuses (InputError) invalid or non-finite parameters. */
export function writeArrayFile<A, P>(format: ArrayFileFormat<A, P>, p: P): Uint8Array {
  format.validate(p);
  const out = new ByteWriter();
  out.ascii(format.magic);
  out.u32(format.version);
  out.utf8(JSON.stringify(format.architectureOf(p)));
  for (const a of format.arrays(p)) out.f32Array(a);
  return out.finishWithChecksum();
}

/** Parses and validates a file of `format`; InputError says what is wrong with it. */
export function readArrayFile<A, P>(format: ArrayFileFormat<A, P>, bytes: Uint8Array): P {
  const r = openContainer(bytes, format);
  const arch = readJsonHeader<A | null>(r, format.what);
  if (typeof arch !== 'object' || arch === null) throw new InputError(`${format.what}: unreadable header`);
  format.checkArchitecture(arch);
  // Checked before allocating: a damaged header must not ask for gigabytes.
  if (r.remaining !== 4 * format.floatCount(arch)) throw new InputError(`${format.what}: ${r.remaining} bytes of values do not fit ${format.signature(arch)}`);
  const params = format.build(arch, (length) => r.f32Array(length));
  r.expectEnd();
  format.validate(params);
  return params;
}

/** sha256 (hex) of bytes: the content address of a parameter file. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
