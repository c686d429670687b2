import { ApiError, errors } from './errors.js';
import type { ChatCompletionRequest, ChatMessage, ResponseFormat, ToolChoice, ToolDefinition } from './chat.js';
import type { ToolCall } from './tools.js';
import { itemId, type InputContent, type Item, type ResponseCreateRequest } from './responses.js';

/**
 * Responses → chat: input items (with ids) from a request's `input`, items as the chat messages a
 * chat client would have sent, the request as a chat completion request, and chat-level errors
 * renamed to the Responses API's parameters.
 */
const str = (v: unknown): v is string => typeof v === 'string';

/** A text content part list (or string) as plain text; other kinds of content are a 400 naming them. */
function contentText(content: unknown, param: string): { text: string; parts: InputContent[]; assistant: boolean } {
  if (str(content)) return { text: content, parts: [{ type: 'input_text', text: content }], assistant: false };
  if (!Array.isArray(content)) throw errors.invalid(`Invalid type for '${param}': expected a string or a list of content parts.`, param);
  const parts: InputContent[] = [];
  let assistant = false;
  content.forEach((p, j) => {
    const type = (p as { type?: unknown } | null)?.type;
    const at = `${param}[${j}]`;
    if (type === 'input_text' || type === 'output_text' || type === 'text') {
      const text = (p as { text?: unknown }).text;
      if (!str(text)) throw errors.invalid(`Missing required parameter: '${at}.text'.`, `${at}.text`);
      if (type === 'output_text') {
        assistant = true;
        parts.push({ type: 'output_text', text, annotations: [] });
      } else parts.push({ type: 'input_text', text });
    } else if (type === 'refusal') {
      const refusal = (p as { refusal?: unknown }).refusal;
      if (!str(refusal)) throw errors.invalid(`Missing required parameter: '${at}.refusal'.`, `${at}.refusal`);
      parts.push({ type: 'refusal', refusal });
    } else if (str(type)) {
      throw errors.invalid(`Content parts of type '${type}' are not supported by this server yet.`, `${at}.type`, 'unsupported_parameter');
    } else throw errors.invalid(`Missing required parameter: '${at}.type'.`, `${at}.type`);
  });
  const text = parts.map((p) => (p.type === 'refusal' ? p.refusal : p.text)).join('');
  return { text, parts, assistant };
}

/**
 * The request's input as items with ids (what GET .../input_items lists). `resolve` looks an
 * `item_reference` up among the stored responses the caller may see.
 */
export async function toInputItems(req: ResponseCreateRequest, hex: string, resolve: (id: string) => Promise<Item | null>): Promise<Item[]> {
  const input = req.input ?? [];
  if (str(input)) return [{ id: itemId('msg', hex, 'i', 0), type: 'message', role: 'user', status: 'completed', content: [{ type: 'input_text', text: input }] }];
  const out: Item[] = [];
  for (let i = 0; i < input.length; i++) {
    const raw = input[i] as Record<string, unknown> | null;
    const at = `input[${i}]`;
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw errors.invalid(`Invalid type for '${at}': expected an input item (an object).`, at);
    const given = str(raw.id) && raw.id.length <= 128 ? raw.id : null;
    const type = raw.type ?? (raw.role !== undefined ? 'message' : undefined);
    switch (type) {
      case 'message': {
        const role = raw.role;
        if (role !== 'user' && role !== 'system' && role !== 'developer' && role !== 'assistant') {
          throw errors.invalid(`Invalid value for '${at}.role': must be one of "user", "system", "developer", "assistant".`, `${at}.role`);
        }
        const { parts } = contentText(raw.content, `${at}.content`);
        const content = role === 'assistant' ? parts.map((p): InputContent => (p.type === 'input_text' ? { type: 'output_text', text: p.text, annotations: [] } : p)) : parts;
        out.push({ id: given ?? itemId('msg', hex, 'i', i), type: 'message', role, status: 'completed', content });
        break;
      }
      case 'function_call': {
        for (const k of ['call_id', 'name', 'arguments'] as const) {
          if (!str(raw[k])) throw errors.invalid(`Missing required parameter: '${at}.${k}'.`, `${at}.${k}`);
        }
        out.push({ id: given ?? itemId('fc', hex, 'i', i), type: 'function_call', status: 'completed', call_id: raw.call_id as string, name: raw.name as string, arguments: raw.arguments as string });
        break;
      }
      case 'function_call_output': {
        if (!str(raw.call_id)) throw errors.invalid(`Missing required parameter: '${at}.call_id'.`, `${at}.call_id`);
        const output = str(raw.output) ? raw.output : contentText(raw.output, `${at}.output`).text;
        out.push({ id: given ?? itemId('fco', hex, 'i', i), type: 'function_call_output', status: 'completed', call_id: raw.call_id, output });
        break;
      }
      case 'item_reference': {
        const id = raw.id;
        if (!str(id)) throw errors.invalid(`Missing required parameter: '${at}.id'.`, `${at}.id`);
        const item = await resolve(id);
        if (!item) throw new ApiError(404, `Item with id '${id}' not found.`, 'invalid_request_error', 'item_not_found', `${at}.id`);
        out.push(item);
        break;
      }
      default:
        if (str(type)) throw errors.invalid(`Input items of type '${type}' are not supported by this server.`, `${at}.type`, 'unsupported_parameter');
        throw errors.invalid(`Missing required parameter: '${at}.type'.`, `${at}.type`);
    }
  }
  return out;
}

