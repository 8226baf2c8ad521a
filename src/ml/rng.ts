/**
 * Seeded pseudo-random numbers whose state is four plain numbers.
 *
 * Checkpoints must capture every source of randomness so that a resumed run equals an uninterrupted one;
 * `Math.random` and tfjs's own seeded ops keep hidden state, so the library draws from this instead.
 * xoshiro128** (Blackman & Vigna) is small, fast in 32-bit integer JS arithmetic, and passes BigCrush.
 */
import { createHash } from 'node:crypto';
import { InputError } from '../util/errors';

/** The generator's whole state: four uint32 words. Plain numbers, so it survives JSON. */
export type RngState = number[];

const TWO_32 = 0x1_0000_0000;

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** One splitmix32 output for `state + k·golden`; a bijection of the state, used only for seeding. */
function splitmix32(state: number, k: number): number {
  let z = (state + Math.imul(k, 0x9e3779b9)) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed)) throw new InputError(`seed must be a safe integer, got ${seed}`);
}

export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  /** Any safe integer seeds a generator; the low and high 32-bit words seed separate halves of the state. */
  constructor(seed: number) {
    checkSeed(seed);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / TWO_32) >>> 0;
    this.s0 = splitmix32(lo, 1);
    this.s1 = splitmix32(lo, 2);
    this.s2 = splitmix32(hi ^ 0x5bd1e995, 1);
    this.s3 = splitmix32(hi ^ 0x5bd1e995, 2);
    // xoshiro must never be all zero; the chance is 2^-128, but a stuck generator would be silent.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** A generator that continues exactly where the one whose state this is left off. */
  static fromState(state: RngState): Rng {
    const rng = new Rng(0);
    rng.setState(state);
    return rng;
  }

  getState(): RngState {
    return [this.s0, this.s1, this.s2, this.s3];
  }

  setState(state: RngState): void {
    if (state.length !== 4 || !state.every((w) => Number.isInteger(w) && w >= 0 && w < TWO_32)) {
      throw new InputError('RNG state must be four uint32 words');
    }
    const [a = 0, b = 0, c = 0, d = 0] = state;
    if ((a | b | c | d) === 0) throw new InputError('RNG state must not be all zero');
    this.s0 = a;
    this.s1 = b;
    this.s2 = c;
    this.s3 = d;
  }

  /** Next uniform uint32. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    this.s0 >>>= 0;
    this.s1 >>>= 0;
    this.s2 >>>= 0;
    this.s3 >>>= 0;
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits (two draws), like a double should have. */
  nextFloat(): number {
    const a = this.nextUint32() >>> 5; // 27 bits
    const b = this.nextUint32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** Uniform integer in [0, n), without modulo bias (rejection sampling). */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > TWO_32) throw new RangeError(`nextInt: n must be an integer in 1..2^32, got ${n}`);
    const limit = TWO_32 - (TWO_32 % n);
    for (;;) {
      const u = this.nextUint32();
      if (u < limit) return u % n;
    }
  }

  /** Standard normal by Box–Muller; the second value is dropped so the state stays four words. */
  normal(mean = 0, std = 1): number {
    const u1 = 1 - this.nextFloat(); // (0, 1]: log stays finite
    const u2 = this.nextFloat();
    return mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  /** Fisher–Yates shuffle in place; returns the same array. */
  shuffle<T extends { length: number; [i: number]: unknown }>(array: T): T {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      const tmp = array[i];
      array[i] = array[j];
      array[j] = tmp;
    }
    return array;
  }

  /** A shuffled 0..n-1. */
  permutation(n: number): Int32Array {
    const p = new Int32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }
}

/**
 * A seed for an independent stream, e.g. `deriveSeed(seed, 'teacher', 3)` or `deriveSeed(seed, 'epoch', e)`.
 *
 * Hash-based (sha256 of the canonical JSON of seed and labels, first 48 bits), so it is stable across
 * versions and machines, and streams for different labels do not overlap the way `seed + i` streams can.
 */
export function deriveSeed(seed: number, ...labels: Array<string | number>): number {
  checkSeed(seed);
  const digest = createHash('sha256').update(JSON.stringify(['weightformer-seed', seed, ...labels])).digest();
  return digest.readUIntBE(0, 6);
}
