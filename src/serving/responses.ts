import { randomUUID } from 'node:crypto';
import type { Engine, EngineEvent } from '../engine/types.js';
import { parseChatCompletionRequest, toChatPrompt, toSamplingParams, type ChatMessage } from '../protocol/chat.js';
import { ApiError, errors } from '../protocol/errors.js';
import { checkGeneration, maxBatchTokens, promptTexts } from '../protocol/limits.js';
import { asResponsesError, itemsToMessages, toChatRequest, toInputItems } from '../protocol/responses-to-chat.js';
import {
  parseItemId,
  parseResponseCreateRequest,
  parseResponseId,
  requestFields,
  responseHex,
  responseWireId,
  type InputItemList,
  type Item,
  type ResponseObject,
  type ResponseStreamEvent,
} from '../protocol/responses.js';
import { HERMES_TOOL_FORMAT, type ToolCallFormat } from '../protocol/tools.js';
import { beforeDeadline, requestTimeoutMs, resolveModel, type RequestContext } from './context.js';
import { noObserver, type Observer } from './observer.js';
import { ResponseEventBuilder, responseObject, type ResponseOutcome } from './response-events.js';
import type { ResponseStore, StoredResponse } from './response-store.js';

export type ResponseResult =
  | { kind: 'json'; requestId: string; body: ResponseObject }
  /** `background`: the generation goes on when the client leaves. */
  | { kind: 'stream'; requestId: string; background: boolean; events: AsyncIterable<ResponseStreamEvent> };

/** How often a resumed stream looks for new events of a request another process is waiting on. */
const RESUME_POLL_MS = 100;

const notFound = (wire: string) => new ApiError(404, `Response with id '${wire}' not found.`, 'invalid_request_error', 'response_not_found', 'response_id');
const terminal = (s: string | null) => s === 'completed' || s === 'failed' || s === 'cancelled';

/** The error event a request that ended without one gets (as the EventHub synthesizes it). */
function endedEvent(status: 'failed' | 'cancelled'): EngineEvent {
  const cancelled = status === 'cancelled';
  return {
    type: 'error',
    status: cancelled ? 499 : 500,
    error: { message: cancelled ? 'The request was cancelled.' : 'The request failed.', type: cancelled ? 'invalid_request_error' : 'server_error', param: null, code: cancelled ? 'cancelled' : 'internal_error' },
  };
}

/**
 * The Responses API over the chat machinery: a response is a chat generation (same queue,
 * workers, events) whose input items, request fields and outcome are kept in a ResponseStore.
 * Its stream events and output are derived from the generation's events by one pure builder,
 * so a stream resumed on another process, a GET and the live stream all agree.
 */
export class ResponsesServing {
  constructor(
    private readonly engine: Engine,
    private readonly store: ResponseStore,
    private readonly observer: Observer = noObserver,
  ) {}

  private async toolFormat(model: string): Promise<ToolCallFormat> {
    return (await this.engine.getModel(model))?.toolCallFormat ?? HERMES_TOOL_FORMAT;
  }

  private base(s: Pick<StoredResponse, 'id' | 'model' | 'background' | 'request' | 'createdAt' | 'previousId'>, store = true): Omit<ResponseObject, keyof ResponseOutcome> {
    const { user, ...request } = s.request;
    return {
      id: responseWireId(s.id),
      object: 'response',
      created_at: s.createdAt,
      background: s.background,
      ...request,
      ...(user !== null ? { user } : {}),
      max_tool_calls: null,
      model: s.model,
      previous_response_id: s.previousId ? responseWireId(s.previousId) : null,
      reasoning: { effort: null, summary: null },
      service_tier: 'default',
      store,
    };
  }

  private builder(s: StoredResponse, format: ToolCallFormat, mode: 'stream' | 'render'): ResponseEventBuilder {
    const tools = s.request.tools.length && s.request.tool_choice !== 'none' ? format : null;
    return new ResponseEventBuilder(this.base(s), tools, mode);
  }

