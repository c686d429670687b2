import { compileValidator, type Schema } from './validate.js';
import { ApiError, errors } from './errors.js';
import { nullable, type Usage } from './shared.js';
import type { ChatCompletion, ChatCompletionRequest, ChatMessage, ToolChoice, ToolDefinition } from './chat.js';

/**
 * Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) as a translation to and
 * from chat completions: a request becomes a chat request (tool_use / tool_result blocks become
 * assistant tool_calls and tool messages), and the chat answer becomes a Message. Fields in the
 * order of Anthropic's reference.
 */

export interface TextBlock {
  type: 'text';
  text: string;
}
export interface ToolUseBlock {
  type: 'tool_use';
  id: string;
  name: string;
  input: Record<string, unknown>;
}
export interface ToolResultBlock {
  type: 'tool_result';
  tool_use_id: string;
  content?: string | TextBlock[];
  is_error?: boolean;
}
/** Reasoning, from a model with a reasoning format (its reasoning_content in chat). */
export interface ThinkingBlock {
  type: 'thinking';
  thinking: string;
  /** Anthropic signs its thinking; a local model's is not signed (always empty). */
  signature: string;
}
export type ContentBlock = TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | { type: 'redacted_thinking'; data: string };

export interface MessageParam {
  role: 'user' | 'assistant';
  content: string | ContentBlock[];
}

export interface AnthropicTool {
  name: string;
  description?: string;
  input_schema: Record<string, unknown>;
}

export type AnthropicToolChoice =
  | { type: 'auto'; disable_parallel_tool_use?: boolean }
  | { type: 'any'; disable_parallel_tool_use?: boolean }
  | { type: 'tool'; name: string; disable_parallel_tool_use?: boolean }
  | { type: 'none' };

export interface MessagesRequest {
  model: string;
  messages: MessageParam[];
  max_tokens: number;
  metadata?: { user_id?: string | null };
  stop_sequences?: string[];
  stream?: boolean;
  system?: string | TextBlock[];
  temperature?: number;
  /** Whether thinking blocks are returned; the budget is not enforced (max_tokens bounds the whole reply). */
  thinking?: { type: 'enabled'; budget_tokens: number } | { type: 'disabled' };
  tool_choice?: AnthropicToolChoice;
  tools?: AnthropicTool[];
  top_k?: number;
  top_p?: number;
}

export type CountTokensRequest = Pick<MessagesRequest, 'model' | 'messages' | 'system' | 'tools' | 'tool_choice' | 'thinking'>;

/** Anthropic fields this server cannot honour: a 400 naming them. */
const UNSUPPORTED = ['container', 'mcp_servers', 'service_tier', 'context_management'];

// Anthropic accepts (and ignores here) cache_control on blocks; citations are not served.
const cacheControl = { type: 'object' };
const textBlock = {
  type: 'object',
  required: ['type', 'text'],
  additionalProperties: false,
  properties: { type: { const: 'text' }, text: { type: 'string' }, cache_control: cacheControl },
};
const toolUseBlock = {
  type: 'object',
  required: ['type', 'id', 'name', 'input'],
  additionalProperties: false,
  properties: { type: { const: 'tool_use' }, id: { type: 'string', minLength: 1 }, name: { type: 'string', minLength: 1 }, input: { type: 'object' }, cache_control: cacheControl },
};
const toolResultBlock = {
  type: 'object',
  required: ['type', 'tool_use_id'],
  additionalProperties: false,
  properties: {
    type: { const: 'tool_result' },
    tool_use_id: { type: 'string', minLength: 1 },
    content: { anyOf: [{ type: 'string' }, { type: 'array', items: textBlock }], 'x-expect': 'a string or an array of text blocks' },
    is_error: { type: 'boolean' },
    cache_control: cacheControl,
  },
};
// Earlier turns' thinking, as clients send it back: accepted and left out of the prompt (chat
// templates drop earlier reasoning too, e.g. Qwen3's).
const thinkingBlock = {
  type: 'object',
  required: ['type'],
  additionalProperties: false,
  properties: { type: { enum: ['thinking', 'redacted_thinking'] }, thinking: { type: 'string' }, signature: { type: 'string' }, data: { type: 'string' }, cache_control: cacheControl },
};
const block = { anyOf: [textBlock, toolUseBlock, toolResultBlock, thinkingBlock], 'x-expect': 'a text, tool_use, tool_result or thinking block' };
const messageParam = {
  type: 'object',
  required: ['role', 'content'],
  additionalProperties: false,
  properties: {
    role: { enum: ['user', 'assistant'] },
    content: { anyOf: [{ type: 'string' }, { type: 'array', items: block }], 'x-expect': 'a string or an array of content blocks' },
  },
};
const tool = {
  type: 'object',
  required: ['name', 'input_schema'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', pattern: '^[a-zA-Z0-9_-]{1,64}$', 'x-expect': 'a name of 1 to 64 letters, digits, _ or -' },
    description: { type: 'string' },
    input_schema: { type: 'object' },
    type: { enum: ['custom'] },
    cache_control: cacheControl,
  },
};
const toolChoice = {
  type: 'object',
  required: ['type'],
  additionalProperties: false,
  properties: {
    type: { enum: ['auto', 'any', 'tool', 'none'] },
    name: { type: 'string' },
    disable_parallel_tool_use: { type: 'boolean' },
  },
};
const common = {
  model: { type: 'string', minLength: 1 },
  messages: { type: 'array', minItems: 1, items: messageParam },
  system: { anyOf: [{ type: 'string' }, { type: 'array', items: textBlock }], 'x-expect': 'a string or an array of text blocks' },
  tool_choice: toolChoice,
  tools: { type: 'array', maxItems: 128, items: tool },
  thinking: {
    anyOf: [
      { type: 'object', required: ['type', 'budget_tokens'], additionalProperties: false, properties: { type: { const: 'enabled' }, budget_tokens: { type: 'integer', minimum: 1 } } },
      { type: 'object', required: ['type'], additionalProperties: false, properties: { type: { const: 'disabled' } } },
    ],
    'x-expect': "{type: 'enabled', budget_tokens} or {type: 'disabled'}",
  },
};

