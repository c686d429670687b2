import { AutoModelForSequenceClassification, Tensor, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import type { ErrorBody } from '../../protocol/errors.js';
import { overflowAt, type InputBound } from '../../protocol/limits.js';
import { MAX_DOCUMENTS } from '../../protocol/rerank.js';
import { inputBoundOf } from '../input-bound.js';
import { loadFiles, type ProgressFn } from '../loader.js';
import { ThreadError } from '../generation/thread-error.js';
import type { ModelSpec } from '../models-source.js';

/** A cross-encoder: (query, document) pairs in, one relevance logit (or two classes) out. */
export interface RerankModel {
  spec: ModelSpec;
  model: PreTrainedModel;
  tokenizer: PreTrainedTokenizer;
  /** Tokens one pair may take (query, document and special tokens together). */
  maxTokens: number;
  truncate: boolean;
  typeIds: boolean;
  labels: number;
  inputBound: InputBound | null;
}

/** One request's work: a query and its documents. */
export interface RerankInput {
  query: string;
  documents: string[];
}

/** Per request: its scores in document order and its token count, or why it was refused. */
export type RerankOutput = { scores: number[]; tokens: number } | { error: ErrorBody };

/** Pairs per forward pass, as for embeddings (MiniLM-shaped encoders gain nothing past ~32-64). */
const SUB_BATCH = 32;

export async function loadRerankModel(spec: ModelSpec, modelsDir: string | undefined, onProgress: ProgressFn): Promise<RerankModel> {
  const { where, tokenizer, model } = await loadFiles(spec, modelsDir, onProgress, AutoModelForSequenceClassification);
  const config = model.config as unknown as Record<string, unknown>;
  const labels = Object.keys((config.id2label as object | undefined) ?? { 0: '' }).length;
  if (labels !== 1 && labels !== 2) {
    throw ThreadError.server(
      `Model '${spec.name}' (${where.kind === 'local' ? where.dir : spec.source}) has ${labels} output labels; a rerank model has one (a relevance logit) or two (not relevant, relevant).`,
      'model_load_failed',
      503,
    );
  }
  const positions = (config.max_position_embeddings as number | undefined) ?? 512;
  const tokMax = tokenizer.model_max_length as number | undefined;
  const maxTokens = spec.contextLength ?? Math.min(positions, tokMax && tokMax < 1e6 ? tokMax : positions);
  const inputNames = (model as unknown as { sessions: Record<string, { inputNames: string[] }> }).sessions.model?.inputNames ?? [];
  return {
    spec, model, tokenizer, maxTokens, truncate: spec.truncate, labels,
    typeIds: inputNames.includes('token_type_ids'),
    inputBound: inputBoundOf(tokenizer, maxTokens),
  };
}

const reject = (message: string, param: string, code: string): { error: ErrorBody } => ({ error: { message, type: 'invalid_request_error', param, code } });

interface Pair {
  request: number;
  document: number;
  ids: number[];
  types: number[];
}

/**
 * Encodes one pair as the tokenizer does ([CLS] query [SEP] document [SEP] for BERT). Too long:
 * refused, or, for a model registered with --truncate, cut from the end of the document (the
 * last special token kept), as `truncation: 'only_second'` does in transformers.
 */
function encodePair(m: RerankModel, query: string, doc: string, index: number): { ids: number[]; types: number[] } | { error: ErrorBody } {
  const tooLong = (n: string) =>
    reject(`Invalid documents[${index}]: with the query it is ${n} tokens long; this model takes at most ${m.maxTokens}. Shorten it, or register the model with --truncate.`, 'documents', 'context_length_exceeded');
  let text = doc;
  // Before tokenizing: a text far too long would hold the model thread only to be refused or cut.
  const over = m.inputBound ? overflowAt([query, doc], m.inputBound, m.maxTokens) : null;
  if (over && over[0] === 1) {
    if (!m.truncate) return tooLong(`more than ${m.maxTokens}`);
    text = doc.slice(0, over[1]);
  }
  const enc = m.tokenizer(query, { text_pair: text, return_tensor: false }) as unknown as { input_ids: number[]; token_type_ids?: number[] };
  const ids = enc.input_ids;
  const types = enc.token_type_ids ?? ids.map(() => 0);
  const excess = ids.length - m.maxTokens;
  if (excess > 0) {
    if (!m.truncate) return tooLong(String(ids.length));
    // The query alone leaves room for at least one document token (checked by the caller).
    ids.splice(ids.length - 1 - excess, excess);
    types.splice(types.length - 1 - excess, excess);
  }
  return { ids, types };
}

function checkRequest(m: RerankModel, r: RerankInput): { error: ErrorBody } | null {
  // Stored requests (SQL's among them) are validated here as the gateway validates its own.
  if (typeof r.query !== 'string' || r.query.length === 0) return reject("Invalid 'query': expected a non-empty string.", 'query', 'invalid_value');
  if (!Array.isArray(r.documents) || r.documents.length === 0) return reject("Invalid 'documents': expected a non-empty list of documents.", 'documents', 'empty_input');
  if (r.documents.length > MAX_DOCUMENTS) return reject(`Invalid 'documents': ${r.documents.length} documents, more than the ${MAX_DOCUMENTS} one request may rank.`, 'documents', 'too_many_documents');
  const bad = r.documents.findIndex((d) => typeof d !== 'string');
  if (bad >= 0) return reject(`Invalid documents[${bad}]: expected a string.`, 'documents', 'invalid_type');
  const queryTooLong = reject(`Invalid 'query': it leaves no room for a document in this model's ${m.maxTokens} tokens.`, 'query', 'context_length_exceeded');
  if (m.inputBound && overflowAt([r.query], m.inputBound, m.maxTokens - 2)) return queryTooLong;
  // [CLS] query [SEP] and the pair's closing [SEP]: a document needs at least one token more.
  const queryTokens = m.tokenizer.encode(r.query).length;
  return queryTokens + 1 >= m.maxTokens ? queryTooLong : null;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/**
 * Scores the pairs of many requests (the claimer's batch) with as few forward passes as
 * possible: every pair of every request, sorted by length and run in sub-batches, so requests
 * share passes and short pairs are not padded to the longest. A request with a bad document
 * is refused whole; the others still run.
 */
export async function rerank(m: RerankModel, inputs: RerankInput[]): Promise<RerankOutput[]> {
  const out: RerankOutput[] = inputs.map(() => ({ scores: [], tokens: 0 }));
  const pairs: Pair[] = [];
  inputs.forEach((r, request) => {
    const refused = checkRequest(m, r);
    if (refused) return void (out[request] = refused);
    const mine: Pair[] = [];
    for (let document = 0; document < r.documents.length; document++) {
      const enc = encodePair(m, r.query, r.documents[document]!, document);
      if ('error' in enc) return void (out[request] = enc);
      mine.push({ request, document, ...enc });
    }
    out[request] = { scores: new Array<number>(r.documents.length).fill(0), tokens: mine.reduce((n, p) => n + p.ids.length, 0) };
    pairs.push(...mine);
  });
  pairs.sort((a, b) => a.ids.length - b.ids.length);
  const pad = m.tokenizer.pad_token_id ?? 0;
  for (let start = 0; start < pairs.length; start += SUB_BATCH) {
    const batch = pairs.slice(start, start + SUB_BATCH);
    const seq = batch[batch.length - 1]!.ids.length;
    const ids = new BigInt64Array(batch.length * seq).fill(BigInt(pad));
    const mask = new BigInt64Array(batch.length * seq);
    const types = new BigInt64Array(batch.length * seq);
    batch.forEach((p, row) => {
      p.ids.forEach((id, t) => {
        ids[row * seq + t] = BigInt(id);
        mask[row * seq + t] = 1n;
        types[row * seq + t] = BigInt(p.types[t]!);
      });
    });
    const feeds: Record<string, Tensor> = {
      input_ids: new Tensor('int64', ids, [batch.length, seq]),
      attention_mask: new Tensor('int64', mask, [batch.length, seq]),
    };
    if (m.typeIds) feeds.token_type_ids = new Tensor('int64', types, [batch.length, seq]);
    const { logits } = (await m.model.forward(feeds)) as { logits?: Tensor };
    if (!logits) throw new Error('the model returned no logits');
    const data = logits.data as Float32Array;
    batch.forEach((p, row) => {
      // One logit: its sigmoid, as sentence-transformers' CrossEncoder and vLLM score; two
      // classes: the probability of the second ("relevant").
      const score = m.labels === 1 ? sigmoid(data[row]!) : sigmoid(data[row * 2 + 1]! - data[row * 2]!);
      (out[p.request] as { scores: number[] }).scores[p.document] = score;
    });
  }
  return out;
}
