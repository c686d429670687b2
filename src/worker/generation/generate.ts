import { Tensor, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import type { SamplingParams } from '../../protocol/chat.js';
import type { FinishReason } from '../../protocol/shared.js';
import { makeRng, sampleToken } from './sampler.js';
import { TextStream } from './text-stream.js';
import { ThreadError } from './thread-error.js';
import { logprobsOf, type TokenLogprob } from './logprobs.js';

export interface ChatModel {
  model: PreTrainedModel;
  tokenizer: PreTrainedTokenizer;
  eosIds: ReadonlySet<number>;
  /** Fed to finished rows of a batch that is still decoding (their output is ignored). */
  padId: number;
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

type Feeds = Record<string, Tensor>;

const int64 = (values: number[], dims: number[]) => new Tensor('int64', BigInt64Array.from(values, BigInt), dims);

/** `present.N.key` outputs become the next step's `past_key_values.N.key` inputs. */
function toPast(outputs: Feeds): Feeds {
  const past: Feeds = {};
  for (const [name, t] of Object.entries(outputs)) {
    if (name.startsWith('present')) past[name.replace('present', 'past_key_values')] = t;
  }
  return past;
}

/** Copies a batch-1 cache n times along the batch axis, so n choices share one prefill. */
function tileBatch(past: Feeds, n: number): Feeds {
  if (n === 1) return past;
  const out: Feeds = {};
  for (const [name, t] of Object.entries(past)) {
    const src = t.data as Float32Array;
    const data = new (src.constructor as Float32ArrayConstructor)(src.length * n);
    for (let i = 0; i < n; i++) data.set(src, i * src.length);
    out[name] = new Tensor(t.type as 'float32', data, [n, ...t.dims.slice(1)]);
  }
  return out;
}

/** Lets queued messages (cancel) and other generations run between decode steps. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

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
 * Decodes `n` choices for one prompt with our own loop over the model's forward pass:
 * one prefill, the KV cache tiled to n rows, then one batched step per token. Sampling,
 * penalties, seeds and stop strings are applied per row.
 */
export async function generate(m: ChatModel, promptIds: number[], p: SamplingParams, opts: GenerateOptions): Promise<ChoiceResult[]> {
  const maxNew = checkContext(m, promptIds.length, p.maxTokens);
  const n = p.n;
  const P = promptIds.length;
  const decode = (ids: number[]) => (ids.length ? m.tokenizer.decode(ids, { skip_special_tokens: true }) : '');
  const pieceOf = (id: number) => m.tokenizer.decode([id], { skip_special_tokens: false });
  const entry = (logits: Float32Array, id: number): TokenLogprob => {
    const { logprob, top } = logprobsOf(logits, id, p.logprobs ?? 0);
    return { id, token: pieceOf(id), logprob, top: top.map((t) => ({ ...t, token: pieceOf(t.id) })) };
  };
  const rows = Array.from({ length: n }, (_, index) => ({
    index,
    // Choice i of a seeded request draws from stream i of the seed: reproducible, yet the choices differ.
    rng: makeRng(p.seed === null ? Math.floor(Math.random() * 2 ** 52) : p.seed, index),
    counts: new Map<number, number>(),
    tokenIds: [] as number[],
    stream: new TextStream(decode, p.stop),
    finishReason: null as FinishReason | null,
  }));

  let outputs = (await m.model.forward({
    input_ids: int64(promptIds, [1, P]),
    attention_mask: int64(new Array(P).fill(1), [1, P]),
    position_ids: int64(promptIds.map((_, i) => i), [1, P]),
  })) as Feeds;
  if (p.echo && p.logprobs !== null) {
    // Echoed prompts with logprobs: each prompt token as the prefill predicted it.
    const { data, dims } = outputs.logits!;
    const V = dims[2]!;
    const promptEntries: TokenLogprob[] = promptIds.map((id, i) =>
      i === 0 ? { id, token: pieceOf(id), logprob: null, top: [] } : entry((data as Float32Array).subarray((i - 1) * V, i * V), id),
    );
    for (let i = 0; i < n; i++) opts.onDelta(i, '', null, promptEntries);
  }
  let past = tileBatch(toPast(outputs), n);
  let logitsRowOf = (_row: number) => {
    const { data, dims } = outputs.logits!;
    const V = dims[2]!;
    return (data as Float32Array).slice((P - 1) * V, P * V);
  };

  for (let step = 0; ; step++) {
    if (opts.signal.aborted) throw ThreadError.cancelled(rows.reduce((n, r) => n + r.tokenIds.length, 0));
    const next: number[] = [];
    for (const row of rows) {
      if (row.finishReason) {
        next.push(m.padId);
        continue;
      }
      const logits = logitsRowOf(row.index);
      // Log-probabilities of the raw distribution, taken before sampling rewrites the row.
      const raw = p.logprobs !== null ? logits.slice() : null;
      const token = sampleToken(logits, row.counts, p, row.rng);
      const logprobs = raw ? [entry(raw, token)] : undefined;
      row.tokenIds.push(token);
      row.counts.set(token, (row.counts.get(token) ?? 0) + 1);
      let delta: string;
      if (m.eosIds.has(token)) {
        row.finishReason = 'stop';
        delta = row.stream.finish();
      } else {
        delta = row.stream.push(token);
        if (row.stream.stopped) row.finishReason = 'stop';
        else if (row.tokenIds.length >= maxNew) {
          row.finishReason = 'length';
          delta += row.stream.finish();
        }
      }
      if (delta || row.finishReason || logprobs) opts.onDelta(row.index, delta, row.finishReason, logprobs);
      next.push(token);
    }
    if (rows.every((r) => r.finishReason)) break;
    await yieldToLoop();
    const total = P + step + 1;
    outputs = (await m.model.forward({
      input_ids: int64(next, [n, 1]),
      attention_mask: int64(new Array(n * total).fill(1), [n, total]),
      position_ids: int64(new Array(n).fill(total - 1), [n, 1]),
      past_key_values: past,
    })) as Feeds;
    past = toPast(outputs);
    logitsRowOf = (row: number) => {
      const V = outputs.logits!.dims[2]!;
      return (outputs.logits!.data as Float32Array).slice(row * V, (row + 1) * V);
    };
  }
  return rows.map((r) => ({ index: r.index, text: r.stream.text, tokenIds: r.tokenIds, finishReason: r.finishReason! }));
}
