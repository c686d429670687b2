import { compileValidator, type Schema } from './validate.js';
import { errors } from './errors.js';
import { nullable, type FinishReason, type TokenLogprob, type Usage } from './shared.js';

// ---------------------------------------------------------------------------------------------
// Request (fields in the order of OpenAI's reference)
// ---------------------------------------------------------------------------------------------

export type ChatRole = 'system' | 'developer' | 'user' | 'assistant' | 'tool';
export interface TextPart {
  type: 'text';
  text: string;
}
export interface ChatMessage {
  role: ChatRole;
  content: string | TextPart[] | null;
  name?: string;
  tool_call_id?: string;
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  model: string;
  frequency_penalty?: number | null;
  logprobs?: boolean | null;
  max_completion_tokens?: number | null;
  max_tokens?: number | null;
  metadata?: Record<string, string> | null;
  n?: number | null;
  presence_penalty?: number | null;
  response_format?: { type: string; json_schema?: Record<string, unknown> } | null;
  seed?: number | null;
  stop?: string | string[] | null;
  store?: boolean | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  temperature?: number | null;
  top_logprobs?: number | null;
  top_p?: number | null;
  user?: string | null;
  // --- Switchyard extensions (PostgresML's OpenSourceAI accepts these too) ---
  /** A Jinja chat template for this request only, overriding the model's. */
  chat_template?: string | null;
}

/** Known OpenAI parameters that are not implemented yet: a 400 that names them. */
const UNSUPPORTED = [
  'audio', 'function_call', 'functions', 'logit_bias', 'modalities', 'parallel_tool_calls', 'prediction',
  'reasoning_effort', 'service_tier', 'tool_choice', 'tools', 'verbosity', 'web_search_options',
];

const textPart = {
  type: 'object',
  required: ['type', 'text'],
  additionalProperties: false,
  properties: { type: { enum: ['text'] }, text: { type: 'string' } },
};

const message = {
  type: 'object',
  required: ['role'],
  additionalProperties: false,
  properties: {
    role: { enum: ['system', 'developer', 'user', 'assistant', 'tool'] },
    content: {
      anyOf: [{ type: 'string' }, { type: 'array', items: textPart }, { type: 'null' }],
      'x-expect': 'a string or an array of text content parts',
    },
    name: { type: 'string' },
    tool_call_id: { type: 'string' },
  },
};

const tokenLimit = nullable({ type: 'integer', minimum: 1 });

export const chatCompletionRequestSchema: Schema = {
  type: 'object',
  required: ['messages', 'model'],
  additionalProperties: false,
  'x-unsupported': UNSUPPORTED,
  properties: {
    messages: { type: 'array', minItems: 1, items: message },
    model: { type: 'string', minLength: 1 },
    frequency_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
    logprobs: nullable({ type: 'boolean' }),
    max_completion_tokens: tokenLimit,
    max_tokens: tokenLimit,
    metadata: nullable({ type: 'object', additionalProperties: { type: 'string' } }),
    n: nullable({ type: 'integer', minimum: 1, maximum: 128 }),
    presence_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
    // The json_schema form is known (so it is 'not supported yet', not 'unrecognized').
    response_format: nullable({
      type: 'object', required: ['type'], additionalProperties: false, properties: { type: { type: 'string' }, json_schema: { type: 'object' } },
    }),
    seed: nullable({ type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991 }),
    stop: {
      anyOf: [{ type: 'string', minLength: 1 }, { type: 'array', maxItems: 4, items: { type: 'string', minLength: 1 } }, { type: 'null' }],
      'x-expect': 'a string or an array of up to 4 non-empty strings',
    },
    store: nullable({ type: 'boolean' }),
    stream: nullable({ type: 'boolean' }),
    stream_options: nullable({
      type: 'object', additionalProperties: false, properties: { include_usage: { type: 'boolean' } },
    }),
    temperature: nullable({ type: 'number', minimum: 0, maximum: 2 }),
    top_logprobs: nullable({ type: 'integer', minimum: 0, maximum: 20 }),
    top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
    user: nullable({ type: 'string' }),
    chat_template: nullable({ type: 'string', minLength: 1 }),
  },
};

const checkShape = compileValidator<ChatCompletionRequest>(chatCompletionRequestSchema);

/** Images, audio and files are real OpenAI content parts this server cannot use yet: say so. */
function rejectNonTextParts(body: unknown): void {
  const messages = (body as { messages?: unknown } | null)?.messages;
  if (!Array.isArray(messages)) return;
  messages.forEach((m, i) => {
    const content = (m as { content?: unknown } | null)?.content;
    if (!Array.isArray(content)) return;
    content.forEach((part, j) => {
      const type = (part as { type?: unknown } | null)?.type;
      if (typeof type === 'string' && type !== 'text') {
        throw errors.invalid(`Content parts of type '${type}' are not supported by this server yet.`, `messages[${i}].content[${j}].type`, 'unsupported_parameter');
      }
    });
  });
}

