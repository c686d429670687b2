import type { Engine, ModelInfo } from '../engine/types.js';
import type { Model, ModelList } from '../protocol/models.js';
import { mayUse, resolveModel, type RequestContext } from './context.js';

const OWNER = 'switchyard';

/** A model is listed under its name and under each alias: clients look for the name they use. */
function entries(m: ModelInfo): Model[] {
  return [m.name, ...m.aliases].map((id) => ({ id, object: 'model', created: m.created, owned_by: OWNER }));
}

export class ModelsServing {
  constructor(private readonly engine: Engine) {}

  async list(ctx: RequestContext): Promise<ModelList> {
    const models = await this.engine.listModels();
    return { object: 'list', data: models.filter((m) => mayUse(ctx, m)).flatMap(entries) };
  }

  async retrieve(id: string, ctx: RequestContext): Promise<Model> {
    const m = await resolveModel(this.engine, id, ctx);
    return { id, object: 'model', created: m.created, owned_by: OWNER };
  }
}
