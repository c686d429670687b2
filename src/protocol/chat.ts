import { compileValidator, type Schema } from './validate.js';
import { errors } from './errors.js';
import { nullable, type FinishReason, type TokenLogprob, type Usage } from './shared.js';
import { HERMES_TOOL_FORMAT, type ToolCall, type ToolCallFormat } from './tools.js';
import type { ReasoningFormat } from './reasoning.js';
// Pure (no tokenizer, no model): the same checker the worker compiles schemas with.
import { checkSchema, schemaBudget, SchemaError } from '../worker/generation/constrain/schema.js';

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
  /** Calls an earlier assistant turn made (history). */
  tool_calls?: ToolCall[];
}

/** A function the model may call (OpenAI's `tools[]` entry). */
export interface ToolDefinition {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean | null };
}

export type ToolChoice = 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name: string; description?: string; schema?: Record<string, unknown>; strict?: boolean | null } };

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
  parallel_tool_calls?: boolean | null;
  response_format?: ResponseFormat | null;
  seed?: number | null;
  stop?: string | string[] | null;
  store?: boolean | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  temperature?: number | null;
  top_logprobs?: number | null;
  tool_choice?: ToolChoice | null;
  tools?: ToolDefinition[] | null;
  top_p?: number | null;
  /** vLLM's extension: sample from the k most likely tokens only (0 or -1: all). */
  top_k?: number | null;
  user?: string | null;
  // --- Switchyard extensions (PostgresML's OpenSourceAI accepts these too) ---
  /** A Jinja chat template for this request only, overriding the model's. */
  chat_template?: string | null;
}

/** Known OpenAI parameters that are not implemented yet: a 400 that names them. */
const UNSUPPORTED = [
  'audio', 'function_call', 'functions', 'logit_bias', 'modalities', 'prediction',
  'reasoning_effort', 'service_tier', 'verbosity', 'web_search_options',
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
    tool_calls: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'type', 'function'],
        additionalProperties: false,
        properties: {
          id: { type: 'string' },
          type: { enum: ['function'] },
          function: {
            type: 'object',
            required: ['name', 'arguments'],
            additionalProperties: false,
            properties: { name: { type: 'string', minLength: 1 }, arguments: { type: 'string' } },
          },
        },
      },
    },
    refusal: nullable({ type: 'string' }),
  },
};

const FUNCTION_NAME = { type: 'string', pattern: '^[a-zA-Z0-9_-]{1,64}$', 'x-expect': 'a name of 1 to 64 letters, digits, _ or -' };

const tool = {
  type: 'object',
  required: ['type', 'function'],
  additionalProperties: false,
  properties: {
    type: { enum: ['function'] },
    function: {
      type: 'object',
      required: ['name'],
      additionalProperties: false,
      properties: {
        name: FUNCTION_NAME,
        description: { type: 'string' },
        parameters: { type: 'object' },
        strict: nullable({ type: 'boolean' }),
      },
    },
  },
};

const toolChoice = {
  anyOf: [
    { enum: ['none', 'auto', 'required'] },
    {
      type: 'object',
      required: ['type', 'function'],
      additionalProperties: false,
      properties: {
        type: { enum: ['function'] },
        function: { type: 'object', required: ['name'], additionalProperties: false, properties: { name: { type: 'string' } } },
      },
    },
    { type: 'null' },
  ],
  'x-expect': "'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}",
};

const responseFormat = {
  anyOf: [
    { type: 'object', required: ['type'], additionalProperties: false, properties: { type: { enum: ['text', 'json_object'] } } },
    {
      type: 'object',
      required: ['type', 'json_schema'],
      additionalProperties: false,
      properties: {
        type: { enum: ['json_schema'] },
        json_schema: {
          type: 'object',
          required: ['name'],
          additionalProperties: false,
          properties: {
            name: FUNCTION_NAME,
            description: { type: 'string' },
            schema: { type: 'object' },
            strict: nullable({ type: 'boolean' }),
          },
        },
      },
    },
    { type: 'null' },
  ],
  'x-expect': "{\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\"}}",
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
    parallel_tool_calls: nullable({ type: 'boolean' }),
    presence_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
    response_format: responseFormat,
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
    tool_choice: toolChoice,
    tools: nullable({ type: 'array', minItems: 1, maxItems: 128, items: tool }),
    top_logprobs: nullable({ type: 'integer', minimum: 0, maximum: 20 }),
    top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
    top_k: nullable({ type: 'integer', minimum: -1 }),
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
  checkStructured(req);
  if (req.stream_options && !req.stream) {
    throw errors.invalid("'stream_options' is only allowed when 'stream' is true.", 'stream_options');
  }
  req.messages.forEach((m, i) => {
    if (m.content === null || m.content === undefined) {
      if (m.role !== 'assistant') throw errors.invalid(`Messages with role '${m.role}' must have content.`, `messages[${i}].content`);
    }
    if (m.role === 'tool' && !m.tool_call_id) throw errors.invalid("Messages with role 'tool' need a 'tool_call_id'.", `messages[${i}].tool_call_id`);
    if (m.tool_calls && m.role !== 'assistant') throw errors.invalid("Only messages with role 'assistant' may have 'tool_calls'.", `messages[${i}].tool_calls`);
  });
  return req;
}

