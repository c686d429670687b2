import { Tensor, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import type { FinishReason } from '../../protocol/shared.js';
import { ThreadError } from './thread-error.js';
import type { TokenLogprob } from './logprobs.js';
import { budgetMessage } from '../../protocol/limits.js';

/** What a loaded chat model gives the decode loop (scheduler.ts), and the loop's shared pieces. */

export interface ChatModel {
  model: PreTrainedModel;
  tokenizer: PreTrainedTokenizer;
  eosIds: ReadonlySet<number>;
  contextLength: number;
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
  onDelta(index: number, text: string, finishReason: FinishReason | null, logprobs?: TokenLogprob[]): void;
}

export type Feeds = Record<string, Tensor>;

export const int64 = (values: number[], dims: number[]) => new Tensor('int64', BigInt64Array.from(values, BigInt), dims);

/**
 * `present.N.key` outputs become the next step's `past_key_values.N.key` inputs.
 *
 * This is where each step's copy of the whole KV cache comes from, and onnxruntime-node 1.30
 * gives no way around it (issue 15, measured with onnxruntime-node directly on the
 * SmolLM2-135M-shaped bench model, 2 cores at load average ~20):
 * - outputs always come back as new JS-owned buffers: the Node binding exposes no IO binding,
 *   and a pre-allocated output passed in `fetches` is written to, yet `run` still returns the
 *   output in a buffer of its own (so the copy remains, and the pre-allocated one is extra);
 * - the exported graph concatenates past and new keys/values itself (present = concat(past,
 *   new)), so even without the binding's copy each step reads and writes the whole cache.
 * What the copy out costs: 45 MiB a step at batch 1 and 1,024 tokens (allocating and filling
 * that much in JS: 22 ms of a 752 ms step), 360 MiB at batch 8 and 1,024 tokens (901 ms of a
 * 3,264 ms step). Keeping the cache in place needs a graph with a fixed-size, shared KV buffer
 * (onnxruntime's GroupQueryAttention with past_present_share_buffer) fed through IO binding,
 * which the Node binding does not offer; until it does, the copy stays.
 */
export function toPast(outputs: Feeds): Feeds {
  const past: Feeds = {};
  for (const [name, t] of Object.entries(outputs)) {
    if (name.startsWith('present')) past[name.replace('present', 'past_key_values')] = t;
  }
  return past;
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
