import { randomBytes, randomUUID } from 'node:crypto';
import type { Database } from '../db/pool.js';
import { findModel, listModels } from '../db/models-repo.js';
import { cancelRequest, enqueueRequest, redactRequest } from '../db/requests-repo.js';
import { EmbedEnqueueCoalescer } from './embed-coalescer.js';
import type { ModelRow } from '../db/types.js';
import { readToolFormat } from '../protocol/tools.js';
import { readReasoningFormat } from '../protocol/reasoning.js';
import { readInputBound } from '../protocol/limits.js';
import { errors } from '../protocol/errors.js';
import type { EventHub } from './event-hub.js';
import { ApiError } from '../protocol/errors.js';
import { admissionError, rateLimitHeaders, rateWindowSeconds, reservedEmbeddingTokens, reservedTokens, type Limits } from './admission.js';
import { SpanStatusCode, context } from '@opentelemetry/api';
import { contextFrom, traceparentOf, tracer } from '../tracing.js';
import { enqueueRerank } from '../db/rerank-repo.js';
import type { RerankRequest, RerankResult } from './types.js';
import type { EmbedRequest, EmbedResult, Engine, EngineEvent, GenerateRequest, Generation, ModelInfo, ModerateRequest, ModerateResult } from './types.js';

/**
 * A crashed worker's generation is retried a few times, not forever: each try costs a full
 * run (SWITCHYARD_CHAT_ATTEMPTS, default 3).
 */
const CHAT_MAX_ATTEMPTS = Math.max(1, Number(process.env.SWITCHYARD_CHAT_ATTEMPTS) || 3);
/** Embedding jobs are short and idempotent: more retries are cheap. */
const EMBED_MAX_ATTEMPTS = 5;


export { splitVectors } from '../db/vectors.js';
import { splitVectors } from '../db/vectors.js';

function toInfo(row: ModelRow): ModelInfo {
  return {
    name: row.name,
    task: row.task,
    aliases: row.aliases,
    created: Math.floor(new Date(row.created_at).getTime() / 1000),
    defaults: row.defaults as Record<string, unknown>,
    dimensions: row.dimensions,
    toolCallFormat: readToolFormat(row.tool_call_format),
    reasoningFormat: readReasoningFormat(row.reasoning_format),
    inputBound: readInputBound(row.input_bound),
    truncate: row.truncate,
  };
}

/**
 * The engine as a Postgres queue: a generation is a row in ai.requests plus a graphile-worker
 * job; its events come back through the process's EventHub.
 */
/**
 * Registered models change rarely but are looked up on every request (twice: to check the
 * key's scope, then to queue): a second's staleness saves those round trips. Unknown names
 * are never cached, so a model registered a moment ago is found at once.
 */
const MODEL_TTL_MS = 1000;

/** Default bound on each model's queue (ai.models.max_queue overrides it). */
const MAX_QUEUE = Math.max(1, Number(process.env.SWITCHYARD_MAX_QUEUE) || 1000);

export class PgEngine implements Engine {
  private readonly models = new Map<string, { row: ModelRow; at: number }>();
  /** Embedding requests that arrive together are enqueued together (embed-coalescer.ts). */
  readonly embedQueue: EmbedEnqueueCoalescer;

  constructor(
    private readonly database: Database,
    private readonly hub: EventHub,
  ) {
    this.embedQueue = new EmbedEnqueueCoalescer(database.db);
  }

  /** Backpressure: how many queued requests of a model make a new one a 429. */
  private queueBound(row: ModelRow): number {
    return row.max_queue ?? MAX_QUEUE;
  }

  private async lookup(name: string): Promise<ModelRow | undefined> {
    const hit = this.models.get(name);
    if (hit && Date.now() - hit.at < MODEL_TTL_MS) return hit.row;
    const row = await findModel(this.database.db, name);
    if (row) this.models.set(name, { row, at: Date.now() });
    else this.models.delete(name);
    return row;
  }

  async getModel(name: string): Promise<ModelInfo | null> {
    const row = await this.lookup(name);
    return row ? toInfo(row) : null;
  }

  async listModels(): Promise<ModelInfo[]> {
    return (await listModels(this.database.db)).map(toInfo);
  }

