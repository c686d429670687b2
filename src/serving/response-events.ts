import type { EngineEvent } from '../engine/types.js';
import {
  itemId,
  toResponseUsage,
  type FunctionCallItem,
  type OutputItem,
  type ResponseError,
  type ResponseObject,
  type ResponseStatus,
  type ResponseStreamEvent,
  type ResponseUsage,
} from '../protocol/responses.js';
import { ToolCallParser, type ToolCallFormat, type ToolStreamEvent } from '../protocol/tools.js';

/** What a response object holds that its generation decides. */
export interface ResponseOutcome {
  status: ResponseStatus;
  output: OutputItem[];
  usage: ResponseUsage | null;
  error: ResponseError | null;
  incomplete_details: { reason: 'max_output_tokens' } | null;
  completed_at: number | null;
}

/**
 * A failed response's `error.code`: OpenAI's schema allows a fixed set (server_error,
 * rate_limit_exceeded, invalid_prompt and image and policy codes), so our own codes
 * (internal_error, context_length_exceeded, timeout, ...) are told as the nearest of them; the
 * message keeps the detail.
 */
export function responseErrorCode(status: number, code: string | null | undefined): ResponseError['code'] {
  if (status === 429 || code === 'rate_limit_exceeded') return 'rate_limit_exceeded';
  if (status >= 400 && status < 500) return 'invalid_prompt';
  return 'server_error';
}

const ERROR_CODES = new Set<string>(['server_error', 'rate_limit_exceeded', 'invalid_prompt']);

/**
 * The response object of `base` and `outcome`: no `usage` key until there is usage. An outcome
 * stored before the wire shape followed OpenAI's schema (an error code of ours, usage without
 * `cache_write_tokens`) is shown in today's shape.
 */
export function responseObject(base: Omit<ResponseObject, keyof ResponseOutcome>, outcome: ResponseOutcome): ResponseObject {
  const { usage, error, ...rest } = outcome;
  return {
    ...base,
    ...rest,
    error: error && { code: ERROR_CODES.has(error.code) ? error.code : 'server_error', message: error.message },
    ...(usage ? { usage: { ...usage, input_tokens_details: { cached_tokens: usage.input_tokens_details?.cached_tokens ?? 0, cache_write_tokens: usage.input_tokens_details?.cache_write_tokens ?? 0 } } } : {}),
  };
}

type MessageItem = Extract<OutputItem, { type: 'message' }>;
const clone = <T>(v: T): T => structuredClone(v);

/**
 * Turns a generation's engine events into the Responses API's stream events and output items.
 * A pure function of the events (item and call ids are derived from the response's id, times
 * from the events), so any process that reads the stored events (ai.request_events) produces the
 * same stream, numbered the same: that is what makes `starting_after` resume a stream anywhere.
 *
 * `mode: 'stream'`: a worker lost after output went out ends the stream with an `error` event
 * (text on the wire cannot be taken back). `mode: 'render'`: the output of the run that
 * finished is what counts, so a restart starts the output over.
 */
export class ResponseEventBuilder {
  private seq = 0;
  output: OutputItem[] = [];
  status: ResponseStatus;
  usage: ResponseUsage | null = null;
  error: ResponseError | null = null;
  incomplete: { reason: 'max_output_tokens' } | null = null;
  completedAt: number | null = null;
  /** No more events will come from this builder (the response ended, or the stream broke). */
  ended = false;
  private parser: ToolCallParser | null;
  private openMessage: number | null = null;
  private finish: 'stop' | 'length' | null = null;
  private lastAt: number;

  constructor(
    private readonly base: Omit<ResponseObject, keyof ResponseOutcome>,
    private readonly tools: ToolCallFormat | null,
    private readonly mode: 'stream' | 'render',
  ) {
    this.status = base.background ? 'queued' : 'in_progress';
    this.parser = tools ? new ToolCallParser(tools) : null;
    this.lastAt = base.created_at;
  }

  private get hex(): string {
    return this.base.id.slice('resp_'.length);
  }

  outcome(): ResponseOutcome {
    return { status: this.status, output: this.output, usage: this.usage, error: this.error, incomplete_details: this.incomplete, completed_at: this.completedAt };
  }

  snapshot(): ResponseObject {
    return clone(responseObject(this.base, this.outcome()));
  }

  private event(type: string, fields: Record<string, unknown>): ResponseStreamEvent {
    return { type, sequence_number: this.seq++, ...fields };
  }

  /** The first two events of every stream. */
  begin(): ResponseStreamEvent[] {
    const created = this.event('response.created', { response: this.snapshot() });
    this.status = 'in_progress';
    return [created, this.event('response.in_progress', { response: this.snapshot() })];
  }