/** What a schema the constraint cannot enforce looks like to the client. */
function schemaError(err: unknown, param: string, what: string): never {
  if (err instanceof SchemaError) throw errors.invalid(`Invalid schema for ${what}: ${err.message}`, param, 'invalid_json_schema');
  throw err;
}

/** The tools a request's tool_choice forces a call to (none: the model may answer in text). */
export function forcedTools(req: ChatCompletionRequest): ToolDefinition[] {
  const tools = req.tools ?? [];
  const choice = req.tool_choice ?? 'auto';
  if (!tools.length || choice === 'none' || choice === 'auto') return [];
  if (choice === 'required') return tools;
  return tools.filter((t) => t.function.name === choice.function.name);
}

/** response_format and tools: everything the constraint will enforce must be enforceable. */
function checkStructured(req: ChatCompletionRequest): void {
  // One size budget for every schema the constraint will compile (SCHEMA_LIMITS).
  const budget = schemaBudget();
  const rf = req.response_format;
  if (rf?.type === 'json_schema') {
    try {
      checkSchema(rf.json_schema.schema ?? {}, budget);
    } catch (err) {
      schemaError(err, 'response_format', `response_format '${rf.json_schema.name}'`);
    }
  }
  const tools = req.tools ?? [];
  const names = new Set<string>();
  tools.forEach((t, i) => {
    if (names.has(t.function.name)) throw errors.invalid(`The function name '${t.function.name}' appears twice in 'tools'.`, `tools[${i}].function.name`);
    names.add(t.function.name);
  });
  const choice = req.tool_choice;
  if (choice !== null && choice !== undefined && !tools.length) {
    throw errors.invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.", 'tool_choice');
  }
  if (typeof choice === 'object' && choice !== null && !names.has(choice.function.name)) {
    throw errors.invalid(`Invalid value for 'tool_choice': no function named '${choice.function.name}' in 'tools'.`, 'tool_choice.function.name');
  }
  if (req.parallel_tool_calls !== null && req.parallel_tool_calls !== undefined && !tools.length) {
    throw errors.invalid("'parallel_tool_calls' is only allowed when 'tools' are specified.", 'parallel_tool_calls');
  }
  // A forced call is generated under its function's parameters: they must be enforceable.
  for (const t of forcedTools(req)) {
    const i = tools.indexOf(t);
    try {
      checkSchema(t.function.parameters ?? { type: 'object', properties: {} }, budget);
    } catch (err) {
      schemaError(err, `tools[${i}].function.parameters`, `function '${t.function.name}'`);
    }
  }
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
  /** Sample from the k most likely tokens only (vLLM's top_k); absent or 0: all. */
  topK?: number;
  n: number;
  stop: string[];
  seed: number | null;
  frequencyPenalty: number;
  presencePenalty: number;
  /** null: no logprobs; k: logprobs of each generated token plus the k most likely (0–20). */
  logprobs: number | null;
  /** Legacy completions: the prompt is part of the answer (with its logprobs, if asked). */
  echo: boolean;
  /** Structured output: what the decoder may emit (response_format, forced tool calls); null: anything. */
  constraint: ConstraintSpec | null;
}

interface ConstraintCommon {
  /**
   * Tokens the sequence may use at most (the request's max_tokens): the constraint closes the
   * value in time, so a cut never leaves invalid JSON. null: no bound.
   */
  maxTokens: number | null;
  /**
   * Draw from the raw distribution first and mask only when the draw is not allowed. Exact when
   * sampling is greedy or top_p = 1 without top_k; with top_p < 1 or top_k the mask must come
   * first (false): a draw cut down to the nucleus or the k best may hold no allowed token.
   */
  lazy: boolean;
  /**
   * The model reasons first (a section its template opens): the constraint starts after that
   * section, which may use at most half of maxTokens before its end marker is forced.
   */
  reasoning?: ReasoningFormat;
}

/** What a constrained sequence may be (serializable: it travels in the stored params). */
export type ConstraintSpec =
  | (ConstraintCommon & { kind: 'json_object' })
  | (ConstraintCommon & { kind: 'json_schema'; schema: Record<string, unknown> | boolean })
  | (ConstraintCommon & {
      kind: 'tool_calls';
      format: ToolCallFormat;
      tools: { name: string; parameters: Record<string, unknown> | null }[];
      /** More than one call per reply. */
      parallel: boolean;
    });