/** Validates a chat completion body; throws ApiError (400 naming the param) when it is not one we serve. */
export function parseChatCompletionRequest(body: unknown): ChatCompletionRequest {
  rejectNonTextParts(body);
  const req = checkShape(body);
  // Rules a JSON schema cannot say well, each still naming its param.
  if (req.top_logprobs !== null && req.top_logprobs !== undefined && req.logprobs !== true) {
    throw errors.invalid("'top_logprobs' needs 'logprobs': true.", 'top_logprobs');
  }
  if (req.response_format && req.response_format.type !== 'text') throw errors.unsupported('response_format');
  if (req.stream_options && !req.stream) {
    throw errors.invalid("'stream_options' is only allowed when 'stream' is true.", 'stream_options');
  }
  req.messages.forEach((m, i) => {
    if (m.content === null || m.content === undefined) {
      if (m.role !== 'assistant') throw errors.invalid(`Messages with role '${m.role}' must have content.`, `messages[${i}].content`);
    }
    if (m.role === 'tool' && !m.tool_call_id) throw errors.invalid("Messages with role 'tool' need a 'tool_call_id'.", `messages[${i}].tool_call_id`);
  });
  return req;
}

// ---------------------------------------------------------------------------------------------
// Request → engine
// ---------------------------------------------------------------------------------------------

/** What the engine needs to generate, independent of the endpoint that asked. */
export interface SamplingParams {
  /** Upper bound on new tokens per choice; null: up to the model's context length. */
  maxTokens: number | null;
  temperature: number;
  topP: number;
  n: number;
  stop: string[];
  seed: number | null;
  frequencyPenalty: number;
  presencePenalty: number;
  /** null: no logprobs; k: logprobs of each generated token plus the k most likely (0–20). */
  logprobs: number | null;
  /** Legacy completions: the prompt is part of the answer (with its logprobs, if asked). */
  echo: boolean;
}

export interface ChatPrompt {
  messages: { role: ChatRole; content: string; name?: string; tool_call_id?: string }[];
  chatTemplate: string | null;
}

/** A raw prompt (legacy completions): text the tokenizer encodes, or token ids used as they are. */
export type TextPrompt = { text: string } | { ids: number[] };

/** Everything the engine can generate from. */
export type Prompt = ChatPrompt | TextPrompt;

/** Text parts are joined; the engine sees plain strings. */
export function toChatPrompt(req: ChatCompletionRequest): ChatPrompt {
  return {
    messages: req.messages.map((m) => ({
      role: m.role,
      content: typeof m.content === 'string' ? m.content : (m.content ?? []).map((p) => p.text).join(''),
      ...(m.name !== undefined ? { name: m.name } : {}),
      ...(m.tool_call_id !== undefined ? { tool_call_id: m.tool_call_id } : {}),
    })),
    chatTemplate: req.chat_template ?? null,
  };
}

/** Model defaults (ai.models.defaults) fill in what the request leaves out; OpenAI's defaults after that. */
export function toSamplingParams(req: ChatCompletionRequest, defaults: Record<string, unknown> = {}): SamplingParams {
  const pick = <T>(key: keyof ChatCompletionRequest, fallback: T): T =>
    ((req[key] ?? defaults[key] ?? fallback) as T);
  const stop = req.stop ?? (defaults.stop as string | string[] | undefined) ?? [];
  return {
    maxTokens: req.max_completion_tokens ?? req.max_tokens ?? (defaults.max_tokens as number | undefined) ?? null,
    temperature: pick('temperature', 1),
    topP: pick('top_p', 1),
    n: pick('n', 1),
    stop: typeof stop === 'string' ? [stop] : stop,
    seed: req.seed ?? null,
    frequencyPenalty: pick('frequency_penalty', 0),
    presencePenalty: pick('presence_penalty', 0),
    logprobs: req.logprobs ? (req.top_logprobs ?? 0) : null,
    echo: false,
  };
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/** OpenAI's per-token logprob entry (chat). */
export interface ChatLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export interface ChoiceLogprobs {
  content: ChatLogprob[];
  refusal: null;
}

export function toChatLogprobs(entries: TokenLogprob[]): ChoiceLogprobs {
  const bytes = (t: string) => [...Buffer.from(t, 'utf8')];
  return {
    content: entries.map((e) => ({
      token: e.token,
      logprob: e.logprob ?? 0,
      bytes: bytes(e.token),
      top_logprobs: e.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: bytes(t.token) })),
    })),
    refusal: null,
  };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: 'assistant'; content: string; refusal: null };
    logprobs: ChoiceLogprobs | null;
    finish_reason: FinishReason;
  }[];
  usage: Usage;
  system_fingerprint: string;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: {
    index: number;
    delta: { role?: 'assistant'; content?: string };
    logprobs: ChoiceLogprobs | null;
    finish_reason: FinishReason | null;
  }[];
  usage?: Usage | null;
}