  feed(e: EngineEvent): ResponseStreamEvent[] {
    if (this.ended) return [];
    switch (e.type) {
      case 'delta': {
        this.lastAt = Math.max(this.lastAt, Math.floor(e.at / 1000));
        const out: ResponseStreamEvent[] = [];
        for (const c of e.choices) {
          if (c.index !== 0) continue;
          const pieces: ToolStreamEvent[] = this.parser ? (c.text ? this.parser.push(c.text) : []) : c.text ? [{ type: 'text', text: c.text }] : [];
          if (c.finishReason) {
            this.finish = c.finishReason;
            if (this.parser) pieces.push(...this.parser.finish());
          }
          for (const p of pieces) out.push(...(p.type === 'text' ? this.text(p.text) : this.call(p.call.function.name, p.call.function.arguments)));
        }
        return out;
      }
      case 'restart':
        if (this.mode === 'stream' && this.output.length) {
          this.ended = true;
          return [this.event('error', { code: 'worker_lost', message: 'The worker generating this response stopped part-way and it was restarted elsewhere; its earlier output was already sent. Retrieve the response for its final output.', param: null })];
        }
        this.output = [];
        this.openMessage = null;
        this.finish = null;
        this.parser = this.tools ? new ToolCallParser(this.tools) : null;
        return [];
      case 'done': {
        const out: ResponseStreamEvent[] = [];
        if (this.parser && this.finish === null) for (const p of this.parser.finish()) out.push(...(p.type === 'text' ? this.text(p.text) : this.call(p.call.function.name, p.call.function.arguments)));
        const finish = e.choices.find((c) => c.index === 0)?.finishReason ?? this.finish ?? 'stop';
        // A reply with nothing in it is still a message (an empty one), as OpenAI's are.
        if (!this.output.length) out.push(...this.text(''));
        const incomplete = finish === 'length';
        out.push(...this.closeMessage(incomplete ? 'incomplete' : 'completed'));
        this.usage = toResponseUsage(e.usage);
        this.status = incomplete ? 'incomplete' : 'completed';
        this.incomplete = incomplete ? { reason: 'max_output_tokens' } : null;
        this.completedAt = this.lastAt;
        this.ended = true;
        out.push(this.event(incomplete ? 'response.incomplete' : 'response.completed', { response: this.snapshot() }));
        return out;
      }
      case 'error': {
        const out = this.closeMessage('incomplete');
        const cancelled = e.error.code === 'cancelled';
        this.status = cancelled ? 'cancelled' : 'failed';
        this.error = cancelled ? null : { code: responseErrorCode(e.status, e.error.code), message: e.error.message };
        this.ended = true;
        // OpenAI's stream event types have none for a cancellation: a cancelled response ends its
        // stream as one that did not complete, `response.failed`, its response saying `cancelled`.
        out.push(this.event('response.failed', { response: this.snapshot() }));
        return out;
      }
      default:
        return [];
    }
  }

  private text(text: string): ResponseStreamEvent[] {
    const out: ResponseStreamEvent[] = [];
    if (this.openMessage === null) {
      const index = this.output.length;
      const item: MessageItem = { id: itemId('msg', this.hex, 'o', index), type: 'message', role: 'assistant', status: 'in_progress', content: [] };
      this.output.push(item);
      this.openMessage = index;
      out.push(this.event('response.output_item.added', { output_index: index, item: clone(item) }));
      const part = { type: 'output_text' as const, text: '', annotations: [], logprobs: [] };
      item.content.push(part);
      out.push(this.event('response.content_part.added', { item_id: item.id, output_index: index, content_index: 0, part: clone(part) }));
    }
    if (!text) return out;
    const index = this.openMessage!;
    const item = this.output[index] as MessageItem;
    item.content[0]!.text += text;
    out.push(this.event('response.output_text.delta', { item_id: item.id, output_index: index, content_index: 0, delta: text, logprobs: [] }));
    return out;
  }

  private closeMessage(status: 'completed' | 'incomplete'): ResponseStreamEvent[] {
    if (this.openMessage === null) return [];
    const index = this.openMessage;
    const item = this.output[index] as MessageItem;
    this.openMessage = null;
    item.status = status;
    const part = item.content[0]!;
    return [
      this.event('response.output_text.done', { item_id: item.id, output_index: index, content_index: 0, text: part.text, logprobs: [] }),
      this.event('response.content_part.done', { item_id: item.id, output_index: index, content_index: 0, part: clone(part) }),
      this.event('response.output_item.done', { output_index: index, item: clone(item) }),
    ];
  }

  private call(name: string, args: string): ResponseStreamEvent[] {
    const out = this.closeMessage('completed');
    const index = this.output.length;
    const item: FunctionCallItem = { id: itemId('fc', this.hex, 'o', index), type: 'function_call', status: 'in_progress', call_id: `call_${this.hex}_${index}`, name, arguments: '' };
    this.output.push(item);
    out.push(this.event('response.output_item.added', { output_index: index, item: clone(item) }));
    out.push(this.event('response.function_call_arguments.delta', { item_id: item.id, output_index: index, delta: args }));
    item.arguments = args;
    item.status = 'completed';
    out.push(this.event('response.function_call_arguments.done', { item_id: item.id, output_index: index, name, arguments: args }));
    out.push(this.event('response.output_item.done', { output_index: index, item: clone(item) }));
    return out;
  }
}
