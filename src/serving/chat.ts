import type { Engine, EngineEvent, Generation } from '../engine/types.js';
import {
  parseChatCompletionRequest,
  toChatPrompt,
  toSamplingParams,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ChatCompletionRequest,
  type ChatFinishReason,
  type ToolCallDelta,
  toChatLogprobs,
} from '../protocol/chat.js';
import { HERMES_TOOL_FORMAT, ToolCallParser, type ToolCallFormat } from '../protocol/tools.js';
import { ReasoningParser, type ReasoningFormat } from '../protocol/reasoning.js';
import { buildChatCompletion, SYSTEM_FINGERPRINT, toolCallParsing } from '../protocol/chat-completion.js';
import { ApiError, errors } from '../protocol/errors.js';
import { checkGeneration, maxBatchTokens, promptTexts } from '../protocol/limits.js';
import { wireId, type FinishReason, type TokenLogprob, type Usage } from '../protocol/shared.js';
import { beforeDeadline, requestTimeoutMs, resolveModel, type RequestContext } from './context.js';
import { noObserver, type Observer } from './observer.js';
import type { ReplayFields } from './chat-replay.js';

export { SYSTEM_FINGERPRINT };

/** A streaming answer: chunks to send, and how to stop the generation if the client leaves. */
export interface ChatStream {
  requestId: string;
  /** The prompt's length, when the worker reported it before the first chunk (Anthropic's message_start carries it). */
  promptTokens?: number;
  chunks: AsyncIterable<ChatCompletionChunk>;
}

export type ChatResult = { kind: 'json'; requestId: string; body: ChatCompletion } | { kind: 'stream'; stream: ChatStream };

const toError = (e: Extract<EngineEvent, { type: 'error' }>) => ApiError.fromBody(e.status, e.error);

/**
 * POST /v1/chat/completions without HTTP: validates, queues through the engine, and shapes
 * the engine's events into a `chat.completion` or a sequence of `chat.completion.chunk`s.
 */
export class ChatServing {
  constructor(
    private readonly engine: Engine,
    private readonly observer: Observer = noObserver,
  ) {}

  /** Reports queue wait, time to first token and usage as the events go by. */
  private observe(events: AsyncIterator<EngineEvent>, model: string, since: number): AsyncIterator<EngineEvent> {
    let sawText = false;
    return {
      next: async () => {
        const r = await events.next();
        if (!r.done) {
          const e = r.value;
          // A request that does not stream receives its start with the outcome: its time says when it started.
          if (e.type === 'start') this.observer.started(model, Math.max(0, (e.at ?? Date.now()) - since));
          else if (e.type === 'delta' && !sawText && e.choices.some((c) => c.text)) {
            sawText = true;
            this.observer.firstToken(model, Date.now() - since);
          } else if (e.type === 'done') this.observer.usage(model, e.usage);
        }
        return r;
      },
      return: async (value?: unknown) => (await events.return?.(value)) ?? { done: true, value: undefined },
    };
  }

