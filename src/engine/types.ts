import type { InputBound } from '../protocol/limits.js';
import type { ToolCallFormat } from '../protocol/tools.js';
import type { ReasoningFormat } from '../protocol/reasoning.js';
import type { ErrorBody } from '../protocol/errors.js';
import type { ModerationResult } from '../protocol/moderations.js';
import type { Prompt, PromptMessage, SamplingParams, ToolDefinition } from '../protocol/chat.js';
import type { ModelTask } from '../protocol/models.js';
import type { FinishReason, TokenLogprob, Usage } from '../protocol/shared.js';

/**
 * What a generation reports, in order: `start` once the worker has the prompt tokenized,
 * `delta`s as text appears (several choices may share one event), then exactly one of
 * `done` or `error`. The same objects are stored in ai.request_events (notifications only name
 * the request and seq; see sql/010_events.sql).
 */
export type EngineEvent =
  /** `at`: when the worker started it (ms since the epoch); absent in events stored by older workers. */
  | { type: 'start'; promptTokens: number; at?: number }
  /** The worker running it died and another attempt starts over: earlier deltas are void. */
  | { type: 'restart'; attempt: number }
  /** `at`: when the oldest text in this event was produced (ms since the epoch), for latency figures. */
  | { type: 'delta'; choices: ChoiceDelta[]; at: number }
  | { type: 'done'; choices: ChoiceSummary[]; usage: Usage }
  /**
   * Embeddings finished. The vectors are not in the event row (too large for jsonb): they are
   * the request row's `vectors` (float32 bytes), which the event hub reads with the event.
   */
  | { type: 'embedded'; promptTokens: number; vectors?: Buffer | null }
  /** A rerank request finished: one relevance score per document, in document order. */
  | { type: 'reranked'; promptTokens: number; scores: number[] }
  /** A moderation request's results, one per input (small: they travel in the event row). */
  | { type: 'moderated'; promptTokens: number; results: ModerationResult[] }
  | { type: 'error'; status: number; error: ErrorBody };

export interface ChoiceDelta {
  index: number;
  text: string;
  finishReason: FinishReason | null;
  /** Per token behind this text, when the request asked for logprobs. */
  logprobs?: TokenLogprob[];
  /** With finishReason 'stop': the stop string that ended the text (absent for an end token). */
  stopSequence?: string;
}

export interface ChoiceSummary {
  index: number;
  finishReason: FinishReason;
}

export interface GenerateRequest {
  /** Which endpoint asked: chat messages (chat completions, responses) or a raw prompt (legacy completions). */
  endpoint: 'chat.completions' | 'completions' | 'responses';
  /** The request's id, when the caller needs it before queueing (a response's id is its request's); default: a new uuid. */
  id?: string;
  /** Name or alias, as the client sent it. */
  model: string;
  prompt: Prompt;
  params: SamplingParams;
  stream: boolean;
  keyId: string | null;
  /** Request fields that do not steer generation (user, metadata), kept in the log. */
  meta: Record<string, unknown>;
  /** Told the key's rate-limit headers (x-ratelimit-*, and Retry-After on a refusal) once admission has decided. */
  onLimits?(headers: Record<string, string>): void;
  /** The caller's W3C trace context: admission is traced under it, and the worker continues it (absent: the active context; null: none). */
  traceparent?: string | null;
  /** Acknowledged before its result (a background response): its enqueue waits for the WAL flush (requests-repo.ts). */
  durable?: boolean;
}

export interface Generation {
  requestId: string;
  /** The registered name the request resolved to. */
  model: string;
  /** Seconds since the epoch, as OpenAI's `created`. */
  created: number;
  events: AsyncIterable<EngineEvent>;
}