  /** What a request that ended says when its events are gone (pruned): its recorded outcome. */
  private fallbackEvents(s: StoredResponse): EngineEvent[] {
    if (s.requestStatus === 'completed' && s.requestUsage) {
      return [
        { type: 'delta', choices: [{ index: 0, text: s.requestText ?? '', finishReason: s.requestFinish ?? 'stop' }], at: s.createdAt * 1000 },
        { type: 'done', choices: [{ index: 0, finishReason: s.requestFinish ?? 'stop' }], usage: s.requestUsage },
      ];
    }
    if (s.requestStatus === 'failed' && s.requestError) return [{ type: 'error', status: 500, error: s.requestError }];
    return terminal(s.requestStatus) ? [endedEvent(s.requestStatus as 'failed' | 'cancelled')] : [];
  }

  /** The response object as it stands now; one that has ended is recorded as such. */
  private async render(s: StoredResponse): Promise<ResponseObject> {
    if (s.final) return responseObject(this.base(s), s.final);
    const b = this.builder(s, await this.toolFormat(s.model), 'render');
    b.begin();
    const { events, status } = await this.store.events(s.id, 0);
    for (const e of events) b.feed(e.data);
    if (!b.ended && terminal(status)) {
      // Ended without a final event (cancelled, reaped), or its events were pruned.
      for (const e of this.fallbackEvents({ ...s, requestStatus: status! })) b.feed(e);
    }
    if (b.ended) await this.store.finalize(s.id, b.outcome());
    return b.snapshot();
  }

  private async visible(wire: string, ctx: RequestContext): Promise<StoredResponse> {
    const id = parseResponseId(wire);
    const s = id ? await this.store.find(id, ctx.keyId) : null;
    if (!s) throw notFound(wire);
    return s;
  }

  async retrieve(wire: string, ctx: RequestContext): Promise<ResponseObject> {
    return this.render(await this.visible(wire, ctx));
  }

  async delete(wire: string, ctx: RequestContext): Promise<{ id: string; object: 'response'; deleted: true }> {
    const id = parseResponseId(wire);
    if (!id || !(await this.store.delete(id, ctx.keyId))) throw notFound(wire);
    return { id: wire, object: 'response', deleted: true };
  }

  /** Only background responses can be cancelled (as OpenAI's); one that has ended is returned as it is. */
  async cancel(wire: string, ctx: RequestContext): Promise<ResponseObject> {
    const s = await this.visible(wire, ctx);
    if (!s.background) throw errors.invalid('Only responses created with background: true can be cancelled.', 'response_id', 'not_background');
    if (!s.final && !terminal(s.requestStatus)) await this.engine.cancel(s.id);
    return this.render((await this.store.find(s.id, ctx.keyId)) ?? s);
  }

  async inputItems(wire: string, ctx: RequestContext, query: { after?: string; limit?: number; order?: 'asc' | 'desc' }): Promise<InputItemList> {
    const s = await this.visible(wire, ctx);
    const limit = query.limit ?? 20;
    let items = query.order === 'asc' ? [...s.inputItems] : [...s.inputItems].reverse();
    if (query.after !== undefined) {
      const at = items.findIndex((i) => i.id === query.after);
      if (at < 0) throw errors.invalid(`No input item with id '${query.after}' in this response.`, 'after');
      items = items.slice(at + 1);
    }
    const data = items.slice(0, limit);
    return { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: items.length > limit };
  }

