import { Tensor, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import type { FinishReason } from '../../protocol/shared.js';
import { ThreadError } from './thread-error.js';
import type { TokenLogprob } from './logprobs.js';
import type { KvPool } from './kv-pool.js';
import { budgetMessage } from '../../protocol/limits.js';
import { LOGITS_INDEX } from './logits-rows.js';

/** What a loaded chat model gives the decode loop (scheduler.ts), and the loop's shared pieces. */

export interface ChatModel {
  model: PreTrainedModel;
  tokenizer: PreTrainedTokenizer;
  eosIds: ReadonlySet<number>;
  contextLength: number;
  /**
   * The graph takes one row of past for a batch of rows (every cache output split: the attention's
   * products broadcast the past's batch axis; grouped-attention.ts). Rows that share a cached
   * prefix are then prefilled over one copy of it.
   */
  sharedPast?: boolean;
  /** The graph gives logits only for the positions `logits_index` names (logits-rows.ts); without it, for every position. */
  keepsLogits?: boolean;
}

export interface ChoiceResult {
  index: number;
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
}

export interface GenerateOptions {
  signal: AbortSignal;
  /** `logprobs`: entries for the tokens behind this delta, when the request asked for them. */
  /** `stopSequence`: with the finish, the stop string that ended the text. */
  onDelta(index: number, text: string, finishReason: FinishReason | null, logprobs?: TokenLogprob[], stopSequence?: string): void;
}

export type Feeds = Record<string, Tensor>;

export const int64 = (values: number[], dims: number[]) => new Tensor('int64', BigInt64Array.from(values, BigInt), dims);

/**
 * The logits a forward of `S` positions a row should give: row b's `positions[b]` (every row as
 * many). `feeds` asks for them when the graph takes `logits_index` (logits-rows.ts: the others
 * are never computed); `at(logits, b, i)` is row b's i-th asked position's logits, a view, in
 * either output: [rows, n, vocab] kept, or [rows, S, vocab] every position.
 */
export function logitRows(m: ChatModel, positions: number[][], S: number): { feeds: Feeds; at(logits: Tensor, b: number, i: number): Float32Array } {
  const n = positions[0]!.length;
  return {
    feeds: m.keepsLogits ? { [LOGITS_INDEX]: int64(positions.flat(), [positions.length, n]) } : {},
    at(logits, b, i) {
      const V = logits.dims[2]!;
      const row = m.keepsLogits ? b * n + i : b * S + positions[b]![i]!;
      return (logits.data as Float32Array).subarray(row * V, (row + 1) * V);
    },
  };
}

/**
 * The batch's KV cache, as the scheduler keeps it: per cache input (`past_key_values.N.key`…) a
 * [rows, kv heads, capacity, head dim] tensor, of which the first `used` positions hold tokens
 * (each row's right-aligned, padding before them masked) and the rest are free room, masked too,
 * for the next steps' tokens. A step's new keys and values (`present.*`) are written into that
 * room (`writeColumns`): the cache is copied only when it is re-laid out or runs out of room.
 *
 * Why (issue 15): onnxruntime-node returns every output in a new JS buffer (a pre-allocated
 * output in `fetches` is written to, then copied out again), and an exported graph concatenates
 * past and new keys and values itself, so feeding `present` back as the next past copies the
 * whole cache twice a step: at a 1,024-token past on the SmolLM2-shaped bench model, 10–15 ms of
 * a 48–59 ms step (bench/kv-copy.ts). The load-time rewrite (grouped-attention.ts, `split`)
 * makes `present.*` the new tokens' keys and values alone and attends to the past without the
 * Concat; on a graph left as exported, `present.*` still holds the whole cache, whose last
 * positions are the new ones: these helpers take the last `s` positions either way.
 */

/** Free positions a cache re-laid out for decoding gets beyond its `used` ones (an eighth more, at least 32). */
export function room(used: number): number {
  return Math.max(32, Math.ceil(used / 8 / 16) * 16);
}

/** A cache output's input name (`present.N.key` → `past_key_values.N.key`), and back. */
export const pastName = (present: string) => present.replace('present', 'past_key_values');
export const presentName = (past: string) => past.replace('past_key_values', 'present');

/** The cache inputs a forward's `present.*` outputs feed. */
export const cacheNamesOf = (outputs: Feeds): string[] => Object.keys(outputs).filter((k) => k.startsWith('present')).map(pastName);

/**
 * A new cache of `cap` positions: `past`'s first `used` positions (none when null), then the last
 * `s` positions of each `present.*` output of `outputs` (none when `outputs` is null).
 */
export function extendCache(past: Feeds | null, used: number, outputs: Feeds | null, s: number, cap: number, pool: KvPool): Feeds {
  const names = outputs ? cacheNamesOf(outputs) : Object.keys(past ?? {});
  const out: Feeds = {};
  for (const name of names) {
    const fresh = outputs?.[presentName(name)];
    const like = (fresh ?? past![name])!;
    const [B, H, , D] = like.dims as [number, number, number, number];
    const data = pool.take(B * H * cap * D, like.data as Float32Array);
    const from = past?.[name];
    if (from && used > 0) {
      const Ls = from.dims[2]!;
      const src = from.data as Float32Array;
      for (let r = 0; r < B * H; r++) data.set(src.subarray(r * Ls * D, (r * Ls + used) * D), r * cap * D);
    }
    out[name] = new Tensor(like.type as 'float32', data, [B, H, cap, D]);
  }
  if (outputs) writeColumns(out, used, outputs, s);
  return out;
}

/** Writes the last `s` positions of each `present.*` output into `past` at positions [at, at + s) (room there: the caller's). */
export function writeColumns(past: Feeds, at: number, outputs: Feeds, s: number): void {
  for (const [name, t] of Object.entries(outputs)) {
    if (!name.startsWith('present')) continue;
    const dst = past[pastName(name)]!;
    const [B, H, T, D] = t.dims as [number, number, number, number];
    const cap = dst.dims[2]!;
    if (at + s > cap) throw new Error(`KV cache: ${at + s} positions do not fit ${cap}`);
    const src = t.data as Float32Array;
    const data = dst.data as Float32Array;
    for (let r = 0; r < B * H; r++) data.set(src.subarray((r * T + T - s) * D, (r * T + T) * D), (r * cap + at) * D);
  }
}

export function checkContext(m: ChatModel, promptTokens: number, maxTokens: number | null): number {
  if (promptTokens === 0) {
    throw ThreadError.user(400, 'The chat template rendered an empty prompt: there is nothing to complete.', 'empty_prompt', 'messages');
  }
  const room = m.contextLength - promptTokens;
  if (room <= 0 || (maxTokens !== null && maxTokens > room)) {
    throw ThreadError.user(
      400,
      `This model's maximum context length is ${m.contextLength} tokens. However, you requested ` +
        `${promptTokens + (maxTokens ?? 1)} tokens (${promptTokens} in the messages, ${maxTokens ?? 1} in the completion). ` +
        `Please reduce the length of the messages or completion.`,
      'context_length_exceeded',
      'messages',
    );
  }
  return maxTokens ?? room;
}

/**
 * The context check, then the memory one: a request reserves n × (prompt + max new tokens) KV
 * tokens while it runs, and may reserve at most the whole budget (SWITCHYARD_MAX_BATCH_TOKENS).
 * Without max_tokens a choice may run to the context's end, or to its share of the budget when
 * that comes first. Returns the new tokens each choice may have.
 */
export function checkBudget(m: ChatModel, promptTokens: number, params: { maxTokens: number | null; n: number }, budget: number): number {
  const maxNew = checkContext(m, promptTokens, params.maxTokens);
  const share = Math.floor(budget / params.n) - promptTokens;
  if (params.maxTokens === null && share >= 1) return Math.min(maxNew, share);
  if (params.n * (promptTokens + maxNew) <= budget) return maxNew;
  const param = params.n > 1 ? 'n' : share < 1 ? 'messages' : 'max_tokens';
  throw ThreadError.user(
    400,
    budgetMessage(params.n, promptTokens, params.maxTokens ?? 1, budget, param),
    'invalid_value',
    param,
  );
}
