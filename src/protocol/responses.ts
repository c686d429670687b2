import { compileValidator, type Schema } from './validate.js';
import { ApiError, errors } from './errors.js';
import { nullable, type Usage } from './shared.js';

/**
 * OpenAI's Responses API (POST /v1/responses): its wire types and request schema, fields in the
 * order of OpenAI's reference. It is a layer over chat (responses-to-chat.ts): input items
 * become chat messages, `text.format` becomes `response_format`, function tools become chat
 * tools, and the chat request is validated by the chat endpoint's own rules.
 */

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

export interface FunctionTool {
  type: 'function';
  name: string;
  description?: string | null;
  parameters?: Record<string, unknown> | null;
  strict?: boolean | null;
}

export type ResponseToolChoice = 'none' | 'auto' | 'required' | { type: 'function'; name: string };

export type TextFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; name: string; schema?: Record<string, unknown>; description?: string | null; strict?: boolean | null };

export interface ResponseCreateRequest {
  model: string;
  input?: string | unknown[];
  background?: boolean | null;
  include?: string[] | null;
  instructions?: string | null;
  max_output_tokens?: number | null;
  metadata?: Record<string, string> | null;
  parallel_tool_calls?: boolean | null;
  previous_response_id?: string | null;
  safety_identifier?: string | null;
  store?: boolean | null;
  stream?: boolean | null;
  stream_options?: { include_obfuscation?: boolean } | null;
  temperature?: number | null;
  text?: { format?: TextFormat | null } | null;
  tool_choice?: ResponseToolChoice | null;
  tools?: FunctionTool[] | null;
  top_p?: number | null;
  truncation?: 'auto' | 'disabled' | null;
  user?: string | null;
}

/** Known Responses parameters this server does not implement: a 400 naming them. */
const UNSUPPORTED = ['conversation', 'max_tool_calls', 'prompt', 'prompt_cache_key', 'prompt_cache_retention', 'reasoning', 'service_tier', 'text.verbosity', 'top_logprobs'];

/** Tool types OpenAI hosts (search, computers, interpreters...): not something this server runs. */
const BUILT_IN_TOOLS = new Set([
  'web_search', 'web_search_preview', 'web_search_preview_2025_03_11', 'web_search_2025_08_26', 'file_search',
  'computer_use_preview', 'computer_use', 'code_interpreter', 'image_generation', 'mcp', 'local_shell', 'shell',
  'apply_patch', 'custom', 'tool_search',
]);

const FUNCTION_NAME = { type: 'string', pattern: '^[a-zA-Z0-9_-]{1,64}$', 'x-expect': 'a name of 1 to 64 letters, digits, _ or -' };

const functionTool = {
  type: 'object',
  required: ['type', 'name'],
  additionalProperties: false,
  properties: {
    type: { enum: ['function'] },
    name: FUNCTION_NAME,
    description: nullable({ type: 'string' }),
    parameters: nullable({ type: 'object' }),
    strict: nullable({ type: 'boolean' }),
  },
};

const textFormat = {
  anyOf: [
    { type: 'object', required: ['type'], additionalProperties: false, properties: { type: { enum: ['text', 'json_object'] } } },
    {
      type: 'object',
      required: ['type', 'name'],
      additionalProperties: false,
      properties: {
        type: { enum: ['json_schema'] },
        name: FUNCTION_NAME,
        schema: { type: 'object' },
        description: nullable({ type: 'string' }),
        strict: nullable({ type: 'boolean' }),
      },
    },
    { type: 'null' },
  ],
  'x-expect': "{\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"name\", \"schema\"}",
};

