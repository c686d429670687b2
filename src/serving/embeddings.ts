import type { Engine } from '../engine/types.js';
import { encodeBase64, parseEmbeddingRequest, toInputs, toNumbers, truncateVector, type EmbeddingList, type EmbeddingRequest } from '../protocol/embeddings.js';
import { errors } from '../protocol/errors.js';
import { checkEmbeddingInputs } from '../protocol/limits.js';
import { beforeDeadline, requestTimeoutMs, resolveModel, type RequestContext } from './context.js';
import { noObserver, type Observer } from './observer.js';

/** POST /v1/embeddings without HTTP. */
export class EmbeddingsServing {
  constructor(
    private readonly engine: Engine,
    private readonly observer: Observer = noObserver,
  ) {}

  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<{ requestId: string; body: EmbeddingList }> {
    const req = parseEmbeddingRequest(body);
    const model = await resolveModel(this.engine, req.model, ctx);
    const tooLarge = (dims: number) =>
      errors.invalid(`'dimensions' is ${req.dimensions}, larger than the model's ${dims}.`, 'dimensions');
    if (req.dimensions && model.dimensions && req.dimensions > model.dimensions) throw tooLarge(model.dimensions);
    checkEmbeddingInputs(toInputs(req), model.inputBound, model.truncate ?? false);
    let requestId: string | null = null;
    const result = await beforeDeadline(
      this.engine.embed(
        {
          model: req.model,
          inputs: toInputs(req),
          keyId: ctx.keyId,
          onLimits: ctx.onLimits,
          meta: { ...(req.dimensions ? { dimensions: req.dimensions } : {}), ...(req.user ? { user: req.user } : {}) },
        },
        (id) => {
          requestId = id;
          onQueued?.(id);
        },
      ),
      Date.now() + requestTimeoutMs(),
      () => (requestId ? this.engine.cancel(requestId) : undefined),
    );
    this.observer.usage(result.model, { prompt_tokens: result.promptTokens });
    // The model's size may have been unknown until its first load.
    const full = result.vectors[0]?.length ?? 0;
    if (req.dimensions && req.dimensions > full) throw tooLarge(full);
    return { requestId: result.requestId, body: embeddingList(req, result.vectors, result.promptTokens) };
  }
}

/** The response body for a request's vectors (also a batch line's, serving/batches.ts). */
export function embeddingList(req: Pick<EmbeddingRequest, 'model' | 'dimensions' | 'encoding_format'>, vectors: ArrayLike<number>[], promptTokens: number): EmbeddingList {
  const base64 = req.encoding_format === 'base64';
  return {
    object: 'list',
    data: vectors.map((v, index) => {
      const vec = truncateVector(v, req.dimensions);
      return { object: 'embedding', index, embedding: base64 ? encodeBase64(vec) : toNumbers(vec) };
    }),
    model: req.model,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  };
}