  /**
   * GET /v1/responses/{id}?stream=true: the stream from its stored events, after
   * `startingAfter` (a sequence number), continuing live until it ends. The events are read
   * from the database, not from this process's LISTEN fan-out: the request names the process
   * that created it as the one to notify, so a stream resumed elsewhere polls.
   */
  async stream(wire: string, ctx: RequestContext, startingAfter: number | null, signal?: AbortSignal): Promise<AsyncIterable<ResponseStreamEvent>> {
    const s = await this.visible(wire, ctx);
    if (!s.background) throw errors.invalid('Only responses created with background: true can be streamed again.', 'stream', 'not_background');
    const b = this.builder(s, await this.toolFormat(s.model), 'stream');
    const store = this.store;
    const fallback = (status: StoredResponse['requestStatus']) => this.fallbackEvents({ ...s, requestStatus: status });
    async function* events(): AsyncGenerator<ResponseStreamEvent> {
      const after = startingAfter ?? -1;
      const emit = function* (list: ResponseStreamEvent[]) {
        for (const e of list) if (e.sequence_number > after) yield e;
      };
      yield* emit(b.begin());
      let next = 0;
      let wait = RESUME_POLL_MS / 4;
      // `signal`: the reader left; a response that waits long in the queue must not be polled for nobody.
      while (!b.ended && !signal?.aborted) {
        const { events: rows, status } = await store.events(s.id, next);
        for (const r of rows) {
          if (r.seq !== next) break; // a gap: the missing event is still being written
          next++;
          yield* emit(b.feed(r.data));
          if (b.ended) break;
        }
        if (b.ended) break;
        if (!rows.length && terminal(status)) {
          for (const e of fallback(status!)) yield* emit(b.feed(e));
          break;
        }
        if (!rows.length) {
          await new Promise((r) => setTimeout(r, wait));
          wait = Math.min(RESUME_POLL_MS, wait * 2);
        } else wait = RESUME_POLL_MS / 4;
      }
    }
    return events();
  }

