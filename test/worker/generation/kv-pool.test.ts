import { describe, expect, it } from 'vitest';
import { Tensor } from '@huggingface/transformers';
import { KvPool } from '../../../src/worker/generation/kv-pool.js';

const feeds = (...arrays: Float32Array[]) => Object.fromEntries(arrays.map((a, i) => [`past_key_values.${i}.key`, new Tensor('float32', a, [a.length])]));

describe('KvPool', () => {
  it('hands back an array given back, as a view of the exact length asked for within its size class, once', () => {
    const pool = new KvPool(1 << 30);
    const a = pool.take(100_000);
    expect(a.length).toBe(100_000);
    pool.give(feeds(a));
    pool.give(feeds(a)); // a second give of the same array is ignored
    const b = pool.take(99_000); // the same size class
    expect(b.length).toBe(99_000);
    expect(b.buffer).toBe(a.buffer);
    const c = pool.take(99_000); // the pool had one: a new one
    expect(c.buffer).not.toBe(a.buffer);
    expect(pool.take(200_000).buffer).not.toBe(a.buffer); // another class
    expect(pool.stats).toEqual({ taken: 4, reused: 1 });
  });

  it('keeps nothing it did not make, nothing small, and no more than its bytes', () => {
    const pool = new KvPool(600_000);
    const outside = new Float32Array(100_000);
    pool.give(feeds(outside));
    expect(pool.take(100_000).buffer).not.toBe(outside.buffer);
    const small = pool.take(1000);
    pool.give(feeds(small));
    expect(pool.take(1000).buffer).not.toBe(small.buffer);
    // Two arrays of ~400 KB: the second given back is over 600 KB kept, so the first (given back
    // longer ago) goes.
    const [x, y] = [pool.take(100_000), pool.take(100_000)];
    pool.give(feeds(x, y));
    expect(pool.take(100_000).buffer).toBe(y.buffer);
    expect(pool.take(100_000).buffer).not.toBe(x.buffer);
  });
});
