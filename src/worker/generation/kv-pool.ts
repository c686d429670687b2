import type { Feeds } from './generate.js';

/**
 * Reuses the large arrays KV caches are made of (issue 15). A cache re-laid out for a batch of 8
 * rows over a 1,000-token prompt of the SmolLM2-shaped bench model is 420 MB; on the 2-core VMs
 * this project runs on, a fresh array costs its first write a page fault per 4 KiB page: filling
 * a new 46 MB array took 135–153 ms, filling it again 3.2–3.5 ms (`node` alone, three runs). A
 * batch's cache is replaced at every join, leave and growth, so without reuse every copy of it
 * costs ~3 ms a MB before the copy itself.
 *
 * Arrays are handed out in size classes (a quarter power of two apart, so at most 19% unused) as
 * views of the exact length asked for; `give` takes back what `take` made, once, and keeps free
 * arrays up to `maxBytes`, the ones given back longest ago left to the garbage collector first
 * (a chunked prefill gives back a size a chunk; the sizes in use now are the ones to keep). Contents are not cleared:
 * a cache's positions outside its rows' tokens are masked, and their stale values (earlier keys
 * and values, finite) contribute exact zeros to attention, as zeros would. Float32 only (float16
 * caches on GPU are allocated plainly); arrays under 64 KiB are not worth keeping.
 */
export class KvPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Every free buffer, oldest given back first. */
  private readonly order = new Set<ArrayBuffer>();
  /** Buffers `take` made that are not in `free`. */
  private readonly lent = new WeakSet<ArrayBuffer>();
  private freeBytes = 0;
  readonly stats = { taken: 0, reused: 0 };

  /**
   * `minBytes`: smaller arrays are plain (default 64 KiB). `poison` (tests): every array taken is
   * filled with it first, as stale values would be, to show that nothing reads them unmasked.
   */
  constructor(
    private readonly maxBytes: number,
    private readonly opts: { minBytes?: number; poison?: (i: number) => number } = {},
  ) {}

  private static classOf(bytes: number): number {
    return Math.ceil(2 ** (Math.ceil(Math.log2(bytes) * 4) / 4) / 64) * 64;
  }

  /** An array of `length` elements of `like`'s type (float32 by default), its contents unspecified. */
  take(length: number, like?: ArrayLike<number>): Float32Array {
    const Ctor = (like?.constructor ?? Float32Array) as Float32ArrayConstructor;
    if (Ctor !== Float32Array || length * 4 < (this.opts.minBytes ?? 65_536) || this.maxBytes <= 0) return new Ctor(length);
    this.stats.taken++;
    const size = KvPool.classOf(length * 4);
    const list = this.free.get(size);
    let buf = list?.pop();
    if (buf) {
      this.order.delete(buf);
      this.freeBytes -= size;
      this.stats.reused++;
    } else buf = new ArrayBuffer(size);
    this.lent.add(buf);
    const out = new Ctor(buf, 0, length);
    const poison = this.opts.poison;
    if (poison) for (let i = 0; i < length; i++) out[i] = poison(i);
    return out;
  }

  /** Takes back the arrays of `feeds` that `take` made and nobody else holds (the caller's word). */
  give(feeds: Feeds | null | undefined): void {
    if (!feeds) return;
    for (const t of Object.values(feeds)) {
      const buf = (t.data as Float32Array).buffer as ArrayBuffer;
      if (!this.lent.has(buf)) continue;
      this.lent.delete(buf);
      if (buf.byteLength > this.maxBytes) continue;
      for (const old of this.order) {
        if (this.freeBytes + buf.byteLength <= this.maxBytes) break;
        const list = this.free.get(old.byteLength)!;
        list.splice(list.indexOf(old), 1);
        this.order.delete(old);
        this.freeBytes -= old.byteLength;
      }
      const list = this.free.get(buf.byteLength) ?? [];
      this.free.set(buf.byteLength, list);
      list.push(buf);
      this.order.add(buf);
      this.freeBytes += buf.byteLength;
    }
  }
}