  /** POST /v1/responses. `onQueued` learns the request id at once (to cancel it if the client leaves). */
  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<ResponseResult> {
    const since = Date.now();
    const req = parseResponseCreateRequest(body);
    const model = await resolveModel(this.engine, req.model, ctx);
    const format = model.toolCallFormat ?? HERMES_TOOL_FORMAT;
    const id = randomUUID();
    const hex = responseHex(id);
    const store = req.store !== false;

    // The conversation so far: every earlier turn's input and output, oldest first.
    let previousId: string | null = null;
    const history: Item[] = [];
    if (req.previous_response_id) {
      previousId = parseResponseId(req.previous_response_id);
      const chain = previousId ? await this.store.chain(previousId, ctx.keyId) : [];
      if (!chain.length) {
        throw new ApiError(404, `Previous response with id '${req.previous_response_id}' not found.`, 'invalid_request_error', 'previous_response_not_found', 'previous_response_id');
      }
      for (const s of chain) {
        const r = await this.render(s);
        if (r.status === 'queued' || r.status === 'in_progress') {
          throw errors.invalid(`Previous response with id '${r.id}' is still ${r.status}; wait until it has ended.`, 'previous_response_id', 'previous_response_in_progress');
        }
        history.push(...s.inputItems, ...r.output);
      }
    }
    const resolve = async (ref: string): Promise<Item | null> => {
      const at = parseItemId(ref);
      const s = at ? await this.store.find(at.responseId, ctx.keyId) : null;
      if (!at || !s) return null;
      return (at.list === 'i' ? s.inputItems : (await this.render(s)).output)[at.index] ?? null;
    };
    const inputItems = await toInputItems(req, hex, resolve);
    let conversation = [...history, ...inputItems];
    if (!conversation.length) throw errors.invalid("'input' must hold at least one item.", 'input');

    // Validated by the chat endpoint's rules, reported under this API's parameter names.
    const build = (messages: ChatMessage[]) => {
      const chat = asResponsesError(() => parseChatCompletionRequest(toChatRequest(req, messages)));
      const prompt = toChatPrompt(chat);
      const params = toSamplingParams(chat, model.defaults, format);
      asResponsesError(() => checkGeneration({ texts: promptTexts(prompt) }, params, model.inputBound, maxBatchTokens(), 'messages'));
      return { prompt, params };
    };
    let built: ReturnType<typeof build>;
    for (;;) {
      try {
        built = build(itemsToMessages(conversation));
        break;
      } catch (err) {
        // truncation 'auto': the oldest items go until the conversation fits (as far as the
        // model's input bound can tell without tokenizing).
        if (req.truncation !== 'auto' || !(err instanceof ApiError) || err.code !== 'context_length_exceeded' || conversation.length <= 1) throw err;
        conversation = conversation.slice(1);
        while (conversation.length > 1 && conversation[0]!.type === 'function_call_output') conversation = conversation.slice(1);
      }
    }
    const { prompt, params } = built;

    const background = req.background === true;
    const stream = req.stream === true;
    const gen = await this.engine.generate({
      id,
      endpoint: 'responses',
      model: req.model,
      prompt,
      params,
      // A background response publishes its text as it goes: it may be polled or streamed again.
      stream: stream || background,
      keyId: ctx.keyId,
      onLimits: ctx.onLimits,
      traceparent: ctx.traceparent,
      // A background response is answered `queued` before it runs: that answer must survive a crash.
      durable: background,
      meta: {
        ...(req.user ? { user: req.user } : {}),
        ...(req.metadata ? { metadata: req.metadata } : {}),
        ...(store ? {} : { store: false }),
      },
    });
    const stored: StoredResponse = {
      id,
      keyId: ctx.keyId,
      previousId,
      model: req.model,
      background,
      request: requestFields(req, params.temperature, params.topP),
      inputItems,
      createdAt: Math.floor(since / 1000),
      final: null,
      requestStatus: 'queued',
      requestText: null,
      requestFinish: null,
      requestUsage: null,
      requestError: null,
    };
    if (store) {
      try {
        await this.store.insert(stored);
      } catch (err) {
        await this.engine.cancel(id).catch(() => {});
        throw err;
      }
    }
    onQueued?.(id);
    const tools = stored.request.tools.length && stored.request.tool_choice !== 'none' ? format : null;
    const b = new ResponseEventBuilder(this.base(stored, store), tools, stream ? 'stream' : 'render');
    const events = gen.events[Symbol.asyncIterator]();
    const finalize = async () => {
      if (store && b.ended && b.status !== 'queued' && b.status !== 'in_progress') await this.store.finalize(id, b.outcome()).catch(() => {});
    };

    if (background) {
      // The worker goes on without us; this process stops listening (unless it streams).
      if (!stream) {
        await events.return?.();
        return { kind: 'json', requestId: id, body: b.snapshot() };
      }
      return { kind: 'stream', requestId: id, background, events: this.live(b, undefined, events, finalize, gen.model) };
    }
    const deadline = Date.now() + requestTimeoutMs();
    const cancel = () => this.engine.cancel(id);
    // The first event decides the HTTP status: an error before any output is an error response.
    const first = await beforeDeadline(events.next(), deadline, cancel);
    if (first.done) throw errors.internal('The generation ended without a result.');
    this.observer.started(gen.model, Date.now() - since);
    if (first.value.type === 'error') {
      b.begin();
      b.feed(first.value);
      await finalize();
      throw ApiError.fromBody(first.value.status, first.value.error);
    }
    if (stream) return { kind: 'stream', requestId: id, background, events: this.live(b, first.value, events, finalize, gen.model) };
    const response = await beforeDeadline(
      (async () => {
        b.begin();
        for (let e: EngineEvent | undefined = first.value; e && !b.ended; e = (await events.next()).value as EngineEvent | undefined) b.feed(e);
        await events.return?.();
        if (!b.ended) throw errors.internal('The generation ended without a result.');
        if (b.usage) this.observer.usage(gen.model, { prompt_tokens: b.usage.input_tokens, completion_tokens: b.usage.output_tokens, total_tokens: b.usage.total_tokens });
        await finalize();
        return b.snapshot();
      })(),
      deadline,
      cancel,
    );
    return { kind: 'json', requestId: id, body: response };
  }

  private async *live(b: ResponseEventBuilder, first: EngineEvent | undefined, events: AsyncIterator<EngineEvent>, finalize: () => Promise<void>, model: string): AsyncGenerator<ResponseStreamEvent> {
    try {
      yield* b.begin();
      for (let e: EngineEvent | undefined = first ?? ((await events.next()).value as EngineEvent | undefined); e; e = (await events.next()).value as EngineEvent | undefined) {
        yield* b.feed(e);
        if (b.ended) break;
      }
    } finally {
      await events.return?.();
      if (b.usage) this.observer.usage(model, { prompt_tokens: b.usage.input_tokens, completion_tokens: b.usage.output_tokens, total_tokens: b.usage.total_tokens });
      await finalize();
    }
  }
}
