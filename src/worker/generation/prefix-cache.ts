import { createHash } from 'node:crypto';
import { Tensor } from '@huggingface/transformers';
import type { Feeds } from './generate.js';
import type { KvPool } from './kv-pool.js';

/**
 * Prefix caching, as vLLM's automatic prefix caching and llama.cpp's prompt cache do it: the KV
 * of every full block of `BLOCK` tokens a sequence has had in the cache is kept, keyed by a hash
 * of all the tokens up to the block's end (so a block's key names its whole prefix, and a hit
 * on block j means blocks 0..j-1 hit too). A request whose prompt starts with cached blocks
 * skips prefilling them: a shared system prompt, or a chat's history at its next turn.
 *
 * A token's keys and values depend only on the tokens before it and its position, so a cached
 * block is what prefilling those tokens again would compute; the scheduler's tests compare the
 * tokens with the cache and without it.
 *
 * Bounded by `budgetBytes` (SWITCHYARD_PREFIX_CACHE_MB), least recently used evicted first. A
 * chain is touched from its end back to its root, so a prefix's later blocks are evicted before
 * its earlier ones and what stays is always reachable from the start. Blocks are copies, never
 * views of the batch's cache: they outlive any re-layout, cancellation or failed step. The cache
 * lives in the model thread and dies with it (a crashed thread starts empty).
 */

/** Tokens per block: the granularity of a hit (a prompt reuses whole blocks only). */
export const BLOCK = 16;

export interface PrefixCacheStats {
  /** Prompts looked up, those that reused at least one block, and the prompt tokens not prefilled. */
  prefixLookups: number;
  prefixHits: number;
  prefixTokensSaved: number;
  prefixEvictions: number;
  /** Bytes held now. */
  prefixBytes: number;
}

interface Block {
  /** Per cache input (`past_key_values.N.key`…): [kv heads, BLOCK, head dim]. */
  data: Record<string, Float32Array>;
  bytes: number;
}

type Shape = { names: string[]; heads: number[]; dim: number[] };

export class PrefixCache {
  private readonly blocks = new Map<string, Block>();
  private shape: Shape | null = null;
  readonly stats: PrefixCacheStats = { prefixLookups: 0, prefixHits: 0, prefixTokensSaved: 0, prefixEvictions: 0, prefixBytes: 0 };

  constructor(private readonly budgetBytes: number) {}

  get enabled(): boolean {
    return this.budgetBytes > 0;
  }

  /** Keys of the first `count` full blocks of `ids`: each one hashes its predecessor's key and its own tokens. */
  private keys(ids: readonly number[], count: number): string[] {
    const out: string[] = [];
    let prev = '';
    for (let j = 0; j < count; j++) {
      const tokens = Int32Array.from(ids.slice(j * BLOCK, (j + 1) * BLOCK));
      prev = createHash('sha256').update(prev).update(new Uint8Array(tokens.buffer)).digest('base64');
      out.push(prev);
    }
    return out;
  }

  /** The keys of every full block of `ids` (a chain to pass to `match` and `use`; it depends on the tokens only). */
  chain(ids: readonly number[]): string[] {
    return this.enabled ? this.keys(ids, Math.floor(ids.length / BLOCK)) : [];
  }

  /** Most recent last; `keys` in chain order, touched back to front (see the class comment). */
  private touch(keys: string[]): void {
    for (let j = keys.length - 1; j >= 0; j--) {
      const block = this.blocks.get(keys[j]!);
      if (!block) continue;
      this.blocks.delete(keys[j]!);
      this.blocks.set(keys[j]!, block);
    }
  }

  /**
   * How many leading tokens of a prompt (its `chain`) are cached, in whole blocks, at most `limit`
   * (the scheduler leaves at least the prompt's last token to prefill: its logits give the first
   * token). Nothing changes: the scheduler asks again until the prompt's prefill starts, so a
   * prompt that waited behind another with the same start finds what that one left.
   */
  match(chain: readonly string[], limit: number): number {
    if (!this.enabled || !this.shape) return 0;
    const count = Math.min(chain.length, Math.floor(limit / BLOCK));
    let hit = 0;
    while (hit < count && this.blocks.has(chain[hit]!)) hit++;
    return hit * BLOCK;
  }

  /** Names, kv heads and head dims of the cache inputs, once a sequence has been stored. */
  get layout(): Shape | null {
    return this.shape;
  }