const messagesSchema: Schema = {
  type: 'object',
  required: ['model', 'messages', 'max_tokens'],
  additionalProperties: false,
  'x-unsupported': UNSUPPORTED,
  properties: {
    ...common,
    max_tokens: { type: 'integer', minimum: 1 },
    metadata: { type: 'object', additionalProperties: false, properties: { user_id: nullable({ type: 'string' }) } },
    stop_sequences: { type: 'array', maxItems: 4, items: { type: 'string', minLength: 1 } },
    stream: { type: 'boolean' },
    temperature: { type: 'number', minimum: 0, maximum: 1 },
    top_p: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    top_k: { type: 'integer', minimum: 0 },
  },
};
const countSchema: Schema = { type: 'object', required: ['model', 'messages'], additionalProperties: false, 'x-unsupported': UNSUPPORTED, properties: common };

const checkMessages = compileValidator<MessagesRequest>(messagesSchema);
const checkCount = compileValidator<CountTokensRequest>(countSchema);

export const parseMessagesRequest = (body: unknown): MessagesRequest => checkMessages(body);
export const parseCountTokensRequest = (body: unknown): CountTokensRequest => checkCount(body);

const textOf = (content: string | TextBlock[] | undefined): string =>
  typeof content === 'string' ? content : (content ?? []).map((b) => b.text).join('');

