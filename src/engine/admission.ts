import type { Prompt, SamplingParams } from '../protocol/chat.js';
import { ApiError } from '../protocol/errors.js';

/**
 * Budgets and rate limits as the gateway sees them: what a request reserves, and how
 * ai.enqueue_request's answer (sql/074_admission.sql) becomes OpenAI's headers and errors.
 */

/** A limit's state after admission, as ai.enqueue_request reports it (the tighter of key and team). */
export interface LimitState {
  limit: number;
  remaining: number;
  /** Seconds until the window resets. */
  reset_s: number;
}
export interface Limits {
  requests?: LimitState;
  tokens?: LimitState;
}

/** The rate window (SWITCHYARD_RATE_WINDOW, seconds, default 60: limits are per minute). Every serve must agree. */
export function rateWindowSeconds(env: NodeJS.ProcessEnv = process.env): number {
  const s = Number(env.SWITCHYARD_RATE_WINDOW ?? 60);
  return Number.isFinite(s) && s > 0 ? s : 60;
}

/** When the model's context length is not known yet (no worker has loaded it): the cap of an open max_tokens. */
const FALLBACK_CONTEXT = 4096;

/**
 * What a request may use at most: its prompt plus n × max_tokens, capped by the context length
 * per choice. The serve has no tokenizer on the hot path, so the prompt is counted in UTF-8
 * bytes of its JSON: a byte-level BPE never makes more tokens than bytes, and the JSON's quotes
 * and keys stand in for the template's tokens. Settlement charges actual usage (never more than
 * this), so an overestimate only holds budget for the request's lifetime.
 */
export function reservedTokens(prompt: Prompt, params: Pick<SamplingParams, 'maxTokens' | 'n'>, contextLength: number | null): number {
  const promptTokens = 'ids' in prompt ? prompt.ids.length : Buffer.byteLength(JSON.stringify('text' in prompt ? prompt.text : [prompt.messages, prompt.tools ?? null]));
  const context = contextLength ?? FALLBACK_CONTEXT;
  const completion = params.maxTokens ?? context;
  const n = Math.max(1, params.n);
  return contextLength ? Math.min(promptTokens + n * completion, n * context) : promptTokens + n * completion;
}

/**
 * What an embedding request may use at most: its inputs' tokens, bounded above by their UTF-8
 * bytes (token-id inputs: their length) plus the two special tokens each input gets.
 */
export function reservedEmbeddingTokens(inputs: (string | number[])[]): number {
  return inputs.reduce<number>((n, x) => n + (typeof x === 'string' ? Buffer.byteLength(x) : x.length) + 2, 0);
}

/** OpenAI's duration style for x-ratelimit-reset-*: "20ms", "1s", "6m0s". */
export function formatReset(seconds: number): string {
  if (seconds < 1) return `${Math.max(0, Math.round(seconds * 1000))}ms`;
  const s = Math.ceil(seconds);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${s % 60}s`;
}

/** The x-ratelimit-* headers OpenAI sends, for the limits a key (or its team) has; none for an unlimited one. */
export function rateLimitHeaders(limits: Limits): Record<string, string> {
  const h: Record<string, string> = {};
  for (const [which, l] of [['requests', limits.requests], ['tokens', limits.tokens]] as const) {
    if (!l) continue;
    h[`x-ratelimit-limit-${which}`] = String(l.limit);
    h[`x-ratelimit-remaining-${which}`] = String(Math.max(0, l.remaining));
    h[`x-ratelimit-reset-${which}`] = formatReset(l.reset_s);
  }
  return h;
}

interface Refusal {
  code: 'budget_exceeded' | 'rate_limit_exceeded';
  kind: 'key' | 'team';
  which?: 'requests' | 'tokens';
  limit: number;
  used?: number;
  asked?: number;
  period?: string;
  reset_s: number | null;
}

/** A 429 carrying its headers: Retry-After, x-ratelimit-*, and x-should-retry (openai-node reads it). */
export class LimitError extends ApiError {
  constructor(message: string, code: string, readonly headers: Record<string, string>) {
    super(429, message, code === 'budget_exceeded' ? 'insufficient_quota' : 'rate_limit_error', code);
  }
}

/**
 * What an enqueue statement's error becomes: the admission's refusal (SQLSTATE SY429, the refusal
 * as JSON in DETAIL) a 429 whose headers `onLimits` is told; other errors as they are.
 */
export function admissionError(err: unknown, onLimits?: (headers: Record<string, string>) => void): unknown {
  const refusal = refusalOf(err);
  if (refusal) onLimits?.(refusal.headers);
  return refusal ?? err;
}

/** The admission's refusal as a 429 carrying its headers; null for any other error. */
function refusalOf(err: unknown): LimitError | null {
  const e = err as { code?: string; detail?: string };
  if (e.code !== 'SY429' || !e.detail) return null;
  const r = JSON.parse(e.detail) as Refusal;
  const whose = r.kind === 'team' ? "This API key's team" : 'This API key';
  if (r.code === 'budget_exceeded') {
    const period = r.period === 'total' ? 'in total' : `this ${r.period} (UTC)`;
    const message = `${whose} has used ${r.used} of its ${r.limit}-token budget ${period}; this request may need ${r.asked} tokens (prompt + max_tokens). ` +
      (r.reset_s === null ? 'The budget does not renew: ask an administrator to raise it.' : 'Lower max_tokens, wait for running requests to finish, or wait for the budget to renew.');
    // Retrying soon cannot help (except as running requests settle); the period's end is when it surely can.
    return new LimitError(message, r.code, {
      'x-should-retry': 'false',
      ...(r.reset_s !== null ? { 'retry-after': String(Math.ceil(r.reset_s)) } : {}),
    });
  }
  const reset = Math.max(r.reset_s ?? 1, 0.001);
  const message = r.which === 'requests'
    ? `Rate limit reached: ${whose} may make ${r.limit} requests per minute. Retry after ${Math.ceil(reset)} s.`
    : `Rate limit reached: ${whose} may use ${r.limit} tokens per minute (this request may need ${r.asked}; ${r.used} are used). Retry after ${Math.ceil(reset)} s.`;
  return new LimitError(message, r.code, {
    'retry-after': String(Math.ceil(reset)),
    'retry-after-ms': String(Math.ceil(reset * 1000)),
    [`x-ratelimit-limit-${r.which}`]: String(r.limit),
    [`x-ratelimit-remaining-${r.which}`]: '0',
    [`x-ratelimit-reset-${r.which}`]: formatReset(reset),
  });
}
