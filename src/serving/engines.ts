import type { CompletionResult, CompletionsServing } from './completions.js';
import type { EmbeddingsServing } from './embeddings.js';
import type { ModelsServing } from './models.js';
import type { RequestContext } from './context.js';
import type { EmbeddingList } from '../protocol/embeddings.js';
import type { Model } from '../protocol/models.js';

/** OpenAI's retired Engine object (GET /v1/engines): a model under its old name. */
export interface LegacyEngine {
  id: string;
  object: 'engine';
  created: number;
  owner: string;
  ready: boolean;
  permissions: null;
}

const toEngine = (m: Model): LegacyEngine => ({ id: m.id, object: 'engine', created: m.created, owner: m.owned_by, ready: true, permissions: null });

/**
 * The legacy engines routes as aliases of today's endpoints, with the engine id as the model:
 * the same validation, key scopes, limits and request log, because they are the same calls.
 * The id in the path wins over a `model` in the body (the path is what old clients vary).
 */
export class EnginesServing {
  constructor(
    private readonly models: ModelsServing,
    private readonly completions: CompletionsServing,
    private readonly embeddings: EmbeddingsServing,
  ) {}

  async list(ctx: RequestContext): Promise<{ object: 'list'; data: LegacyEngine[] }> {
    return { object: 'list', data: (await this.models.list(ctx)).data.map(toEngine) };
  }

  async retrieve(id: string, ctx: RequestContext): Promise<LegacyEngine> {
    return toEngine(await this.models.retrieve(id, ctx));
  }

  complete(id: string, body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<CompletionResult> {
    return this.completions.create(withModel(body, id), ctx, onQueued);
  }

  embed(id: string, body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<{ requestId: string; body: EmbeddingList }> {
    return this.embeddings.create(withModel(body, id), ctx, onQueued);
  }
}

/** A body that is not an object is passed on as it is, for the endpoint's own 400. */
const withModel = (body: unknown, id: string): unknown =>
  body !== null && typeof body === 'object' && !Array.isArray(body) ? { ...(body as object), model: id } : body;