  /**
   * Traced as `admission` (the model looked up, the queue's bound checked, the row written),
   * under the caller's context: the given `traceparent` (serve's request span), else the active
   * context (an application calling the SDK inside a span of its own). The row carries the
   * span's context, so the worker's spans (queue wait, prefill, decode) continue the same trace.
   */
  async generate(req: GenerateRequest): Promise<Generation> {
    const parent = req.traceparent === undefined ? context.active() : contextFrom(req.traceparent);
    const span = tracer().startSpan('admission', { attributes: { 'switchyard.endpoint': req.endpoint, 'gen_ai.request.model': req.model } }, parent);
    try {
      const gen = await this.admit(req, traceparentOf(span));
      span.setAttribute('switchyard.request_id', gen.requestId);
      return gen;
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
      throw err;
    } finally {
      span.end();
    }
  }

  private async admit(req: GenerateRequest, traceparent: string | null): Promise<Generation> {
    const row = await this.lookup(req.model);
    if (!row) throw errors.modelNotFound(req.model);
    if (row.task !== 'chat') {
      throw errors.invalid(`The model '${req.model}' is an ${row.task} model and cannot be used for ${req.endpoint === 'chat.completions' ? 'chat completions' : req.endpoint}.`, 'model', 'model_not_supported');
    }
    const requestId = req.id ?? randomUUID();
    // The secret its worker seals the events in its notifications with (notice.ts).
    const notifyKey = randomBytes(16);
    // Subscribe first: the worker may publish before enqueue() even returns.
    const events = this.hub.subscribe(requestId, notifyKey);
    let queued: boolean;
    try {
      const admitted = await enqueueRequest(this.database.db, {
        id: requestId,
        endpoint: req.endpoint,
        model: row.name,
        requestedModel: req.model,
        // The log holds what the worker runs: normalised messages and parameters.
        input: 'messages' in req.prompt ? { messages: req.prompt.messages, ...(req.prompt.tools ? { tools: req.prompt.tools } : {}) } : { prompt: 'text' in req.prompt ? req.prompt.text : req.prompt.ids },
        params: { ...req.params, ...('messages' in req.prompt ? { chat_template: req.prompt.chatTemplate } : {}), ...req.meta },
        stream: req.stream,
        keyId: req.keyId,
        maxAttempts: CHAT_MAX_ATTEMPTS,
        listener: this.hub.channel,
        queueBound: this.queueBound(row),
        reservedTokens: reservedTokens(req.prompt, req.params, readInputBound(row.input_bound)?.contextLength ?? null),
        rateWindowSeconds: rateWindowSeconds(),
        traceparent,
        notifyKey,
        durable: req.durable === true,
      });
      queued = admitted.queued;
      if (queued) req.onLimits?.(rateLimitHeaders(admitted.limits as Limits));
    } catch (err) {
      events.close();
      throw admissionError(err, req.onLimits);
    }
    if (!queued) {
      events.close();
      throw errors.queueFull(row.name, 1);
    }
    // meta.store === false (the client's `store: false`, recorded in params like the rest of meta).
    const unstored = req.meta.store === false;
    return { requestId, model: row.name, created: Math.floor(Date.now() / 1000), events: unstored ? this.redactAfter(requestId, events) : events };
  }

  /**
   * `store: false`: once the consumer holds the final event, everything it answers with is in
   * its memory and nothing reads the request's rows again, so their text goes before the final
   * event is handed over (one round trip; the answer itself is unchanged). A consumer that
   * leaves early leaves a cancelled request, whose worker may still write: the sweep
   * (ai.redact_unstored, run by the Reaper) takes it, and anything this misses.
   */
  private redactAfter(requestId: string, events: AsyncIterable<EngineEvent>): AsyncIterable<EngineEvent> {
    const redact = () => redactRequest(this.database.db, requestId).catch(() => false);
    return {
      [Symbol.asyncIterator]: () => {
        const inner = events[Symbol.asyncIterator]();
        let redacted = false;
        return {
          next: async () => {
            const r = await inner.next();
            if (!redacted && (r.done || r.value.type === 'done' || r.value.type === 'error')) {
              redacted = true;
              await redact();
            }
            return r;
          },
          return: async (value?: unknown) => {
            const r = (await inner.return?.(value)) ?? { done: true as const, value: undefined };
            if (!redacted) {
              redacted = true;
              await redact();
            }
            return r;
          },
        };
      },
    };
  }

