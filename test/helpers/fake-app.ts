import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/http/app.js';
import type { Database } from '../../src/db/pool.js';
import type { EmbedRequest, EmbedResult, Engine, EngineEvent, GenerateRequest, Generation, ModelInfo, Tokenizers } from '../../src/engine/types.js';
import { errors } from '../../src/protocol/errors.js';
import type { ResponseStore } from '../../src/serving/response-store.js';
import type { ChatReplayStore } from '../../src/serving/chat-replay.js';

export const MODELS: ModelInfo[] = [
  { name: 'tiny-chat', task: 'chat', aliases: ['gpt-4o-mini'], created: 1, defaults: {}, dimensions: null },
  { name: 'tiny-embed', task: 'embedding', aliases: [], created: 2, defaults: {}, dimensions: 4 },
];

const usage = { prompt_tokens: 2, completion_tokens: 1, total_tokens: 3 };

/**
 * An Engine that records every call. A generation answers at once with one token, unless
 * `hold` is set: then it waits until it is cancelled (as a long generation would).
 */
export class FakeEngine implements Engine {
  readonly calls: string[] = [];
  readonly generated: GenerateRequest[] = [];
  /** The ids of the generations queued, in order. */
  readonly queued: string[] = [];
  readonly cancelled: string[] = [];
  hold = false;
  /** Thrown by generate() and embed() when set (a forced 5xx before anything is queued). */
  failWith: Error | null = null;
  /** When set, a generation's first event after `start` is this 500 from the worker. */
  failAfterQueue: string | null = null;
  /** When set, generate() waits for it before queueing (a slow insert). */
  pause: Promise<void> | null = null;
  private next = 0;
  private readonly waiting = new Map<string, () => void>();

  async getModel(name: string): Promise<ModelInfo | null> {
    this.calls.push(`getModel ${name}`);
    return MODELS.find((m) => m.name === name || m.aliases.includes(name)) ?? null;
  }

  async listModels(): Promise<ModelInfo[]> {
    this.calls.push('listModels');
    return MODELS;
  }

  async generate(req: GenerateRequest): Promise<Generation> {
    this.calls.push('generate');
    if (this.pause) await this.pause;
    if (this.failWith) throw this.failWith;
    const model = MODELS.find((m) => m.name === req.model || m.aliases.includes(req.model));
    if (!model) throw errors.modelNotFound(req.model);
    this.generated.push(req);
    const requestId = `00000000-0000-4000-8000-${String(++this.next).padStart(12, '0')}`;
    this.queued.push(requestId);
    const cancelled = this.hold ? new Promise<void>((resolve) => this.waiting.set(requestId, resolve)) : null;
    const failure = this.failAfterQueue;
    async function* events(): AsyncGenerator<EngineEvent> {
      yield { type: 'start', promptTokens: 2 };
      if (failure) {
        yield { type: 'error', status: 500, error: { message: failure, type: 'server_error', param: null, code: 'internal_error' } };
        return;
      }
      if (cancelled) {
        await cancelled;
        yield { type: 'error', status: 499, error: { message: 'cancelled', type: 'invalid_request_error', param: null, code: 'cancelled' } };
        return;
      }
      yield { type: 'delta', choices: [{ index: 0, text: 'x', finishReason: 'length' }], at: Date.now() };
      yield { type: 'done', choices: [{ index: 0, finishReason: 'length' }], usage };
    }
    return { requestId, model: model.name, created: 1, events: events() };
  }

  async embed(req: EmbedRequest, onQueued?: (requestId: string) => void): Promise<EmbedResult> {
    this.calls.push('embed');
    if (this.failWith) throw this.failWith;
    const requestId = `00000000-0000-4000-9000-${String(++this.next).padStart(12, '0')}`;
    onQueued?.(requestId);
    return { requestId, model: 'tiny-embed', vectors: req.inputs.map(() => [0.5, 0.5, 0.5, 0.5]), promptTokens: req.inputs.length };
  }

  async rerank(): Promise<never> {
    this.calls.push('rerank');
    throw this.failWith ?? new Error('FakeEngine does not rerank');
  }

  async cancel(requestId: string): Promise<void> {
    this.cancelled.push(requestId);
    this.waiting.get(requestId)?.();
    this.waiting.delete(requestId);
  }
}

/**
 * The real app over a FakeEngine and a database stand-in: /health and /metrics read an empty
 * pool, and nothing else may touch the database (with auth on, only requests without a
 * credential can be served: looking a key up throws).
 */
export function fakeApp(engine: Engine & { calls?: string[] }, opts: { auth: boolean; tokenizers?: Tokenizers }): FastifyInstance {
  const pool = { query: async () => ({ rows: [] }) };
  // Responses: an empty store that records being asked (in the engine's calls), so a test sees a request reach it.
  const asked = (what: string) => engine.calls?.push(`responses.${what}`);
  const responseStore: ResponseStore = {
    insert: async () => void asked('insert'),
    find: async () => (asked('find'), null),
    chain: async () => (asked('chain'), []),
    events: async () => (asked('events'), { events: [], status: null }),
    finalize: async () => void asked('finalize'),
    delete: async () => (asked('delete'), false),
  };
  // Chat resumes: an empty store that records being asked, as the responses store above.
  const chatReplayStore: ChatReplayStore = {
    find: async () => (asked('chat.find'), null),
    events: async () => (asked('chat.events'), { events: [], status: null }),
  };
  const db = new Proxy({}, { get: () => () => { throw new Error('the database stand-in was asked for a key'); } });
  return buildApp({ engine, database: { pool, db, close: async () => {} } as unknown as Database, auth: opts.auth, listening: () => true, responseStore, chatReplayStore, ...(opts.tokenizers ? { tokenizers: opts.tokenizers } : {}) });
}