export const responseCreateRequestSchema: Schema = {
  type: 'object',
  required: ['model'],
  additionalProperties: false,
  'x-unsupported': UNSUPPORTED,
  properties: {
    model: { type: 'string', minLength: 1 },
    // Items are checked one by one below (their many shapes name their own params better).
    input: { anyOf: [{ type: 'string' }, { type: 'array', maxItems: 10_000 }], 'x-expect': 'a string or a list of input items' },
    background: nullable({ type: 'boolean' }),
    include: nullable({ type: 'array', maxItems: 0 }),
    instructions: nullable({ type: 'string' }),
    max_output_tokens: nullable({ type: 'integer', minimum: 1 }),
    metadata: nullable({ type: 'object', maxProperties: 16, additionalProperties: { type: 'string', maxLength: 512 } }),
    parallel_tool_calls: nullable({ type: 'boolean' }),
    previous_response_id: nullable({ type: 'string', minLength: 1 }),
    safety_identifier: nullable({ type: 'string' }),
    store: nullable({ type: 'boolean' }),
    stream: nullable({ type: 'boolean' }),
    stream_options: nullable({ type: 'object', additionalProperties: false, properties: { include_obfuscation: { type: 'boolean' } } }),
    temperature: nullable({ type: 'number', minimum: 0, maximum: 2 }),
    text: nullable({ type: 'object', additionalProperties: false, properties: { format: textFormat } }),
    tool_choice: {
      anyOf: [
        { enum: ['none', 'auto', 'required'] },
        { type: 'object', required: ['type', 'name'], additionalProperties: false, properties: { type: { enum: ['function'] }, name: { type: 'string' } } },
        { type: 'null' },
      ],
      'x-expect': "'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}",
    },
    // Entries are checked below: a built-in tool gets a message naming it, not a schema error.
    tools: nullable({ type: 'array', maxItems: 128, items: { type: 'object' } }),
    top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
    truncation: nullable({ enum: ['auto', 'disabled'] }),
    user: nullable({ type: 'string' }),
  },
};

const checkShape = compileValidator<ResponseCreateRequest>(responseCreateRequestSchema);
const checkTool = compileValidator<FunctionTool>(functionTool);

/** Re-names a nested validation error with the path of the value it was about. */
function nested<T>(fn: () => T, prefix: string): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 400) {
      const param = err.param ? `${prefix}${err.param.startsWith('[') ? '' : '.'}${err.param}` : prefix;
      throw new ApiError(400, err.message.replaceAll(`'${err.param}'`, `'${param}'`), err.type, err.code, param);
    }
    throw err;
  }
}

export function parseResponseCreateRequest(body: unknown): ResponseCreateRequest {
  // A hosted tool gets a message naming its type before the shape check talks about its fields.
  const tools = (body as { tools?: unknown } | null)?.tools;
  if (Array.isArray(tools)) {
    tools.forEach((t, i) => {
      const type = (t as { type?: unknown } | null)?.type;
      if (typeof type === 'string' && type !== 'function') {
        const what = BUILT_IN_TOOLS.has(type) ? `The built-in tool '${type}' is not supported by this server` : `Tools of type '${type}' are not supported by this server`;
        throw errors.invalid(`${what}: only function tools are.`, `tools[${i}].type`, 'unsupported_parameter');
      }
    });
  }
  const include = (body as { include?: unknown } | null)?.include;
  if (Array.isArray(include) && include.length) {
    throw errors.invalid(`Invalid value for 'include': ${JSON.stringify(include[0])} cannot be included by this server (nothing can yet).`, 'include[0]', 'unsupported_parameter');
  }
  const req = checkShape(body);
  req.tools?.forEach((t, i) => nested(() => checkTool(t), `tools[${i}]`));
  if (req.input === undefined && !req.previous_response_id) throw errors.invalid("Missing required parameter: 'input'.", 'input');
  if (req.background && req.store === false) throw errors.invalid("Background responses must be stored: 'background' needs 'store' to be true.", 'background');
  if (req.stream_options && !req.stream) throw errors.invalid("'stream_options' is only allowed when 'stream' is true.", 'stream_options');
  return req;
}

// ---------------------------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------------------------

export type InputContent = { type: 'input_text'; text: string } | { type: 'output_text'; text: string; annotations: unknown[] } | { type: 'refusal'; refusal: string };

export interface MessageItem {
  id: string;
  type: 'message';
  role: 'user' | 'system' | 'developer' | 'assistant';
  status: 'completed' | 'in_progress' | 'incomplete';
  content: InputContent[];
}

export interface FunctionCallItem {
  id: string;
  type: 'function_call';
  status: 'completed' | 'in_progress' | 'incomplete';
  call_id: string;
  name: string;
  arguments: string;
}

export interface FunctionCallOutputItem {
  id: string;
  type: 'function_call_output';
  status: 'completed';
  call_id: string;
  output: string;
}

export type Item = MessageItem | FunctionCallItem | FunctionCallOutputItem;

/** Ids of the items of a response: its own id in them, so an `item_reference` finds its response. */
export const itemId = (prefix: 'msg' | 'fc' | 'fco', responseHex: string, list: 'i' | 'o', index: number) => `${prefix}_${responseHex}_${list}${index}`;
const ITEM_ID = /^(?:msg|fc|fco)_([0-9a-f]{32})_([io])(\d{1,5})$/;