  /**
   * Counts a prompt's lookup as its prefill starts, reusing its first `tokens` tokens (0: a miss),
   * which become the most recently used.
   */
  use(chain: readonly string[], tokens: number): void {
    if (!this.enabled) return;
    this.stats.prefixLookups++;
    if (tokens === 0) return;
    this.touch(chain.slice(0, tokens / BLOCK));
    this.stats.prefixHits++;
    this.stats.prefixTokensSaved += tokens;
  }

  /**
   * The cache of several prompts' reused tokens as one batch: a [rows, heads, cap, dim] tensor per
   * cache input (cap ≥ L: room after L for the caller's next tokens), row j holding
   * `rows[j].tokens` tokens (a `match` just before, whole blocks) right-aligned at L; before and
   * after them stale values from the `pool` (kv-pool.ts) or zeros: the caller masks them.
   */
  fill(rows: readonly { chain: readonly string[]; tokens: number }[], L: number, cap: number, pool: KvPool): Feeds {
    const shape = this.shape!;
    const past: Feeds = {};
    shape.names.forEach((name, n) => {
      const H = shape.heads[n]!;
      const D = shape.dim[n]!;
      const data = pool.take(rows.length * H * cap * D);
      rows.forEach(({ chain, tokens }, b) => {
        const at = L - tokens;
        for (let j = 0; j < tokens / BLOCK; j++) {
          const block = this.blocks.get(chain[j]!);
          if (!block) throw new Error('prefix cache: a matched block is gone');
          const src = block.data[name]!;
          for (let h = 0; h < H; h++) data.set(src.subarray(h * BLOCK * D, (h + 1) * BLOCK * D), ((b * H + h) * cap + at + j * BLOCK) * D);
        }
      });
      past[name] = new Tensor('float32', data, [rows.length, H, cap, D]);
    });
    return past;
  }

  /**
   * Keeps the full blocks of a sequence whose `ids` (every token it has in the cache, in order)
   * are row `b` of `past` ([rows, heads, L, dim], the batch's layout), ending before position
   * `end` (right-aligned: L). Blocks already cached are only touched; a prefix longer than the
   * whole budget keeps its start.
   */
  store(ids: readonly number[], past: Feeds, b: number, end?: number): void {
    if (!this.enabled) return;
    const names = Object.keys(past).filter((k) => k.startsWith('past_key_values'));
    const first = past[names[0]!];
    // float16 caches (GPU) are not kept: the blocks are float32 copies.
    if (!first || first.type !== 'float32') return;
    this.shape ??= { names, heads: names.map((k) => past[k]!.dims[1]!), dim: names.map((k) => past[k]!.dims[3]!) };
    const bytes = this.shape.names.reduce((s, _, n) => s + this.shape!.heads[n]! * BLOCK * this.shape!.dim[n]! * 4, 0);
    const count = Math.min(Math.floor(ids.length / BLOCK), Math.floor(this.budgetBytes / bytes));
    const keys = this.keys(ids, count);
    // The chain's cached blocks first become the most recent, so making room for its new ones
    // evicts other prefixes, never its own start.
    this.touch(keys);
    keys.forEach((key, j) => {
      if (this.blocks.has(key)) return;
      this.evictFor(bytes);
      const data: Record<string, Float32Array> = {};
      this.shape!.names.forEach((name, n) => {
        const t = past[name]!;
        const [, H, L, D] = t.dims as [number, number, number, number];
        const src = t.data as Float32Array;
        const out = new Float32Array(H * BLOCK * D);
        const at = (end ?? L) - ids.length + j * BLOCK;
        for (let h = 0; h < H; h++) {
          const from = ((b * H + h) * L + at) * D;
          out.set(src.subarray(from, from + BLOCK * D), h * BLOCK * D);
        }
        data[name] = out;
      });
      this.blocks.set(key, { data, bytes });
      this.stats.prefixBytes += bytes;
    });
    this.touch(keys);
  }

  private evictFor(bytes: number): void {
    while (this.stats.prefixBytes + bytes > this.budgetBytes && this.blocks.size > 0) {
      const [key, block] = this.blocks.entries().next().value as [string, Block];
      this.blocks.delete(key);
      this.stats.prefixBytes -= block.bytes;
      this.stats.prefixEvictions++;
    }
  }
}
