import type { Db } from '../db/pool.js';
import { findModel } from '../db/models-repo.js';
import type { ModelRow } from '../db/types.js';
import { errors, ApiError } from '../protocol/errors.js';
import { needsMoreThan, readInputBound } from '../protocol/limits.js';
// Path rules only (no model code): where a worker finds a model's files, serve finds its tokenizer.
import { pointEnvAt } from '../worker/models-source.js';
import type { TokenizeRequest, Tokenized, Tokenizers } from './types.js';

interface Loaded {
  tokenizer: {
    encode(text: string, opts?: { add_special_tokens?: boolean }): number[];
    decode(ids: number[], opts?: { skip_special_tokens?: boolean }): string;
    apply_chat_template(messages: unknown[], opts: Record<string, unknown>): unknown;
    model_max_length?: number;
  };
  contextLength: number;
  vocab: number;
}

/** Tokenizers a serve keeps loaded (a few MB each); least recently used go first. */
const MAX_LOADED = 16;

/**
 * Tokenizers loaded in the serve process itself, from the same source a worker loads the model
 * from (SWITCHYARD_MODELS_DIR first, then a path, then the hub). Only the tokenizer files are
 * read, never the graph, and nothing here touches a worker's model thread: /tokenize costs a
 * worker nothing, and answers while every worker is busy generating. A serve that cannot see
 * the model's files (no SWITCHYARD_MODELS_DIR, offline) answers 503 saying so.
 *
 * Tokenizing runs on serve's event loop, so texts that certainly cannot fit the model's context
 * are refused first (the same bound a worker records), as the worker does before it tokenizes.
 */
export class ServeTokenizers implements Tokenizers {
  private readonly loaded = new Map<string, Promise<Loaded>>();
  /** transformers.js' `env` is process-global: loads go one at a time. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly db: Db,
    private readonly modelsDir: string | undefined = process.env.SWITCHYARD_MODELS_DIR,
  ) {}

  private get(row: ModelRow): Promise<Loaded> {
    const key = JSON.stringify([row.name, row.source, row.revision, row.context_length]);
    const hit = this.loaded.get(key);
    if (hit) {
      this.loaded.delete(key);
      this.loaded.set(key, hit);
      return hit;
    }
    const load = this.chain.then(() => this.load(row));
    this.chain = load.catch(() => {});
    // A failed load is not remembered: the files may appear (a mounted folder, a download).
    load.catch(() => this.loaded.get(key) === load && this.loaded.delete(key));
    this.loaded.set(key, load);
    if (this.loaded.size > MAX_LOADED) this.loaded.delete(this.loaded.keys().next().value!);
    return load;
  }

  private async load(row: ModelRow): Promise<Loaded> {
    const { AutoTokenizer, AutoConfig, env } = await import('@huggingface/transformers');
    const where = pointEnvAt(env, row.source, this.modelsDir);
    try {
      const opts = { revision: row.revision };
      const tokenizer = (await AutoTokenizer.from_pretrained(where.id, opts)) as unknown as Loaded['tokenizer'];
      const config = (await AutoConfig.from_pretrained(where.id, opts)) as unknown as Record<string, unknown>;
      // As the worker's loader decides it (worker/loader.ts), so max_model_len is the worker's limit.
      const contextLength =
        row.context_length ?? (config.max_position_embeddings as number | undefined) ?? tokenizer.model_max_length ?? 2048;
      return { tokenizer, contextLength, vocab: (config.vocab_size as number | undefined) ?? Infinity };
    } catch (err) {
      throw errors.unavailable(
        `This server could not load the tokenizer of model '${row.name}' from '${row.source}': ${(err as Error).message}. ` +
          `Serve reads tokenizers from the model's source as workers do: give it the same SWITCHYARD_MODELS_DIR (or hub access).`,
      );
    }
  }

  private async row(model: string): Promise<ModelRow> {
    const row = await findModel(this.db, model);
    if (!row) throw errors.modelNotFound(model);
    return row;
  }

  async tokenize(req: TokenizeRequest): Promise<Tokenized> {
    const row = await this.row(req.model);
    const m = await this.get(row);
    const param = 'text' in req.input ? 'prompt' : 'messages';
    const texts = 'text' in req.input ? [req.input.text] : req.input.messages.map((x) => x.content);
    const bound = readInputBound(row.input_bound);
    if (bound && needsMoreThan(texts, bound, m.contextLength)) {
      throw errors.contextLength(`This model's maximum context length is ${m.contextLength} tokens; the ${param} are longer than that.`, param);
    }
    let text: string;
    if ('text' in req.input) text = req.input.text;
    else {
      try {
        // Exactly as the worker renders a chat prompt (worker/model-thread.ts), so counts agree.
        text = m.tokenizer.apply_chat_template(req.input.messages, {
          tokenize: false,
          add_generation_prompt: req.input.addGenerationPrompt,
          ...(req.input.tools ? { tools: req.input.tools } : {}),
          ...(row.chat_template ? { chat_template: row.chat_template } : {}),
        }) as string;
      } catch (err) {
        throw errors.invalid(`The chat template could not be applied: ${(err as Error).message}`, 'messages', 'invalid_chat_template');
      }
    }
    try {
      return { model: row.name, tokens: m.tokenizer.encode(text, { add_special_tokens: req.input.addSpecialTokens }), maxModelLen: m.contextLength };
    } catch (err) {
      if (err instanceof RangeError) throw errors.contextLength('The input is too long to tokenize. Please reduce its length.', param);
      throw err;
    }
  }

  async detokenize(model: string, tokens: number[]): Promise<string> {
    const row = await this.row(model);
    const m = await this.get(row);
    const bad = tokens.findIndex((t) => t >= m.vocab);
    if (bad >= 0) throw errors.invalid(`Token id ${tokens[bad]} is outside the model's vocabulary of ${m.vocab}.`, `tokens[${bad}]`, 'invalid_token');
    try {
      return m.tokenizer.decode(tokens);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      throw errors.invalid(`These tokens could not be decoded: ${(err as Error).message}`, 'tokens', 'invalid_token');
    }
  }
}