/** Where a referenced item lives: its response's uuid, input or output, and its index there. */
export function parseItemId(id: string): { responseId: string; list: 'i' | 'o'; index: number } | null {
  const m = ITEM_ID.exec(id);
  if (!m) return null;
  const h = m[1]!;
  return { responseId: `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`, list: m[2] as 'i' | 'o', index: Number(m[3]) };
}

export const responseHex = (id: string) => id.replaceAll('-', '');
export const responseWireId = (id: string) => `resp_${responseHex(id)}`;
/** `resp_<32 hex>` → the uuid; null when it is not one of ours (then no such response exists). */
export function parseResponseId(wire: string): string | null {
  const m = /^resp_([0-9a-f]{32})$/.exec(wire);
  if (!m) return null;
  const h = m[1]!;
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

export type ResponseStatus = 'queued' | 'in_progress' | 'completed' | 'incomplete' | 'failed' | 'cancelled';

export interface ResponseUsage {
  input_tokens: number;
  input_tokens_details: { cached_tokens: number; cache_write_tokens: number };
  output_tokens: number;
  output_tokens_details: { reasoning_tokens: number };
  total_tokens: number;
}

export const toResponseUsage = (u: Usage): ResponseUsage => ({
  input_tokens: u.prompt_tokens,
  input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
  output_tokens: u.completion_tokens,
  output_tokens_details: { reasoning_tokens: 0 },
  total_tokens: u.total_tokens,
});

export type OutputItem =
  | { id: string; type: 'message'; role: 'assistant'; status: 'in_progress' | 'completed' | 'incomplete'; content: { type: 'output_text'; text: string; annotations: unknown[]; logprobs: unknown[] }[] }
  | FunctionCallItem;

/** The request fields a response object repeats (stored with it, so any process can render it). */
export interface ResponseRequestFields {
  instructions: string | null;
  max_output_tokens: number | null;
  metadata: Record<string, string>;
  parallel_tool_calls: boolean;
  temperature: number;
  text: { format: TextFormat };
  tool_choice: ResponseToolChoice;
  tools: FunctionTool[];
  top_p: number;
  truncation: 'auto' | 'disabled';
  user: string | null;
  safety_identifier: string | null;
}

export function requestFields(req: ResponseCreateRequest, temperature: number, topP: number): ResponseRequestFields {
  return {
    instructions: req.instructions ?? null,
    max_output_tokens: req.max_output_tokens ?? null,
    metadata: req.metadata ?? {},
    parallel_tool_calls: req.parallel_tool_calls ?? true,
    temperature,
    text: { format: req.text?.format ?? { type: 'text' } },
    tool_choice: req.tool_choice ?? 'auto',
    tools: (req.tools ?? []).map((t) => ({ type: 'function', name: t.name, description: t.description ?? null, parameters: t.parameters ?? null, strict: t.strict ?? true })),
    top_p: topP,
    truncation: req.truncation ?? 'disabled',
    user: req.user ?? null,
    safety_identifier: req.safety_identifier ?? null,
  };
}

export interface ResponseError {
  /** Of OpenAI's codes, the ones a text generation here can end with (serving/response-events.ts). */
  code: 'server_error' | 'rate_limit_exceeded' | 'invalid_prompt';
  message: string;
}

/**
 * A response object on the wire. `usage` and `user` are absent rather than null when there is
 * none: OpenAI's schema makes them optional and not nullable (checked against openai-node's
 * types in test/e2e/openai-schema.test.ts).
 */
export interface ResponseObject extends Omit<ResponseRequestFields, 'user'> {
  id: string;
  object: 'response';
  created_at: number;
  status: ResponseStatus;
  background: boolean;
  completed_at: number | null;
  error: ResponseError | null;
  incomplete_details: { reason: 'max_output_tokens' } | null;
  max_tool_calls: null;
  model: string;
  output: OutputItem[];
  previous_response_id: string | null;
  reasoning: { effort: null; summary: null };
  service_tier: 'default';
  store: boolean;
  usage?: ResponseUsage;
  user?: string;
}

/** A streamed event: its type, its place in the response's stream, and its fields. */
export type ResponseStreamEvent = { type: string; sequence_number: number } & Record<string, unknown>;

export interface InputItemList {
  object: 'list';
  data: Item[];
  first_id: string | null;
  last_id: string | null;
  has_more: boolean;
}
