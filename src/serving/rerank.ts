import type { Engine } from '../engine/types.js';
import { errors } from '../protocol/errors.js';
import { needsMoreThan } from '../protocol/limits.js';
import { documentTexts, parseRerankRequest, rerankResponse, type RerankResponse } from '../protocol/rerank.js';
import { beforeDeadline, requestTimeoutMs, resolveModel, type RequestContext } from './context.js';
import { noObserver, type Observer } from './observer.js';

/** POST /v1/rerank without HTTP. */
export class RerankServing {
  constructor(
    private readonly engine: Engine,
    private readonly observer: Observer = noObserver,
  ) {}

  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<{ requestId: string; body: RerankResponse }> {
    const req = parseRerankRequest(body);
    const model = await resolveModel(this.engine, req.model, ctx);
    const documents = documentTexts(req);
    // What certainly cannot fit is refused before queueing; the worker checks the exact token
    // counts of what may (the same rule for SQL-originated requests).
    const bound = model.inputBound;
    if (bound) {
      const limit = bound.contextLength;
      if (needsMoreThan([req.query], bound, limit)) {
        throw errors.contextLength(`Invalid query: it is more than ${limit} tokens long; this model takes at most ${limit} for a query and a document together.`, 'query');
      }
      if (!model.truncate) {
        const i = documents.findIndex((d) => needsMoreThan([req.query, d], bound, limit));
        if (i >= 0) {
          throw errors.contextLength(
            `Invalid documents[${i}]: with the query it is more than ${limit} tokens long; this model takes at most ${limit}. Shorten it, or register the model with --truncate.`,
            'documents',
          );
        }
      }
    }
    let requestId: string | null = null;
    const result = await beforeDeadline(
      this.engine.rerank(
        { model: req.model, query: req.query, documents, keyId: ctx.keyId, meta: req.user ? { user: req.user } : {}, onLimits: ctx.onLimits },
        (id) => {
          requestId = id;
          onQueued?.(id);
        },
      ),
      Date.now() + requestTimeoutMs(),
      () => (requestId ? this.engine.cancel(requestId) : undefined),
    );
    this.observer.usage(result.model, { prompt_tokens: result.promptTokens });
    return { requestId: result.requestId, body: rerankResponse(`rerank-${result.requestId}`, req, result.scores, result.promptTokens) };
  }
}
