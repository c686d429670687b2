import type { Engine, EngineEvent, Generation } from '../engine/types.js';
import type { ChatCompletionChunk, ChatCompletionRequest, ToolChoice } from '../protocol/chat.js';
import type { ToolDefinition } from '../protocol/chat.js';
import { ApiError } from '../protocol/errors.js';
import { toolCallParsing } from '../protocol/chat-completion.js';
import { HERMES_TOOL_FORMAT } from '../protocol/tools.js';
import type { ChatServing } from './chat.js';
import type { RequestContext } from './context.js';

/**
 * Our extension (issue 16): a chat-completions stream resumed after a disconnect. Every chunk of
 * a stream is a pure function of the request's stored engine events (ChatServing.chunks), so
 * numbering the chunks (SSE `id:`) numbers the same chunks on every replay, on any serve
 * process: `GET /v1/chat/completions/{id}?stream=true` with `Last-Event-ID: N` (or
 * `starting_after=N`) sends the chunks after N from the stored events and goes on live.
 */

/** What a streamed chat request stores to be replayed (ai.requests.params.replay). */
export interface ReplayFields {
  created: number;
  n: number;
  logprobs: boolean;
  include_usage: boolean;
  tool_choice?: ToolChoice;
}

/** A stored streamed chat request, as the caller's key may see it. */
export interface StoredChat {
  id: string;
  /** The registered model, and the name the client used (chunks carry it). */
  model: string;
  requestedModel: string;
  tools: ToolDefinition[] | null;
  replay: ReplayFields;
}

/** Where streamed chat requests and their events are read (src/db/chat-replay-repo.ts). */
export interface ChatReplayStore {
  /** Null unless the request is a streamed chat completion the key may see (as stored responses: made with it or a key of its team; null: no auth). */
  find(id: string, keyId: string | null): Promise<StoredChat | null>;
  events(id: string, fromSeq: number): Promise<{ events: { seq: number; data: EngineEvent }[]; status: string | null }>;
}

/** How often a resumed stream looks for new events (the live LISTEN fan-out names another process). */
const POLL_MS = 100;

const notFound = (wire: string) => new ApiError(404, `No streamed chat completion with id '${wire}'.`, 'invalid_request_error', 'not_found', 'id');

/** chatcmpl-<32 hex> (as chunks name it) → the request's uuid. */
export function parseChatId(wire: string): string | null {
  const m = /^chatcmpl-([0-9a-f]{32})$/.exec(wire);
  if (!m) return null;
  const h = m[1]!;
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class ChatReplayServing {
  constructor(
    private readonly engine: Engine,
    private readonly chat: ChatServing,
    private readonly store: ChatReplayStore,
  ) {}

  /** The stream's chunks from the first; the route skips those up to the client's last id. */
  async replay(wire: string, ctx: RequestContext, signal?: AbortSignal): Promise<AsyncIterable<ChatCompletionChunk>> {
    const id = parseChatId(wire);
    const s = id ? await this.store.find(id, ctx.keyId) : null;
    if (!s) throw notFound(wire);
    const info = await this.engine.getModel(s.model);
    const req = {
      model: s.requestedModel,
      messages: [],
      stream: true,
      n: s.replay.n,
      logprobs: s.replay.logprobs,
      stream_options: { include_usage: s.replay.include_usage },
      ...(s.tools ? { tools: s.tools } : {}),
      ...(s.replay.tool_choice !== undefined ? { tool_choice: s.replay.tool_choice } : {}),
    } as ChatCompletionRequest;
    const tools = toolCallParsing(req, info?.toolCallFormat ?? HERMES_TOOL_FORMAT);
    const events = this.stored(s.id, signal)[Symbol.asyncIterator]();
    const first = await events.next();
    if (first.done) throw notFound(wire);
    const gen: Generation = { requestId: s.id, model: s.model, created: s.replay.created, events: { [Symbol.asyncIterator]: () => events } };
    return this.chat.chunks(req, gen, first.value, events, tools, info?.reasoningFormat ?? null);
  }

  /** The request's events from the database, polled until its final one. */
  private async *stored(id: string, signal?: AbortSignal): AsyncGenerator<EngineEvent> {
    let next = 0;
    let wait = POLL_MS / 4;
    while (!signal?.aborted) {
      const { events, status } = await this.store.events(id, next);
      for (const e of events) {
        if (e.seq !== next) break; // a gap: the missing event is still being written
        next++;
        yield e.data;
        if (e.data.type === 'done' || e.data.type === 'error') return;
      }
      if (!events.length && (status === 'failed' || status === 'cancelled' || status === 'completed' || status === null)) {
        const cancelled = status === 'cancelled';
        yield {
          type: 'error',
          status: cancelled ? 499 : 500,
          error: { message: cancelled ? 'The request was cancelled.' : 'The request ended without a result.', type: cancelled ? 'invalid_request_error' : 'server_error', param: null, code: cancelled ? 'cancelled' : 'internal_error' },
        };
        return;
      }
      if (!events.length) {
        await new Promise((r) => setTimeout(r, wait));
        wait = Math.min(POLL_MS, wait * 2);
      } else wait = POLL_MS / 4;
    }
  }
}
