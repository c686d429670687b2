import { compileValidator, type Schema } from './validate.js';
import { errors } from './errors.js';

/**
 * POST /v1/rerank (also /rerank and /v2/rerank, as vLLM serves it) in the Cohere/Jina shape:
 * one query scored against a list of documents by a cross-encoder.
 */

/** Documents per request: Cohere's recommended ceiling; each is a model input of its own. */
export const MAX_DOCUMENTS = 1000;

export interface RerankRequest {
  model: string;
  query: string;
  documents: (string | { text: string })[];
  top_n?: number | null;
  return_documents?: boolean | null;
  /** Kept in the request log, as OpenAI's endpoints keep it. */
  user?: string | null;
}

export const rerankRequestSchema: Schema = {
  type: 'object',
  required: ['model', 'query', 'documents'],
  additionalProperties: false,
  properties: {
    model: { type: 'string', minLength: 1 },
    query: { type: 'string', minLength: 1, 'x-expect': 'a non-empty string' },
    documents: {
      type: 'array',
      minItems: 1,
      maxItems: MAX_DOCUMENTS,
      items: {
        anyOf: [
          { type: 'string' },
          { type: 'object', required: ['text'], properties: { text: { type: 'string' } } },
        ],
        'x-expect': "a string or an object with a string 'text'",
      },
      'x-expect': `a non-empty list of up to ${MAX_DOCUMENTS} documents`,
    },
    top_n: { anyOf: [{ type: 'integer', minimum: 1 }, { type: 'null' }], 'x-expect': 'a positive integer or null' },
    return_documents: { anyOf: [{ type: 'boolean' }, { type: 'null' }], 'x-expect': 'a boolean or null' },
    user: { anyOf: [{ type: 'string' }, { type: 'null' }], 'x-expect': 'a string or null' },
  },
};

const checkShape = compileValidator<RerankRequest>(rerankRequestSchema);

export function parseRerankRequest(body: unknown): RerankRequest {
  return checkShape(body);
}

/** The documents' texts, in request order. */
export const documentTexts = (req: Pick<RerankRequest, 'documents'>): string[] =>
  req.documents.map((d) => (typeof d === 'string' ? d : d.text));

export interface RerankResult {
  index: number;
  relevance_score: number;
  /** With `return_documents` (Jina and Cohere v2 return it as an object). */
  document?: { text: string };
}

export interface RerankResponse {
  id: string;
  object: 'rerank';
  model: string;
  results: RerankResult[];
  usage: { prompt_tokens: number; total_tokens: number };
}

/** Results sorted by score (highest first, ties by position), cut to `top_n`. */
export function rerankResponse(id: string, req: RerankRequest, scores: number[], promptTokens: number): RerankResponse {
  const texts = documentTexts(req);
  if (scores.length !== texts.length) throw errors.internal(`The model returned ${scores.length} scores for ${texts.length} documents.`);
  const order = scores.map((s, i) => ({ s, i })).sort((a, b) => b.s - a.s || a.i - b.i);
  const top = req.top_n ? order.slice(0, req.top_n) : order;
  return {
    id,
    object: 'rerank',
    model: req.model,
    results: top.map(({ s, i }) => ({ index: i, relevance_score: s, ...(req.return_documents ? { document: { text: texts[i]! } } : {}) })),
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  };
}
