import type { Engine, ModelInfo } from '../engine/types.js';
import { ApiError, errors } from '../protocol/errors.js';
import { inOpenAIOrder, isOpenAIModerationName, parseModerationRequest, type ModerationResponse } from '../protocol/moderations.js';
import { beforeDeadline, mayUse, requestTimeoutMs, resolveModel, type RequestContext } from './context.js';
import { noObserver, type Observer } from './observer.js';

const REGISTER_HINT = 'Register a text classifier for it: switchyard models add NAME --task moderation --source HF_ID_OR_PATH (see docs/compatibility.md).';

/** POST /v1/moderations without HTTP. */
export class ModerationsServing {
  constructor(
    private readonly engine: Engine,
    private readonly observer: Observer = noObserver,
  ) {}

  /**
   * The model a request names; or, when it names none or OpenAI's own (`omni-moderation-latest`,
   * `text-moderation-stable`, ... that nobody registered), the first registered moderation model
   * the key may use. None registered: a 404 saying what to register, never a silent "not flagged".
   */
  private async pick(name: string | undefined, ctx: RequestContext): Promise<{ model: ModelInfo; chosen: boolean }> {
    if (name && !(isOpenAIModerationName(name) && !(await this.engine.getModel(name)))) {
      const model = await resolveModel(this.engine, name, ctx);
      if (model.task !== 'moderation') {
        throw errors.invalid(`The model '${name}' is a ${model.task} model and cannot be used for moderations. ${REGISTER_HINT}`, 'model', 'model_not_supported');
      }
      return { model, chosen: false };
    }
    const all = (await this.engine.listModels()).filter((m) => m.task === 'moderation');
    if (all.length === 0) {
      throw new ApiError(404, `No moderation model is registered${name ? ` (asked for '${name}')` : ''}. ${REGISTER_HINT}`, 'not_found_error', 'model_not_found', 'model');
    }
    const usable = all.find((m) => mayUse(ctx, m));
    if (!usable) throw errors.forbiddenModel(all[0]!.name);
    ctx.onModel?.(usable.name);
    return { model: usable, chosen: true };
  }

  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<{ requestId: string; body: ModerationResponse }> {
    const req = parseModerationRequest(body);
    const { model, chosen } = await this.pick(req.model, ctx);
    if (!this.engine.moderate) throw errors.unavailable('This server cannot run moderation models.');
    let requestId: string | null = null;
    const result = await beforeDeadline(
      this.engine.moderate({ model: model.name, requestedModel: req.model ?? model.name, texts: req.texts, keyId: ctx.keyId, onLimits: ctx.onLimits }, (id) => {
        requestId = id;
        onQueued?.(id);
      }),
      Date.now() + requestTimeoutMs(),
      () => (requestId ? this.engine.cancel(requestId) : undefined),
    );
    this.observer.usage(model.name, { prompt_tokens: result.promptTokens });
    // Under the name the client used, unless the server chose the model for it.
    const shown = chosen ? model.name : req.model!;
    return { requestId: result.requestId, body: { id: `modr-${result.requestId}`, model: shown, results: result.results.map(inOpenAIOrder) } };
  }
}