/** A message as the chat template sees it. */
export interface PromptMessage {
  role: ChatRole;
  content: string;
  name?: string;
  tool_call_id?: string;
  /** Arguments as objects (templates write them with `tojson`), or the string when it is not JSON. */
  tool_calls?: { id: string; type: 'function'; function: { name: string; arguments: unknown } }[];
}

export interface ChatPrompt {
  messages: PromptMessage[];
  chatTemplate: string | null;
  /** The request's tools, for the chat template (`tools` in transformers' templates); absent: none. */
  tools?: ToolDefinition[];
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
      ...(m.tool_calls?.length
        ? { tool_calls: m.tool_calls.map((c) => ({ id: c.id, type: 'function' as const, function: { name: c.function.name, arguments: argumentsValue(c.function.arguments) } })) }
        : {}),
    })),
    chatTemplate: req.chat_template ?? null,
    // tool_choice 'none' still shows the tools (the model knows them, it just may not call them), as OpenAI does.
    ...(req.tools?.length ? { tools: req.tools } : {}),
  };
}

function argumentsValue(args: string): unknown {
  try {
    return JSON.parse(args);
  } catch {
    return args;
  }
}

/**
 * The decoder's constraint for a request: forced tool calls win over response_format (a
 * call's arguments are themselves JSON); `auto` tool choice leaves the output free.
 */
export function toConstraint(req: ChatCompletionRequest, p: Pick<SamplingParams, 'maxTokens' | 'temperature' | 'topP' | 'topK'>, format: ToolCallFormat = HERMES_TOOL_FORMAT): ConstraintSpec | null {
  const common = { maxTokens: p.maxTokens, lazy: p.temperature < 1e-5 || (p.topP >= 1 && !p.topK) };
  const forced = forcedTools(req);
  if (forced.length) {
    return {
      kind: 'tool_calls',
      ...common,
      format,
      tools: forced.map((t) => ({ name: t.function.name, parameters: t.function.parameters ?? null })),
      parallel: typeof req.tool_choice === 'object' ? false : req.parallel_tool_calls !== false,
    };
  }
  const rf = req.response_format;
  if (rf?.type === 'json_object') return { kind: 'json_object', ...common };
  if (rf?.type === 'json_schema') return { kind: 'json_schema', ...common, schema: rf.json_schema.schema ?? {} };
  return null;
}

/** Model defaults (ai.models.defaults) fill in what the request leaves out; OpenAI's defaults after that. */
export function toSamplingParams(req: ChatCompletionRequest, defaults: Record<string, unknown> = {}, toolFormat: ToolCallFormat = HERMES_TOOL_FORMAT): SamplingParams {
  const pick = <T>(key: keyof ChatCompletionRequest, fallback: T): T =>
    ((req[key] ?? defaults[key] ?? fallback) as T);
  const stop = req.stop ?? (defaults.stop as string | string[] | undefined) ?? [];
  const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? (defaults.max_tokens as number | undefined) ?? null;
  const temperature = pick('temperature', 1);
  const topP = pick('top_p', 1);
  const topK = topKOf(pick<number>('top_k', 0));
  return {
    maxTokens,
    temperature,
    topP,
    ...(topK ? { topK } : {}),
    n: pick('n', 1),
    stop: typeof stop === 'string' ? [stop] : stop,
    seed: req.seed ?? null,
    frequencyPenalty: pick('frequency_penalty', 0),
    presencePenalty: pick('presence_penalty', 0),
    logprobs: req.logprobs ? (req.top_logprobs ?? 0) : null,
    echo: false,
    constraint: toConstraint(req, { maxTokens, temperature, topP, ...(topK ? { topK } : {}) }, toolFormat),
  };
}

/** top_k as the sampler takes it: a positive k, or undefined for "all tokens" (vLLM's 0 and -1). */
export function topKOf(k: number | null | undefined): number | undefined {
  return typeof k === 'number' && k > 0 ? k : undefined;
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

export type ChatFinishReason = FinishReason | 'tool_calls';

/** A streamed piece of a call: the first one names it, later ones add to its arguments. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function: { name?: string; arguments: string };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: 'assistant'; content: string | null; refusal: null; tool_calls?: ToolCall[]; reasoning_content?: string | null };
    logprobs: ChoiceLogprobs | null;
    finish_reason: ChatFinishReason;
    /** Our extension, as vLLM's: the stop string that ended the text; absent otherwise. */
    stop_reason?: string;
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
    delta: { role?: 'assistant'; content?: string; reasoning_content?: string; tool_calls?: ToolCallDelta[] };
    logprobs: ChoiceLogprobs | null;
    finish_reason: ChatFinishReason | null;
    /** Our extension, as vLLM's: with the finish, the stop string that ended the text. */
    stop_reason?: string;
  }[];
  usage?: Usage | null;
}
