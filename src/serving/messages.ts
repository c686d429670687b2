import type { Engine, Tokenizers } from '../engine/types.js';
import { parseChatCompletionRequest, toChatPrompt, type ChatCompletionChunk } from '../protocol/chat.js';
import { errors } from '../protocol/errors.js';
import {
  parseCountTokensRequest,
  parseMessagesRequest,
  toChatRequest,
  toMessage,
  toStopReason,
  toUsage,
  type Message,
  type StopReason,
} from '../protocol/messages.js';
import { wireId } from '../protocol/shared.js';
import type { ChatServing } from './chat.js';
import { resolveModel, type RequestContext } from './context.js';

/** Anthropic's stream events (each sent as `event: <type>`). */
export type MessageStreamEvent =
  | { type: 'message_start'; message: Message }
  | { type: 'ping' }
  | {
      type: 'content_block_start';
      index: number;
      content_block: { type: 'text'; text: '' } | { type: 'thinking'; thinking: ''; signature: '' } | { type: 'tool_use'; id: string; name: string; input: Record<string, never> };
    }
  | {
      type: 'content_block_delta';
      index: number;
      delta: { type: 'text_delta'; text: string } | { type: 'thinking_delta'; thinking: string } | { type: 'input_json_delta'; partial_json: string };
    }
  | { type: 'content_block_stop'; index: number }
  | { type: 'message_delta'; delta: { stop_reason: StopReason | null; stop_sequence: string | null }; usage: { input_tokens: number; output_tokens: number } }
  | { type: 'message_stop' };

export type MessagesResult =
  | { kind: 'json'; requestId: string; body: Message }
  | { kind: 'stream'; requestId: string; events: AsyncIterable<MessageStreamEvent> };

/**
 * POST /v1/messages as a layer over chat completions (like the Responses API): the request is
 * translated to a chat request and served by ChatServing, so validation, key scope, tool-call
 * parsing and the constrained decoding of forced calls are chat's own; the answer and its
 * chunks are translated back into Anthropic's Message and stream events.
 */
export class MessagesServing {
  constructor(
    private readonly engine: Engine,
    private readonly chat: ChatServing,
    private readonly tokenizers: Tokenizers | null,
  ) {}

  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<MessagesResult> {
    const req = parseMessagesRequest(body);
    const result = await this.chat.create(toChatRequest(req), ctx, onQueued);
    // Thinking blocks unless the client turned thinking off (the model reasons either way).
    const thinking = req.thinking?.type !== 'disabled';
    if (result.kind === 'json') return { kind: 'json', requestId: result.requestId, body: toMessage(wireId('msg', result.requestId), req.model, result.body, thinking) };
    const { requestId, promptTokens, chunks } = result.stream;
    return { kind: 'stream', requestId, events: toEvents(wireId('msg', requestId), req.model, promptTokens ?? 0, chunks, thinking) };
  }

  /** The prompt's length as a Messages request with these fields would have it: the chat template with the tools, tokenized. */
  async countTokens(body: unknown, ctx: RequestContext): Promise<{ input_tokens: number }> {
    const req = parseCountTokensRequest(body);
    const chat = parseChatCompletionRequest(toChatRequest(req));
    const model = await resolveModel(this.engine, req.model, ctx);
    if (model.task !== 'chat') throw errors.invalid(`The model '${req.model}' is an ${model.task} model.`, 'model', 'model_not_supported');
    if (!this.tokenizers) throw errors.unavailable('This server has no tokenizers.');
    const prompt = toChatPrompt(chat);
    const t = await this.tokenizers.tokenize({
      model: model.name,
      input: { messages: prompt.messages, ...(prompt.tools ? { tools: prompt.tools } : {}), addGenerationPrompt: true, addSpecialTokens: false },
    });
    return { input_tokens: t.tokens.length };
  }
}

/** Chat chunks (one choice, usage last) as Anthropic's event sequence. */
async function* toEvents(id: string, model: string, inputTokens: number, chunks: AsyncIterable<ChatCompletionChunk>, thinking: boolean): AsyncGenerator<MessageStreamEvent> {
  const usage = { input_tokens: inputTokens, output_tokens: 0 };
  yield {
    type: 'message_start',
    message: { id, type: 'message', role: 'assistant', content: [], model, stop_reason: null, stop_sequence: null, usage: { ...toUsage({ prompt_tokens: inputTokens, completion_tokens: 0 }) } },
  };
  yield { type: 'ping' };
  let index = -1;
  let open: 'text' | 'thinking' | 'tool_use' | null = null;
  let stop: StopReason | null = null;
  let stopSequence: string | null = null;
  const close = function* (): Generator<MessageStreamEvent> {
    if (open) yield { type: 'content_block_stop', index };
    open = null;
  };
  for await (const chunk of chunks) {
    if (chunk.usage) {
      usage.input_tokens = chunk.usage.prompt_tokens;
      usage.output_tokens = chunk.usage.completion_tokens;
    }
    const choice = chunk.choices[0];
    if (!choice) continue;
    const { content, reasoning_content: reasoning, tool_calls: calls } = choice.delta;
    if (reasoning && thinking) {
      if (open !== 'thinking') {
        yield* close();
        open = 'thinking';
        yield { type: 'content_block_start', index: ++index, content_block: { type: 'thinking', thinking: '', signature: '' } };
      }
      yield { type: 'content_block_delta', index, delta: { type: 'thinking_delta', thinking: reasoning } };
    }
    if (content) {
      if (open !== 'text') {
        yield* close();
        open = 'text';
        yield { type: 'content_block_start', index: ++index, content_block: { type: 'text', text: '' } };
      }
      yield { type: 'content_block_delta', index, delta: { type: 'text_delta', text: content } };
    }
    for (const call of calls ?? []) {
      // The chat layer names a call in one piece and sends its arguments in the next.
      if (call.id) {
        yield* close();
        open = 'tool_use';
        yield { type: 'content_block_start', index: ++index, content_block: { type: 'tool_use', id: call.id, name: call.function.name ?? '', input: {} } };
      }
      if (call.function.arguments) yield { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: call.function.arguments } };
    }
    if (choice.finish_reason) {
      stop = toStopReason(choice.finish_reason, choice.stop_reason);
      stopSequence = choice.stop_reason ?? null;
    }
  }
  yield* close();
  yield { type: 'message_delta', delta: { stop_reason: stop, stop_sequence: stopSequence }, usage };
  yield { type: 'message_stop' };
}
