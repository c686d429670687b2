import type { Engine, Tokenizers } from '../engine/types.js';
import { errors } from '../protocol/errors.js';
import { parseDetokenizeRequest, parseTokenizeRequest, type TokenizeResponse } from '../protocol/tokenize.js';
import { resolveModel, type RequestContext } from './context.js';

/**
 * POST /tokenize and /detokenize: the model is resolved through the caller's key scope first
 * (a key scoped to other models gets 403, as for generation), then its tokenizer answers.
 */
export class TokenizeServing {
  constructor(
    private readonly engine: Engine,
    private readonly tokenizers: Tokenizers | null,
  ) {}

  private async tokenizerFor(model: string, ctx: RequestContext): Promise<{ name: string; tokenizers: Tokenizers }> {
    const info = await resolveModel(this.engine, model, ctx);
    if (info.task !== 'chat') throw errors.invalid(`The model '${model}' is an ${info.task} model; tokenize serves chat models.`, 'model', 'model_not_supported');
    if (!this.tokenizers) throw errors.unavailable('This server has no tokenizers.');
    return { name: info.name, tokenizers: this.tokenizers };
  }

  async tokenize(body: unknown, ctx: RequestContext): Promise<TokenizeResponse> {
    const req = parseTokenizeRequest(body);
    const { name, tokenizers } = await this.tokenizerFor(req.model, ctx);
    const t = await tokenizers.tokenize({ ...req, model: name });
    return { count: t.tokens.length, max_model_len: t.maxModelLen, tokens: t.tokens, token_strs: null };
  }

  async detokenize(body: unknown, ctx: RequestContext): Promise<{ prompt: string }> {
    const req = parseDetokenizeRequest(body);
    const { name, tokenizers } = await this.tokenizerFor(req.model, ctx);
    return { prompt: await tokenizers.detokenize(name, req.tokens) };
  }
}
