/**
 * Partial selection for the sampler (sampler.ts): the k largest logits, and the top_p nucleus,
 * without sorting the vocabulary or allocating per token.
 *
 * Tokens are ordered by weight, ties by the lower id (a strict order, so "the top k" and "the
 * smallest prefix reaching top_p" are each one set, the set a full sort would give).
 */

/**
 * Index buffers as long as the vocabulary, kept for the thread's life: the sampler runs
 * synchronously, one row at a time, so one pair serves every row of every model in the thread.
 * They grow only when a larger vocabulary comes (a model's first step).
 */
let cand = new Int32Array(0);
let work = new Int32Array(0);

export function scratch(size: number): { cand: Int32Array; work: Int32Array } {
  if (cand.length < size) {
    cand = new Int32Array(size);
    work = new Int32Array(size);
  }
  return { cand, work };
}

/** Whether token a comes before token b: heavier, or as heavy with the lower id. */
const before = (w: Float32Array, a: number, b: number) => w[a]! > w[b]! || (w[a]! === w[b]! && a < b);

/**
 * The `k` largest of `logits` into `out[0..k)`, in ascending id order: a min-heap of k, so a
 * token that cannot beat the k-th best costs one comparison (O(V + k log k) on most rows).
 */
export function largestK(logits: Float32Array, k: number, out: Int32Array): number {
  let size = 0;
  for (let i = 0; i < logits.length; i++) {
    if (size < k) {
      // Sift up: the root is the token that comes last among those kept.
      let at = size++;
      while (at > 0) {
        const parent = (at - 1) >> 1;
        if (!before(logits, out[parent]!, i)) break;
        out[at] = out[parent]!;
        at = parent;
      }
      out[at] = i;
    } else if (before(logits, i, out[0]!)) {
      siftDown(logits, out, size, i);
    }
  }
  out.subarray(0, size).sort();
  return size;
}

function siftDown(w: Float32Array, heap: Int32Array, size: number, item: number): void {
  let at = 0;
  for (;;) {
    let child = 2 * at + 1;
    if (child >= size) break;
    // The child that comes later in the order (the heap's "smaller" one) moves up.
    if (child + 1 < size && before(w, heap[child]!, heap[child + 1]!)) child++;
    if (!before(w, item, heap[child]!)) break;
    heap[at] = heap[child]!;
    at = child;
  }
  heap[at] = item;
}

/**
 * Draws from the nucleus among `cand[0..n)` (ascending ids, weights in `w`): the smallest set of
 * tokens, taken in order, whose weight reaches `target`. The last token of that set is found by
 * weighted quickselect (each round keeps the side of the pivot the boundary is on, expected
 * linear); the draw then walks `cand` in id order, keeping the tokens that come before it.
 */
export function nucleus(w: Float32Array, cand: Int32Array, n: number, target: number, rng: () => number): number {
  const { work: buf } = scratch(n);
  buf.set(cand.subarray(0, n));
  const last = boundary(w, buf, n, target);
  // Inlined `before(w, i, last)`: these two passes and the partitions are the sampler's inner loops.
  const lw = w[last]!;
  let mass = 0;
  for (let j = 0; j < n; j++) {
    const i = cand[j]!;
    const wi = w[i]!;
    if (wi > lw || (wi === lw && i <= last)) mass += wi;
  }
  let u = rng() * mass;
  let kept = last;
  for (let j = 0; j < n; j++) {
    const i = cand[j]!;
    const wi = w[i]!;
    if (wi < lw || (wi === lw && i > last)) continue;
    kept = i;
    u -= wi;
    if (u <= 0) return i;
  }
  return kept; // rounding left a sliver: the last kept token
}

/** Below this many tokens, an insertion sort finishes the selection. */
const SMALL = 16;

/** The token at which the mass, taken in order from the heaviest, first reaches `need`. */
function boundary(w: Float32Array, buf: Int32Array, n: number, need: number): number {
  let lo = 0;
  let hi = n;
  for (;;) {
    if (hi - lo <= SMALL) {
      for (let a = lo + 1; a < hi; a++) {
        const item = buf[a]!;
        let b = a;
        while (b > lo && before(w, item, buf[b - 1]!)) {
          buf[b] = buf[b - 1]!;
          b--;
        }
        buf[b] = item;
      }
      for (let a = lo; a < hi; a++) {
        need -= w[buf[a]!]!;
        if (need <= 0) return buf[a]!;
      }
      // Summation-order rounding left a sliver short with every token in: take them all.
      return buf[hi - 1]!;
    }
    const p = medianOfThree(w, buf, lo, (lo + hi) >> 1, hi - 1);
    const pivot = buf[p]!;
    buf[p] = buf[hi - 1]!;
    buf[hi - 1] = pivot;
    const pw = w[pivot]!;
    let m = lo;
    let upper = 0;
    for (let j = lo; j < hi - 1; j++) {
      const item = buf[j]!;
      const wi = w[item]!;
      if (wi > pw || (wi === pw && item < pivot)) {
        buf[j] = buf[m]!;
        buf[m++] = item;
        upper += wi;
      }
    }
    buf[hi - 1] = buf[m]!;
    buf[m] = pivot;
    // m > lo: with nothing above the pivot (and need ≤ 0, top_p 0) the pivot itself is the boundary.
    if (upper >= need && m > lo) hi = m;
    else if (upper + w[pivot]! >= need) return pivot;
    else {
      need -= upper + w[pivot]!;
      lo = m + 1;
    }
  }
}

function medianOfThree(w: Float32Array, buf: Int32Array, a: number, b: number, c: number): number {
  const x = buf[a]!;
  const y = buf[b]!;
  const z = buf[c]!;
  if (before(w, x, y)) return before(w, y, z) ? b : before(w, x, z) ? c : a;
  return before(w, x, z) ? a : before(w, y, z) ? c : b;
}