  /** Starts a generation; `onQueued` learns the request id at once (to cancel it if the client leaves). */
  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<ChatResult> {
    const since = Date.now();
    const req = parseChatCompletionRequest(body);
    const model = await resolveModel(this.engine, req.model, ctx);
    const format = model.toolCallFormat ?? HERMES_TOOL_FORMAT;
    const prompt = toChatPrompt(req);
    const params = toSamplingParams(req, model.defaults, format);
    const reasoning = model.reasoningFormat ?? null;
    // A stream's chunks can be replayed from its stored events (serving/chat-replay.ts), given these.
    const created = Math.floor(Date.now() / 1000);
    const replay: ReplayFields | null = req.stream
      ? { created, n: req.n ?? 1, logprobs: req.logprobs === true, include_usage: req.stream_options?.include_usage === true, ...(req.tool_choice != null ? { tool_choice: req.tool_choice } : {}) }
      : null;
    // A constrained reply (forced call, JSON) is constrained after the reasoning section.
    if (reasoning && params.constraint) params.constraint = { ...params.constraint, reasoning };
    checkGeneration({ texts: promptTexts(prompt) }, params, model.inputBound, maxBatchTokens(), 'messages');
    const gen = await this.engine.generate({
      endpoint: 'chat.completions',
      model: req.model,
      prompt,
      params,
      stream: req.stream === true,
      keyId: ctx.keyId,
      onLimits: ctx.onLimits,
      traceparent: ctx.traceparent,
      meta: {
        ...(req.user ? { user: req.user } : {}),
        ...(req.metadata ? { metadata: req.metadata } : {}),
        // The engine keeps no text of such a request once it has ended (sql/075_store.sql).
        ...(req.store === false ? { store: false } : {}),
        ...(replay ? { replay } : {}),
      },
    });
    onQueued?.(gen.requestId);
    const deadline = Date.now() + requestTimeoutMs();
    const cancel = () => this.engine.cancel(gen.requestId);
    const events = this.observe(gen.events[Symbol.asyncIterator](), gen.model, since);
    // The first event decides the HTTP status: an error before any output (prompt too long,
    // bad template, model failed to load) is an error response, not a 200 stream.
    const first = await beforeDeadline(events.next(), deadline, cancel);
    if (first.done) throw errors.internal('The generation ended without a result.');
    if (first.value.type === 'error') throw toError(first.value);
    // Tool calls are read out of the text unless the request has no tools or forbids calling them.
    const tools = toolCallParsing(req, format);
    if (req.stream) {
      const promptTokens = first.value.type === 'start' ? { promptTokens: first.value.promptTokens } : {};
      return { kind: 'stream', stream: { requestId: gen.requestId, ...promptTokens, chunks: this.chunks(req, { ...gen, created }, first.value, events, tools, reasoning) } };
    }
    const completion = await beforeDeadline(this.collect(req, gen, first.value, events, tools, reasoning), deadline, cancel);
    return { kind: 'json', requestId: gen.requestId, body: completion };
  }

  private async collect(
    req: ChatCompletionRequest,
    gen: Generation,
    first: EngineEvent,
    events: AsyncIterator<EngineEvent>,
    tools: ToolCallFormat | null,
    reasoning: ReasoningFormat | null,
  ): Promise<ChatCompletion> {
    const n = req.n ?? 1;
    const texts = Array.from({ length: n }, () => '');
    const logprobs = Array.from({ length: n }, () => [] as TokenLogprob[]);
    const stops = new Map<number, string>();
    for (let e: EngineEvent | undefined = first; e; e = (await events.next()).value as EngineEvent | undefined) {
      if (e.type === 'delta') {
        for (const c of e.choices) {
          texts[c.index] += c.text;
          if (c.logprobs) logprobs[c.index]!.push(...c.logprobs);
          if (c.stopSequence !== undefined) stops.set(c.index, c.stopSequence);
        }
      } else if (e.type === 'restart') {
        texts.fill('');
        for (const l of logprobs) l.length = 0;
      }
      else if (e.type === 'error') throw toError(e);
      else if (e.type === 'done') {
        const reasons = new Map(e.choices.map((c) => [c.index, c.finishReason]));
        const choices = texts.map((text, index) => ({
          index, text, finishReason: reasons.get(index) ?? ('stop' as const), logprobs: logprobs[index]!,
          ...(stops.has(index) ? { stopSequence: stops.get(index)! } : {}),
        }));
        return buildChatCompletion(req, gen.requestId, gen.created, choices, e.usage, tools, reasoning);
      }
    }
    throw errors.internal('The generation ended without a result.');
  }

