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
 * Past its last whole cached block, a prompt also reuses the start of a cached block that
 * follows the same prefix, as far as its tokens agree (llama.cpp reuses the longest common
 * prefix, token by token): prompts that share a system prompt and part of the template's user
 * turn, and differ from the question on, reuse all they share, not only the whole blocks of it.
 * Blocks are indexed by their prefix and their first token for that.
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

/** Tokens per block: the granularity of storage and eviction (a hit may end inside a block). */
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
  /** Its tokens, and where it is indexed (`next`): its predecessor's key and its first token. */
  tokens: Int32Array;
  after: string;
}

/**
 * A prompt as the cache reads it: its tokens, the keys of its full blocks (`chain`), and whose
 * prompts it may share blocks with (`scope`: a team, a key, a database role; '' unscoped).
 */
export interface Prompt {
  ids: readonly number[];
  chain: readonly string[];
  scope?: string;
}

/**
 * What a scope's first block hashes after and is indexed under: each scope's chains start apart,
 * so prompts of different scopes share no block and no hit, whole or inside a block (a hit's
 * timing would tell one tenant another's prompt, a token at a time inside a block). Base64 keys
 * hold no ':', so a root is never a block's key.
 */
const rootOf = (scope = '') => `root:${scope}`;

/** The key `p`'s block number `j` follows: its previous block's, or its scope's root for the first. */
export const predecessorOf = (p: Prompt, j: number): string => (j > 0 ? p.chain[j - 1]! : rootOf(p.scope));

/** How many of the blocks that follow one prefix and start with one token a lookup compares with (the most recent). */
const NEXT_SCAN = 16;

type Shape = { names: string[]; heads: number[]; dim: number[] };

export class PrefixCache {
  private readonly blocks = new Map<string, Block>();
  /** Keys of the blocks that follow a prefix (its last block's key, '' for the start) and start with a token, most recent last. */
  private readonly next = new Map<string, string[]>();
  private shape: Shape | null = null;
  readonly stats: PrefixCacheStats = { prefixLookups: 0, prefixHits: 0, prefixTokensSaved: 0, prefixEvictions: 0, prefixBytes: 0 };

  constructor(private readonly budgetBytes: number) {}

  get enabled(): boolean {
    return this.budgetBytes > 0;
  }

  /** Keys of the first `count` full blocks of `ids`: each one hashes its predecessor's key and its own tokens. */
  private keys(ids: readonly number[], count: number, scope?: string): string[] {
    const out: string[] = [];
    let prev = rootOf(scope);
    for (let j = 0; j < count; j++) {
      const tokens = Int32Array.from(ids.slice(j * BLOCK, (j + 1) * BLOCK));
      prev = createHash('sha256').update(prev).update(new Uint8Array(tokens.buffer)).digest('base64');
      out.push(prev);
    }
    return out;
  }