export interface ModelInfo {
  name: string;
  task: ModelTask;
  aliases: string[];
  created: number;
  defaults: Record<string, unknown>;
  /** Embedding models: output size, once known (a worker fills it in when it loads the model). */
  dimensions: number | null;
  /** Chat models: how the model writes tool calls (parsed into tool_calls, enforced for forced calls). */
  toolCallFormat?: ToolCallFormat;
  /** Chat models: how the model marks its reasoning (split into reasoning_content); null: it does not. */
  reasoningFormat?: ReasoningFormat | null;
  /** Tells a text that cannot fit without tokenizing it, once a worker has loaded the model (protocol/limits.ts). */
  inputBound?: InputBound | null;
  /** Embedding models: inputs longer than the context are cut to fit rather than refused. */
  truncate?: boolean;
}

export interface EmbedRequest {
  /** Name or alias, as the client sent it. */
  model: string;
  /** Texts, or token-id lists used as the complete model input. */
  inputs: (string | number[])[];
  keyId: string | null;
  /** Recorded in ai.requests.params (dimensions, user, ...). */
  meta: Record<string, unknown>;
  /** As GenerateRequest's: the key's x-ratelimit-* headers once admission has decided. */
  onLimits?(headers: Record<string, string>): void;
}

export interface EmbedResult {
  requestId: string;
  model: string;
  /** Full-dimension vectors in input order (float32 as the worker computed them). */
  vectors: ArrayLike<number>[];
  promptTokens: number;
}

export interface RerankRequest {
  /** Name or alias, as the client sent it. */
  model: string;
  query: string;
  documents: string[];
  keyId: string | null;
  /** Recorded in ai.requests.params (user, ...). */
  meta: Record<string, unknown>;
  /** Told the rate-limit headers of a refusal (Retry-After, x-ratelimit-*). */
  onLimits?(headers: Record<string, string>): void;
}

export interface RerankResult {
  requestId: string;
  model: string;
  /** Relevance per document, in document order. */
  scores: number[];
  promptTokens: number;
}

export interface ModerateRequest {
  /** The registered name of a moderation model (serving has resolved it and checked the key's scope). */
  model: string;
  /** As the client sent it, for the log. */
  requestedModel: string;
  texts: string[];
  keyId: string | null;
  /** Told the rate-limit headers of a refusal (Retry-After, x-ratelimit-*). */
  onLimits?(headers: Record<string, string>): void;
}

export interface ModerateResult {
  requestId: string;
  results: ModerationResult[];
  promptTokens: number;
}

/** The interface serving uses: it never sees queues, SQL or processes. */
export interface Engine {
  /** Resolves a model name or alias; null when none is registered. */
  getModel(name: string): Promise<ModelInfo | null>;
  listModels(): Promise<ModelInfo[]>;
  /** Queues a chat generation; throws ApiError (404) for an unknown model. */
  generate(req: GenerateRequest): Promise<Generation>;
  /** Embeds inputs (queued, batched with other requests by the worker); throws ApiError on failure. */
  embed(req: EmbedRequest, onQueued?: (requestId: string) => void): Promise<EmbedResult>;
  /** Scores documents against a query with a rerank model (queued, batched by the worker); throws ApiError on failure. */
  rerank(req: RerankRequest, onQueued?: (requestId: string) => void): Promise<RerankResult>;
  /** Classifies texts with a moderation model (queued, batched by the worker); absent where no moderation can run (test fakes). */
  moderate?(req: ModerateRequest, onQueued?: (requestId: string) => void): Promise<ModerateResult>;
  /** Stops a generation (client gone); queued work for it is skipped. */
  cancel(requestId: string): Promise<void>;
}

/** What /tokenize asks: a raw text, or chat messages rendered with the model's chat template. */
export interface TokenizeRequest {
  /** The registered name (serving has already checked the caller's scope). */
  model: string;
  input:
    | { text: string; addSpecialTokens: boolean }
    | { messages: PromptMessage[]; tools?: ToolDefinition[]; addGenerationPrompt: boolean; addSpecialTokens: boolean };
}

export interface Tokenized {
  model: string;
  tokens: number[];
  /** The context length a worker enforces for this model. */
  maxModelLen: number;
}

/** Tokenizers without a model (engine/tokenizers.ts): /tokenize, /detokenize, count_tokens. */
export interface Tokenizers {
  tokenize(req: TokenizeRequest): Promise<Tokenized>;
  detokenize(model: string, tokens: number[]): Promise<string>;
}