  /** The chunks of a generation's events: the same events give the same chunks (a replay's too, chat-replay.ts). */
  async *chunks(
    req: ChatCompletionRequest,
    gen: Generation,
    first: EngineEvent,
    events: AsyncIterator<EngineEvent>,
    tools: ToolCallFormat | null,
    reasoning: ReasoningFormat | null,
  ): AsyncGenerator<ChatCompletionChunk> {
    const includeUsage = req.stream_options?.include_usage === true;
    const base = { id: wireId('chatcmpl', gen.requestId), object: 'chat.completion.chunk' as const, created: gen.created, model: req.model, system_fingerprint: SYSTEM_FINGERPRINT };
    const chunk = (
      index: number,
      delta: ChatCompletionChunk['choices'][0]['delta'],
      finish: ChatFinishReason | null,
      logprobs: TokenLogprob[] | undefined = undefined,
      stop?: string,
    ): ChatCompletionChunk => ({
      ...base,
      choices: [{ index, delta, logprobs: logprobs ? toChatLogprobs(logprobs) : null, finish_reason: finish, ...(stop !== undefined ? { stop_reason: stop } : {}) }],
      ...(includeUsage ? { usage: null } : {}),
    });
    const n = req.n ?? 1;
    let usage: Usage | null = null;
    let sentText = false;
    // Per choice: the text split into content and calls as it streams, and how many calls went out.
    const parsers = tools ? Array.from({ length: n }, () => new ToolCallParser(tools)) : null;
    // Per choice: the reasoning section split off first; tool calls are read from what follows it.
    const thinkers = reasoning ? Array.from({ length: n }, () => new ReasoningParser(reasoning)) : null;
    const callDeltas = (index: number, parsed: ReturnType<ToolCallParser['push']>, logprobs: TokenLogprob[] | undefined): ChatCompletionChunk[] => {
      const out: ChatCompletionChunk[] = [];
      let calls = parsers![index]!.calls - parsed.filter((p) => p.type === 'call').length;
      for (const p of parsed) {
        if (p.type === 'text') {
          out.push(chunk(index, { content: p.text }, null, logprobs));
          logprobs = undefined;
          continue;
        }
        // OpenAI's shape: the first piece names the call, later ones carry its arguments.
        const k = calls++;
        const head: ToolCallDelta = { index: k, id: p.call.id, type: 'function', function: { name: p.call.function.name, arguments: '' } };
        out.push(chunk(index, { tool_calls: [head] }, null));
        out.push(chunk(index, { tool_calls: [{ index: k, function: { arguments: p.call.function.arguments } }] }, null));
      }
      return out;
    };
    try {
      for (let i = 0; i < n; i++) yield chunk(i, { role: 'assistant', content: '' }, null);
      for (let e: EngineEvent | undefined = first; e; e = (await events.next()).value as EngineEvent | undefined) {
        if (e.type === 'delta') {
          for (const raw of e.choices) {
            let c = raw;
            if (thinkers) {
              const thinker = thinkers[c.index]!;
              const split = thinker.push(c.text);
              if (c.finishReason) {
                const rest = thinker.finish();
                split.reasoning += rest.reasoning;
                split.content += rest.content;
              }
              if (split.reasoning) {
                sentText = true;
                yield chunk(c.index, { reasoning_content: split.reasoning }, null, req.logprobs && !split.content ? c.logprobs ?? [] : undefined);
              }
              c = { ...c, text: split.content, ...(split.reasoning && !split.content ? { logprobs: [] } : {}) };
            }
            const lp = req.logprobs ? c.logprobs ?? [] : undefined;
            if (parsers) {
              const parser = parsers[c.index]!;
              const parsed = c.text ? parser.push(c.text) : [];
              if (c.finishReason) parsed.push(...parser.finish());
              for (const ch of callDeltas(c.index, parsed, lp?.length ? lp : undefined)) {
                sentText = true;
                yield ch;
              }
              if (c.finishReason) yield chunk(c.index, {}, parser.calls && c.finishReason === 'stop' ? 'tool_calls' : c.finishReason, undefined, c.stopSequence);
              continue;
            }
            if (c.text || c.logprobs?.length) {
              sentText = true;
              yield chunk(c.index, { content: c.text }, null, lp);
            }
            if (c.finishReason) yield chunk(c.index, {}, c.finishReason, undefined, c.stopSequence);
          }
        } else if (e.type === 'restart') {
          // Text already on the wire cannot be taken back: end the stream with an error.
          if (sentText) throw errors.workerLost();
        } else if (e.type === 'error') throw toError(e);
        else if (e.type === 'done') {
          usage = e.usage;
          break;
        }
      }
    } finally {
      // Stops the subscription if the consumer left early.
      await events.return?.();
    }
    if (!usage) throw errors.internal('The generation ended without a result.');
    if (includeUsage) yield { ...base, choices: [], usage };
  }
}