/** The chat completion request a Messages request is served as (validated again by the chat rules). */
export function toChatRequest(req: CountTokensRequest & Partial<MessagesRequest>): ChatCompletionRequest {
  const messages: ChatMessage[] = [];
  const system = textOf(req.system);
  if (system) messages.push({ role: 'system', content: system });
  req.messages.forEach((m, i) => {
    if (typeof m.content === 'string') {
      messages.push({ role: m.role, content: m.content });
      return;
    }
    const texts: string[] = [];
    const calls: NonNullable<ChatMessage['tool_calls']> = [];
    m.content.forEach((b, j) => {
      if (b.type === 'text') texts.push(b.text);
      else if (b.type === 'thinking' || b.type === 'redacted_thinking') return;
      else if (b.type === 'tool_use') {
        if (m.role !== 'assistant') throw errors.invalid("tool_use blocks belong in 'assistant' messages.", `messages[${i}].content[${j}]`);
        calls.push({ id: b.id, type: 'function', function: { name: b.name, arguments: JSON.stringify(b.input) } });
      } else {
        if (m.role !== 'user') throw errors.invalid("tool_result blocks belong in 'user' messages.", `messages[${i}].content[${j}]`);
        // Results answer the previous turn's calls: they come before the user's own text.
        const text = textOf(b.content);
        messages.push({ role: 'tool', tool_call_id: b.tool_use_id, content: b.is_error ? `Error: ${text}` : text });
      }
    });
    if (m.role === 'assistant') messages.push({ role: 'assistant', content: texts.join(''), ...(calls.length ? { tool_calls: calls } : {}) });
    else if (texts.length || !m.content.length) messages.push({ role: 'user', content: texts.join('') });
  });
  const tools: ToolDefinition[] | undefined = req.tools?.length
    ? req.tools.map((t) => ({ type: 'function', function: { name: t.name, ...(t.description !== undefined ? { description: t.description } : {}), parameters: t.input_schema } }))
    : undefined;
  const choice = req.tool_choice;
  if (choice?.type === 'tool' && !choice.name) throw errors.invalid("tool_choice of type 'tool' needs a 'name'.", 'tool_choice.name');
  let toolChoice: ToolChoice | undefined;
  if (choice && tools) {
    toolChoice = choice.type === 'auto' ? 'auto' : choice.type === 'any' ? 'required' : choice.type === 'none' ? 'none' : { type: 'function', function: { name: choice.name } };
  } else if (choice && choice.type !== 'auto' && choice.type !== 'none') {
    throw errors.invalid("'tool_choice' needs 'tools'.", 'tool_choice');
  }
  const parallel = choice && 'disable_parallel_tool_use' in choice && choice.disable_parallel_tool_use !== undefined && tools ? !choice.disable_parallel_tool_use : undefined;
  return {
    model: req.model,
    messages,
    ...(req.max_tokens !== undefined ? { max_tokens: req.max_tokens } : {}),
    ...(req.metadata?.user_id ? { user: req.metadata.user_id } : {}),
    ...(req.stop_sequences?.length ? { stop: req.stop_sequences } : {}),
    ...(req.stream ? { stream: true, stream_options: { include_usage: true } } : {}),
    ...(req.temperature !== undefined ? { temperature: req.temperature } : {}),
    ...(tools ? { tools } : {}),
    ...(toolChoice ? { tool_choice: toolChoice } : {}),
    ...(parallel !== undefined ? { parallel_tool_calls: parallel } : {}),
    ...(req.top_p !== undefined ? { top_p: req.top_p } : {}),
    ...(req.top_k !== undefined ? { top_k: req.top_k } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

export type StopReason = 'end_turn' | 'max_tokens' | 'stop_sequence' | 'tool_use';

export interface AnthropicUsage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number | null;
  cache_read_input_tokens: number | null;
}

export interface Message {
  id: string;
  type: 'message';
  role: 'assistant';
  content: (ThinkingBlock | TextBlock | ToolUseBlock)[];
  model: string;
  stop_reason: StopReason | null;
  stop_sequence: string | null;
  usage: AnthropicUsage;
}

export const toUsage = (u: Pick<Usage, 'prompt_tokens' | 'completion_tokens'>): AnthropicUsage => ({
  input_tokens: u.prompt_tokens,
  output_tokens: u.completion_tokens,
  cache_creation_input_tokens: null,
  cache_read_input_tokens: null,
});

/**
 * Chat's finish reason as Anthropic's: a stop string that ended the text (the chat choice's
 * `stop_reason`) is `stop_sequence`; the model's end token is `end_turn`.
 */
export function toStopReason(finish: string | null, stopSequence?: string | null): StopReason | null {
  if (finish === null) return null;
  if (finish === 'stop' && stopSequence) return 'stop_sequence';
  return finish === 'length' ? 'max_tokens' : finish === 'tool_calls' ? 'tool_use' : 'end_turn';
}

/** Call ids are the chat layer's; Anthropic's clients only echo them back in tool_result. */
export function toInput(args: string): Record<string, unknown> {
  try {
    const v = JSON.parse(args) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : { value: v };
  } catch {
    return {};
  }
}

/** `thinking`: whether the reply's reasoning (a model with a reasoning format) is shown as a thinking block. */
export function toMessage(id: string, model: string, c: ChatCompletion, thinking = true): Message {
  const choice = c.choices[0]!;
  const content: Message['content'] = [];
  if (thinking && choice.message.reasoning_content) content.push({ type: 'thinking', thinking: choice.message.reasoning_content, signature: '' });
  if (choice.message.content) content.push({ type: 'text', text: choice.message.content });
  for (const call of choice.message.tool_calls ?? []) content.push({ type: 'tool_use', id: call.id, name: call.function.name, input: toInput(call.function.arguments) });
  return { id, type: 'message', role: 'assistant', content, model, stop_reason: toStopReason(choice.finish_reason, choice.stop_reason), stop_sequence: choice.stop_reason ?? null, usage: toUsage(c.usage) };
}

/** Anthropic's error types by status (their envelope has no code or param). */
export function toAnthropicError(err: ApiError): { type: 'error'; error: { type: string; message: string } } {
  const byStatus: Record<number, string> = {
    400: 'invalid_request_error',
    401: 'authentication_error',
    403: 'permission_error',
    404: 'not_found_error',
    413: 'request_too_large',
    429: 'rate_limit_error',
    503: 'overloaded_error',
    529: 'overloaded_error',
  };
  const type = byStatus[err.status] ?? (err.status >= 500 ? 'api_error' : 'invalid_request_error');
  return { type: 'error', error: { type, message: err.message } };
}
