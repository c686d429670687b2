import { compileValidator, type Schema } from './validate.js';
import { errors } from './errors.js';
import { MAX_CHOICES } from './limits.js';
import { topKOf, type SamplingParams, type TextPrompt } from './chat.js';
import { nullable, type FinishReason, type TokenLogprob, type Usage } from './shared.js';

/** POST /v1/completions (legacy), fields in OpenAI's reference order. */
export interface CompletionRequest {
  model: string;
  prompt: string | string[] | number[] | number[][];
  best_of?: number | null;
  echo?: boolean | null;
  frequency_penalty?: number | null;
  logprobs?: number | null;
  max_tokens?: number | null;
  n?: number | null;
  presence_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  suffix?: string | null;
  temperature?: number | null;
  top_p?: number | null;
  /** vLLM's extension: sample from the k most likely tokens only (0 or -1: all). */
  top_k?: number | null;
  user?: string | null;
}

const tokenIds = { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0 } };
/** OpenAI allows many prompts per request; each is its own generation. */
const MAX_PROMPTS = 32;

export const completionRequestSchema: Schema = {
  type: 'object',
  required: ['model', 'prompt'],
  additionalProperties: false,
  'x-unsupported': ['logit_bias'],
  properties: {
    model: { type: 'string', minLength: 1 },
    prompt: {
      anyOf: [
        { type: 'string' },
        { type: 'array', minItems: 1, maxItems: MAX_PROMPTS, items: { type: 'string' } },
        { ...tokenIds },
        { type: 'array', minItems: 1, maxItems: MAX_PROMPTS, items: tokenIds },
      ],
      'x-expect': `a string, a list of up to ${MAX_PROMPTS} strings, a list of token ids, or a list of token-id lists`,
    },
    best_of: nullable({ type: 'integer', minimum: 1, maximum: 20 }),
    echo: nullable({ type: 'boolean' }),
    frequency_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
    logprobs: nullable({ type: 'integer', minimum: 0, maximum: 5 }),
    max_tokens: nullable({ type: 'integer', minimum: 1 }),
    n: nullable({ type: 'integer', minimum: 1, maximum: 128 }),
    presence_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
    seed: nullable({ type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991 }),
    stop: {
      anyOf: [{ type: 'string', minLength: 1 }, { type: 'array', maxItems: 4, items: { type: 'string', minLength: 1 } }, { type: 'null' }],
      'x-expect': 'a string or an array of up to 4 non-empty strings',
    },
    stream: nullable({ type: 'boolean' }),
    stream_options: nullable({ type: 'object', additionalProperties: false, properties: { include_usage: { type: 'boolean' } } }),
    suffix: nullable({ type: 'string' }),
    temperature: nullable({ type: 'number', minimum: 0, maximum: 2 }),
    top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
    top_k: nullable({ type: 'integer', minimum: -1 }),
    user: nullable({ type: 'string' }),
  },
};

const checkShape = compileValidator<CompletionRequest>(completionRequestSchema);

export function parseCompletionRequest(body: unknown): CompletionRequest {
  const req = checkShape(body);
  // Insertion needs a fill-in-the-middle model; best_of needs ranking by total logprob. Neither
  // is served yet, and silently ignoring them would return something else than asked for.
  if (req.suffix) throw errors.unsupported('suffix');
  if (req.best_of && req.best_of !== (req.n ?? 1)) throw errors.unsupported('best_of');
  if (req.stream_options && !req.stream) throw errors.invalid("'stream_options' is only allowed when 'stream' is true.", 'stream_options');
  // Each prompt is its own generation of n choices: bound them all together, not each alone.
  const choices = toTextPrompts(req).length * (req.n ?? 1);
  if (choices > MAX_CHOICES) {
    throw errors.invalid(`This request asks for ${choices} choices in all (prompts × n); the most is ${MAX_CHOICES}. Lower 'n' or send fewer prompts.`, 'n', 'invalid_value');
  }
  return req;
}

/** Each prompt of the request: texts, or token-id lists. */
export function toTextPrompts(req: CompletionRequest): TextPrompt[] {
  const p = req.prompt;
  if (typeof p === 'string') return [{ text: p }];
  if (p.length > 0 && typeof p[0] === 'number') return [{ ids: p as number[] }];
  return (p as (string | number[])[]).map((x) => (typeof x === 'string' ? { text: x } : { ids: x }));
}

const topKParam = (k: number | null | undefined) => {
  const topK = topKOf(k);
  return topK ? { topK } : {};
};

/** OpenAI's defaults for this endpoint (max_tokens is 16 here, unlike chat). */
export function toCompletionParams(req: CompletionRequest, defaults: Record<string, unknown> = {}): SamplingParams {
  const stop = req.stop ?? (defaults.stop as string | string[] | undefined) ?? [];
  return {
    maxTokens: req.max_tokens ?? (defaults.max_tokens as number | undefined) ?? 16,
    temperature: req.temperature ?? (defaults.temperature as number | undefined) ?? 1,
    topP: req.top_p ?? (defaults.top_p as number | undefined) ?? 1,
    ...topKParam(req.top_k ?? (defaults.top_k as number | undefined)),
    n: req.n ?? 1,
    stop: typeof stop === 'string' ? [stop] : stop,
    seed: req.seed ?? null,
    frequencyPenalty: req.frequency_penalty ?? 0,
    presencePenalty: req.presence_penalty ?? 0,
    logprobs: req.logprobs ?? null,
    echo: req.echo === true,
    constraint: null,
  };
}

/** The legacy logprobs shape: parallel arrays over the tokens of `text`. */
export interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: Record<string, number>[] | null;
  text_offset: number[];
}

export function toLegacyLogprobs(entries: TokenLogprob[], k: number, startOffset = 0): LegacyLogprobs {
  let offset = startOffset;
  const text_offset = entries.map((e) => {
    const at = offset;
    offset += e.token.length;
    return at;
  });
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => Object.fromEntries(e.top.slice(0, k).map((t) => [t.token, t.logprob]))),
    text_offset,
  };
}

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { text: string; index: number; logprobs: LegacyLogprobs | null; finish_reason: FinishReason | null }[];
  usage?: Usage | null;
  system_fingerprint: string;
}