  async embed(req: EmbedRequest, onQueued?: (requestId: string) => void): Promise<EmbedResult> {
    const row = await this.lookup(req.model);
    if (!row) throw errors.modelNotFound(req.model);
    if (row.task !== 'embedding') {
      throw errors.invalid(`The model '${req.model}' is a ${row.task} model and cannot be used for embeddings.`, 'model', 'model_not_supported');
    }
    const requestId = randomUUID();
    const events = this.hub.subscribe(requestId);
    let queued: boolean;
    try {
      queued = await this.embedQueue.enqueue(
        row.name,
        {
          id: requestId, requestedModel: req.model, inputs: req.inputs, meta: req.meta, keyId: req.keyId,
          reservedTokens: reservedEmbeddingTokens(req.inputs),
          onLimits: (limits) => req.onLimits?.(rateLimitHeaders(limits as Limits)),
        },
        { maxAttempts: EMBED_MAX_ATTEMPTS, listener: this.hub.channel, queueBound: this.queueBound(row), rateWindowSeconds: rateWindowSeconds() },
      );
    } catch (err) {
      events.close();
      throw admissionError(err, req.onLimits);
    }
    if (!queued) {
      events.close();
      throw errors.queueFull(row.name, 1);
    }
    onQueued?.(requestId);
    for await (const e of events) {
      if (e.type === 'error') throw ApiError.fromBody(e.status, e.error);
      if (e.type !== 'embedded') continue;
      // The vectors came with the event, as float32 bytes (event-hub.ts): no second read.
      const vectors = splitVectors(e.vectors, req.inputs.length);
      if (!vectors) throw errors.internal('The embeddings were not recorded.');
      return { requestId, model: row.name, vectors, promptTokens: e.promptTokens };
    }
    throw errors.internal('The embedding request ended without a result.');
  }

  async rerank(req: RerankRequest, onQueued?: (requestId: string) => void): Promise<RerankResult> {
    const row = await this.lookup(req.model);
    if (!row) throw errors.modelNotFound(req.model);
    if (row.task !== 'rerank') {
      throw errors.invalid(`The model '${req.model}' is a${row.task === 'embedding' ? 'n' : ''} ${row.task} model and cannot be used for rerank.`, 'model', 'model_not_supported');
    }
    const requestId = randomUUID();
    const events = this.hub.subscribe(requestId);
    let queued: boolean;
    try {
      queued = await enqueueRerank(this.database.db, {
        id: requestId,
        model: row.name,
        requestedModel: req.model,
        query: req.query,
        documents: req.documents,
        meta: req.meta,
        keyId: req.keyId,
        maxAttempts: EMBED_MAX_ATTEMPTS,
        listener: this.hub.channel,
        queueBound: this.queueBound(row),
        // Each document is read beside the query: a pair's tokens are at most their bytes and a few specials.
        reservedTokens: reservedEmbeddingTokens(req.documents.map((d) => `${req.query} ${d}`)),
        rateWindowSeconds: rateWindowSeconds(),
      });
    } catch (err) {
      events.close();
      throw admissionError(err, req.onLimits);
    }
    if (!queued) {
      events.close();
      throw errors.queueFull(row.name, 1);
    }
    onQueued?.(requestId);
    for await (const e of events) {
      if (e.type === 'error') throw ApiError.fromBody(e.status, e.error);
      if (e.type !== 'reranked') continue;
      if (e.scores.length !== req.documents.length) throw errors.internal('The rerank scores were not recorded.');
      return { requestId, model: row.name, scores: e.scores, promptTokens: e.promptTokens };
    }
    throw errors.internal('The rerank request ended without a result.');
  }

  async moderate(req: ModerateRequest, onQueued?: (requestId: string) => void): Promise<ModerateResult> {
    const row = await this.lookup(req.model);
    if (!row) throw errors.modelNotFound(req.model);
    if (row.task !== 'moderation') {
      throw errors.invalid(`The model '${req.requestedModel}' is a ${row.task} model and cannot be used for moderations.`, 'model', 'model_not_supported');
    }
    const requestId = randomUUID();
    const events = this.hub.subscribe(requestId);
    try {
      const { rows } = await this.database.pool.query<{ queued: boolean }>(
        'select ai.enqueue_moderation($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8, $9, make_interval(secs => $10)) as queued',
        [requestId, row.name, req.requestedModel, JSON.stringify(req.texts), '{}', req.keyId, this.hub.channel, this.queueBound(row),
          reservedEmbeddingTokens(req.texts), rateWindowSeconds()],
      );
      if (!rows[0]?.queued) throw errors.queueFull(row.name, 1);
    } catch (err) {
      events.close();
      throw admissionError(err, req.onLimits);
    }
    onQueued?.(requestId);
    for await (const e of events) {
      if (e.type === 'error') throw ApiError.fromBody(e.status, e.error);
      if (e.type === 'moderated') return { requestId, results: e.results, promptTokens: e.promptTokens };
    }
    throw errors.internal('The moderation request ended without a result.');
  }

  async cancel(requestId: string): Promise<void> {
    await cancelRequest(this.database.db, requestId);
  }
}