  /** The keys of every full block of `ids` (a chain to pass to `match` and `use`; it depends on the tokens only). */
  chain(ids: readonly number[], scope?: string): string[] {
    return this.enabled ? this.keys(ids, Math.floor(ids.length / BLOCK), scope) : [];
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
   * How many leading tokens of a prompt are cached, at most `limit` (the scheduler leaves at
   * least the prompt's last token to prefill: its logits give the first token): its whole cached
   * blocks, then as many tokens as agree with a cached block that follows them (`tail`). Nothing
   * changes: the scheduler asks again until the prompt's prefill starts, so a prompt that waited
   * behind another with the same start finds what that one left.
   */
  match(p: Prompt, limit: number): number {
    if (!this.enabled || !this.shape) return 0;
    const count = Math.min(p.chain.length, Math.floor(limit / BLOCK));
    let hit = 0;
    while (hit < count && this.blocks.has(p.chain[hit]!)) hit++;
    return hit * BLOCK + (this.tail(p, hit, limit - hit * BLOCK)?.agree ?? 0);
  }

  /**
   * The cached block after the prompt's first `whole` blocks whose tokens agree longest with the
   * prompt's next ones (at most `most`, counted), among the most recent NEXT_SCAN that start
   * like them; null when none does.
   */
  private tail(p: Prompt, whole: number, most: number): { key: string; agree: number } | null {
    const at = whole * BLOCK;
    const upTo = Math.min(most, BLOCK, p.ids.length - at);
    if (upTo <= 0) return null;
    const keys = this.next.get(this.indexKey(predecessorOf(p, whole), p.ids[at]!)) ?? [];
    let best: { key: string; agree: number } | null = null;
    for (let i = keys.length - 1; i >= Math.max(0, keys.length - NEXT_SCAN); i--) {
      const tokens = this.blocks.get(keys[i]!)!.tokens;
      let agree = 0;
      while (agree < upTo && tokens[agree] === p.ids[at + agree]) agree++;
      if (!best || agree > best.agree) best = { key: keys[i]!, agree };
      if (agree === upTo) break;
    }
    return best;
  }

  private indexKey(after: string, first: number): string {
    return `${after}#${first}`;
  }

  /** Where a prompt's first `tokens` cached tokens are: its whole blocks, and the block its tokens past them agree with. */
  private blocksOf(p: Prompt, tokens: number): { keys: string[]; tail: { key: string; agree: number } | null } {
    const whole = Math.floor(tokens / BLOCK);
    const part = tokens - whole * BLOCK;
    const tail = part > 0 ? this.tail(p, whole, part) : null;
    if (part > 0 && (!tail || tail.agree < part)) throw new Error('prefix cache: a matched block is gone');
    return { keys: p.chain.slice(0, whole), tail };
  }

  /** Names, kv heads and head dims of the cache inputs, once a sequence has been stored. */
  get layout(): Shape | null {
    return this.shape;
  }

  /**
   * Counts a prompt's lookup as its prefill starts, reusing its first `tokens` tokens (0: a miss;
   * a `match` just before), whose blocks become the most recently used.
   */
  use(p: Prompt, tokens: number): void {
    if (!this.enabled) return;
    this.stats.prefixLookups++;
    if (tokens === 0) return;
    const { keys, tail } = this.blocksOf(p, tokens);
    this.touch(tail ? [...keys, tail.key] : keys);
    this.stats.prefixHits++;
    this.stats.prefixTokensSaved += tokens;
  }

  /**
   * The cache of several prompts' reused tokens as one batch: a [rows, heads, cap, dim] tensor per
   * cache input (cap ≥ L: room after L for the caller's next tokens), row j holding
   * `rows[j].tokens` tokens (a `match` just before) right-aligned at L; before and after them
   * stale values from the `pool` (kv-pool.ts) or zeros: the caller masks them.
   */
  fill(rows: readonly { prompt: Prompt; tokens: number }[], L: number, cap: number, pool: KvPool): Feeds {
    const shape = this.shape!;
    // Per row, its blocks and how many positions of each it takes (all of each but the tail).
    const sources = rows.map(({ prompt, tokens }) => {
      const { keys, tail } = this.blocksOf(prompt, tokens);
      const parts = keys.map((key) => ({ key, count: BLOCK }));
      if (tail) parts.push({ key: tail.key, count: tokens - keys.length * BLOCK });
      return parts.map(({ key, count }) => {
        const block = this.blocks.get(key);
        if (!block) throw new Error('prefix cache: a matched block is gone');
        return { block, count };
      });
    });
    const past: Feeds = {};
    shape.names.forEach((name, n) => {
      const H = shape.heads[n]!;
      const D = shape.dim[n]!;
      const data = pool.take(rows.length * H * cap * D);
      sources.forEach((parts, b) => {
        const at = L - rows[b]!.tokens;
        parts.forEach(({ block, count }, j) => {
          const src = block.data[name]!;
          for (let h = 0; h < H; h++) data.set(src.subarray(h * BLOCK * D, (h * BLOCK + count) * D), ((b * H + h) * cap + at + j * BLOCK) * D);
        });
      });
      past[name] = new Tensor('float32', data, [rows.length, H, cap, D]);
    });
    return past;
  }

  /**
   * Keeps the full blocks of a sequence whose `ids` (every token it has in the cache, in order;
   * its `scope` as its prompt's) are row `b` of `past` ([rows, heads, L, dim], the batch's
   * layout), ending before position `end` (right-aligned: L). Blocks already cached are only
   * touched; a prefix longer than the whole budget keeps its start.
   */
  store({ ids, scope }: { ids: readonly number[]; scope?: string | undefined }, past: Feeds, b: number, end?: number): void {
    if (!this.enabled) return;
    const names = Object.keys(past).filter((k) => k.startsWith('past_key_values'));
    const first = past[names[0]!];
    // float16 caches (GPU) are not kept: the blocks are float32 copies.
    if (!first || first.type !== 'float32') return;
    this.shape ??= { names, heads: names.map((k) => past[k]!.dims[1]!), dim: names.map((k) => past[k]!.dims[3]!) };
    const bytes = this.shape.names.reduce((s, _, n) => s + this.shape!.heads[n]! * BLOCK * this.shape!.dim[n]! * 4, 0);
    const count = Math.min(Math.floor(ids.length / BLOCK), Math.floor(this.budgetBytes / bytes));
    const keys = this.keys(ids, count, scope);
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
      const tokens = Int32Array.from(ids.slice(j * BLOCK, (j + 1) * BLOCK));
      const after = j > 0 ? keys[j - 1]! : rootOf(scope);
      this.blocks.set(key, { data, bytes, tokens, after });
      const at = this.indexKey(after, tokens[0]!);
      const list = this.next.get(at);
      if (list) list.push(key);
      else this.next.set(at, [key]);
      this.stats.prefixBytes += bytes;
    });
    this.touch(keys);
  }

  private evictFor(bytes: number): void {
    while (this.stats.prefixBytes + bytes > this.budgetBytes && this.blocks.size > 0) {
      const [key, block] = this.blocks.entries().next().value as [string, Block];
      this.blocks.delete(key);
      const at = this.indexKey(block.after, block.tokens[0]!);
      const list = this.next.get(at)!;
      list.splice(list.indexOf(key), 1);
      if (list.length === 0) this.next.delete(at);
      this.stats.prefixBytes -= block.bytes;
      this.stats.prefixEvictions++;
    }
  }
}
