import { Tensor, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import type { ErrorBody } from '../../protocol/errors.js';
import { overflowAt, type InputBound } from '../../protocol/limits.js';

export interface EmbedModel {
  model: PreTrainedModel;
  tokenizer: PreTrainedTokenizer;
  dimensions: number;
  maxTokens: number;
  vocabSize: number;
  pooling: 'mean' | 'cls' | 'none';
  normalize: boolean;
  truncate: boolean;
  /** Whether the graph takes token_type_ids (BERT does). */
  typeIds: boolean;
  /** Tells a text that cannot fit without tokenizing it (see protocol/limits.ts); null: unknown. */
  inputBound?: InputBound | null;
  /** A shorter text that tokenizes the same (input-bound.ts wordPieceShortener). */
  shorten?: ((text: string) => string) | null;
}

/** A text, or token ids used as the complete model input. */
export type EmbedInput = string | number[];

export interface EmbedOutput {
  /** Full-dimension vectors, one per input; null where that input was rejected. */
  vectors: (Float32Array | null)[];
  tokens: number[];
  /** Per-input rejection (empty, too long, ids outside the vocabulary): the rest still embed.
   *  Messages do not name the input: the caller knows its index in the request. */
  errors: (ErrorBody | null)[];
}

/**
 * Sub-batch size for one forward pass. MiniLM-shaped models peak at 450–500 sentences/s from
 * batch 32 up on these machines (235/s one at a time); larger sub-batches only add padding.
 */
const SUB_BATCH = 64;

const reject = (message: string, code: string): ErrorBody => ({ message, type: 'invalid_request_error', param: 'input', code });

function tokenize(m: EmbedModel, input: EmbedInput): { ids: number[] } | { error: ErrorBody } {
  let ids: number[];
  if (typeof input === 'string') {
    if (input.length === 0) return { error: reject('it is an empty string.', 'empty_input') };
    // Before tokenizing: a text far too long would hold the model thread for seconds (a 6 MiB
    // word takes a byte-level BPE tokenizer about 40 s) only to be refused or cut.
    const over = m.inputBound ? overflowAt([input], m.inputBound, m.maxTokens) : null;
    if (over && !m.truncate) {
      return { error: reject(`it is more than ${m.maxTokens} tokens long; this model takes at most ${m.maxTokens}. Shorten it, or register the model with --truncate.`, 'context_length_exceeded') };
    }
    // To be cut anyway: a prefix already too long for the model is cut the same way.
    const text = over ? input.slice(0, over[1]) : input;
    ids = m.tokenizer.encode(m.shorten ? m.shorten(text) : text);
  } else {
    if (input.length === 0) return { error: reject('it is an empty token list.', 'empty_input') };
    const bad = input.find((id) => id >= m.vocabSize);
    if (bad !== undefined) return { error: reject(`token id ${bad} is outside the model's vocabulary of ${m.vocabSize}.`, 'invalid_token') };
    ids = input;
  }
  if (ids.length > m.maxTokens) {
    if (!m.truncate) {
      return {
        error: reject(
          `it is ${ids.length} tokens long; this model takes at most ${m.maxTokens}. Shorten it, or register the model with --truncate.`,
          'context_length_exceeded',
        ),
      };
    }
    // Keep the closing special token (e.g. [SEP]) of a tokenized text.
    ids = typeof input === 'string' ? [...ids.slice(0, m.maxTokens - 1), ids[ids.length - 1]!] : ids.slice(0, m.maxTokens);
  }
  return { ids };
}

function pool(m: EmbedModel, hidden: Float32Array, dims: readonly number[], row: number, length: number): Float32Array {
  // A graph that pools itself (sentence_embedding, [batch, hidden]) is taken as it is.
  const pooled = dims.length === 2;
  const [seq, h] = pooled ? [1, dims[1]!] : [dims[1]!, dims[2]!];
  const out = new Float32Array(h);
  const base = row * seq * h;
  if (pooled || m.pooling === 'cls' || m.pooling === 'none') out.set(hidden.subarray(base, base + h));
  else {
    // Mean over the real tokens only (padding is on the right, so the first `length`).
    for (let t = 0; t < length; t++) {
      const off = base + t * h;
      for (let j = 0; j < h; j++) out[j]! += hidden[off + j]!;
    }
    for (let j = 0; j < h; j++) out[j]! /= length;
  }
  if (m.normalize) {
    let norm = 0;
    for (let j = 0; j < h; j++) norm += out[j]! * out[j]!;
    norm = Math.sqrt(norm) || 1;
    for (let j = 0; j < h; j++) out[j]! /= norm;
  }
  return out;
}

/**
 * Embeds inputs with as few forward passes as possible: inputs are sorted by length and run in
 * sub-batches, so short texts are not padded to the longest one in the request.
 */
export async function embed(m: EmbedModel, inputs: EmbedInput[]): Promise<EmbedOutput> {
  const out: EmbedOutput = { vectors: inputs.map(() => null), tokens: inputs.map(() => 0), errors: inputs.map(() => null) };
  const ok: { index: number; ids: number[] }[] = [];
  inputs.forEach((input, index) => {
    const r = tokenize(m, input);
    if ('error' in r) out.errors[index] = r.error;
    else {
      ok.push({ index, ids: r.ids });
      out.tokens[index] = r.ids.length;
    }
  });
  ok.sort((a, b) => a.ids.length - b.ids.length);
  const pad = m.tokenizer.pad_token_id ?? 0;
  for (let start = 0; start < ok.length; start += SUB_BATCH) {
    const batch = ok.slice(start, start + SUB_BATCH);
    const seq = batch[batch.length - 1]!.ids.length;
    const ids = new BigInt64Array(batch.length * seq).fill(BigInt(pad));
    const mask = new BigInt64Array(batch.length * seq);
    batch.forEach((b, r) => {
      b.ids.forEach((id, t) => {
        ids[r * seq + t] = BigInt(id);
        mask[r * seq + t] = 1n;
      });
    });
    const feeds: Record<string, Tensor> = {
      input_ids: new Tensor('int64', ids, [batch.length, seq]),
      attention_mask: new Tensor('int64', mask, [batch.length, seq]),
    };
    if (m.typeIds) feeds.token_type_ids = new Tensor('int64', new BigInt64Array(batch.length * seq), [batch.length, seq]);
    const result = (await m.model.forward(feeds)) as Record<string, Tensor>;
    const hidden = m.pooling === 'none' ? (result.sentence_embedding ?? result.last_hidden_state) : (result.last_hidden_state ?? result.token_embeddings);
    if (!hidden) throw new Error(`the model returned no last_hidden_state (outputs: ${Object.keys(result).join(', ')})`);
    batch.forEach((b, r) => {
      out.vectors[b.index] = pool(m, hidden.data as Float32Array, hidden.dims, r, b.ids.length);
    });
  }
  return out;
}