/**
 * Items as chat messages, as a chat client would have sent them: an assistant's text and the
 * calls that follow it are one assistant message; each call's output is a `tool` message.
 */
export function itemsToMessages(items: Item[]): ChatMessage[] {
  const messages: ChatMessage[] = [];
  for (const item of items) {
    if (item.type === 'message') {
      const text = item.content.map((p) => (p.type === 'refusal' ? p.refusal : p.text)).join('');
      messages.push({ role: item.role, content: text });
    } else if (item.type === 'function_call') {
      const call: ToolCall = { id: item.call_id, type: 'function', function: { name: item.name, arguments: item.arguments } };
      const last = messages.at(-1);
      if (last?.role === 'assistant') (last.tool_calls ??= []).push(call);
      else messages.push({ role: 'assistant', content: null, tool_calls: [call] });
    } else messages.push({ role: 'tool', tool_call_id: item.call_id, content: item.output });
  }
  return messages;
}

/** Chat error params → this API's names. */
function renameParam(param: string | null): string | null {
  if (!param) return param;
  return param
    .replace(/^response_format(\.json_schema)?/, 'text.format')
    .replace(/^tools\[(\d+)\]\.function/, 'tools[$1]')
    .replace(/^tool_choice\.function\.name/, 'tool_choice.name')
    .replace(/^max_completion_tokens/, 'max_output_tokens')
    .replace(/^messages(\[\d+\])?/, 'input');
}

/** Runs a chat-level check, reporting its errors under this API's parameter names. */
export function asResponsesError<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof ApiError && err.param) {
      const param = renameParam(err.param);
      throw new ApiError(err.status, err.message.replaceAll(`'${err.param}'`, `'${param}'`), err.type, err.code, param);
    }
    throw err;
  }
}

/** The chat request this response generates from: `messages` is the whole conversation. */
export function toChatRequest(req: ResponseCreateRequest, messages: ChatMessage[]): ChatCompletionRequest {
  const tools: ToolDefinition[] | undefined = req.tools?.length
    ? req.tools.map((t) => ({
        type: 'function',
        function: {
          name: t.name,
          ...(t.description != null ? { description: t.description } : {}),
          ...(t.parameters != null ? { parameters: t.parameters } : {}),
          ...(t.strict != null ? { strict: t.strict } : {}),
        },
      }))
    : undefined;
  const choice = req.tool_choice;
  const toolChoice: ToolChoice | undefined = choice == null ? undefined : typeof choice === 'string' ? choice : { type: 'function', function: { name: choice.name } };
  const f = req.text?.format;
  const responseFormat: ResponseFormat | undefined =
    f == null || f.type === 'text'
      ? undefined
      : f.type === 'json_object'
        ? { type: 'json_object' }
        : { type: 'json_schema', json_schema: { name: f.name, ...(f.schema ? { schema: f.schema } : {}), ...(f.description != null ? { description: f.description } : {}), ...(f.strict != null ? { strict: f.strict } : {}) } };
  return {
    model: req.model,
    messages: [...(req.instructions != null ? [{ role: 'system' as const, content: req.instructions }] : []), ...messages],
    ...(req.max_output_tokens != null ? { max_completion_tokens: req.max_output_tokens } : {}),
    ...(req.temperature != null ? { temperature: req.temperature } : {}),
    ...(req.top_p != null ? { top_p: req.top_p } : {}),
    ...(tools ? { tools } : {}),
    ...(toolChoice && tools ? { tool_choice: toolChoice } : {}),
    ...(req.parallel_tool_calls != null && tools ? { parallel_tool_calls: req.parallel_tool_calls } : {}),
    ...(responseFormat ? { response_format: responseFormat } : {}),
  };
}
