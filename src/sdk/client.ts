import { loadConfig } from '../config.js';
import { addModel, findModel } from '../db/models-repo.js';
import { openDatabase, type Database } from '../db/pool.js';
import { EventHub } from '../engine/event-hub.js';
import { PgEngine } from '../engine/pg-engine.js';
import { logger } from '../log.js';
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage } from '../protocol/chat.js';
import type { EmbeddingList, EmbeddingRequest } from '../protocol/embeddings.js';
import { errors } from '../protocol/errors.js';
import type { Model, ModelList } from '../protocol/models.js';
import { ChatServing } from '../serving/chat.js';
import type { RequestContext } from '../serving/context.js';
import { EmbeddingsServing } from '../serving/embeddings.js';
import { ModerationsServing } from '../serving/moderations.js';
import type { ModerationRequest, ModerationResponse } from '../protocol/moderations.js';
import { ModelsServing } from '../serving/models.js';
import { toSdkError } from './errors.js';
import { PgResponseStore } from '../db/responses-repo.js';
import type { InputItemList, ResponseCreateRequest } from '../protocol/responses.js';
import { ResponsesServing } from '../serving/responses.js';
import { ResponseStream, withOutputText, type SdkResponse } from './responses.js';
import { batchResources } from './batches.js';

/** PostgresML's model object: a hub id or local path plus how to load it. */
export interface ModelObject {
  model: string;
  revision?: string;
  dtype?: string;
  torch_dtype?: string;
  device?: 'cpu' | 'cuda';
  device_map?: string;
  /** Accepted for compatibility; the worker reads HF_TOKEN from its own environment. */
  token?: string;
  chat_template?: string;
}

/** Every chat parameter the HTTP endpoint takes, except `model` and `messages`. */
export type ChatOptions = Omit<ChatCompletionRequest, 'model' | 'messages' | 'stream'>;

export interface ClientOptions {
  /**
   * Register a model given as an object (PostgresML style) when no model of that name is
   * registered (default true). Workers serving every model pick it up within seconds.
   */
  registerModels?: boolean;
  /** Connections in the client's pool (default 4; one more is its LISTEN connection). */
  poolSize?: number;
}

/** PostgresML maps torch dtypes; these are the ONNX files transformers.js has for them. */
const TORCH_DTYPES: Record<string, string> = { float32: 'fp32', float16: 'fp16', bfloat16: 'fp16', int8: 'q8', auto: 'fp32' };

/** PostgresML documents 0.8 as its default temperature for these methods. */
const PGML_TEMPERATURE = 0.8;

const SDK_CONTEXT: RequestContext = { keyId: null, allowedModels: null };

/**
 * Switchyard without HTTP: requests go straight into Postgres and come back through one
 * LISTEN connection, served by the same workers (and the same serving code) as the gateway.
 *
 * ```ts
 * const client = new OpenSourceAI();             // DATABASE_URL
 * const r = await client.chat_completions_create_async('smollm2', [{ role: 'user', content: 'Hi' }]);
 * const c = await client.chat.completions.create({ model: 'smollm2', messages, stream: true });
 * await client.close();
 * ```
 */
export class OpenSourceAI {
  private readonly databaseUrl: string;
  private readonly options: ClientOptions;
  private started: Promise<{ database: Database; hub: EventHub; engine: PgEngine }> | null = null;
  private closed = false;

  constructor(databaseUrl?: string, options: ClientOptions = {}) {
    this.databaseUrl = databaseUrl ?? loadConfig().databaseUrl;
    this.options = options;
  }

  private async connection() {
    if (this.closed) throw toSdkError(errors.invalid('This client is closed.'));
    this.started ??= (async () => {
      const database = openDatabase(this.databaseUrl, { max: this.options.poolSize ?? 4, applicationName: 'switchyard-sdk' });
      const hub = new EventHub(database.pool, this.databaseUrl, logger('sdk'));
      await hub.start();
      return { database, hub, engine: new PgEngine(database, hub) };
    })();
    return this.started;
  }

  /** A model name, or PostgresML's object form (registered on the fly when allowed). */
  private async modelName(model: string | ModelObject): Promise<{ name: string; chatTemplate?: string }> {
    if (typeof model === 'string') return { name: model };
    const { database } = await this.connection();
    if (!(await findModel(database.db, model.model))) {
      if (this.options.registerModels === false) throw errors.modelNotFound(model.model);
      const dtype = model.dtype ?? (model.torch_dtype ? TORCH_DTYPES[model.torch_dtype] ?? model.torch_dtype : undefined);
      const device = model.device ?? (model.device_map && /cuda|gpu/.test(model.device_map) ? 'cuda' : undefined);
      try {
        await addModel(database.db, {
          name: model.model,
          task: 'chat',
          source: model.model,
          ...(model.revision ? { revision: model.revision } : {}),
          ...(dtype ? { dtype } : {}),
          ...(device ? { device } : {}),
        });
      } catch (err) {
        if ((err as { code?: string }).code !== '23505') throw err; // registered concurrently: fine
      }
    }
    return { name: model.model, ...(model.chat_template ? { chatTemplate: model.chat_template } : {}) };
  }

  private async run<T>(fn: (engine: PgEngine, onQueued: (id: string) => void) => Promise<T>): Promise<T> {
    let requestId: string | null = null;
    try {
      const { engine } = await this.connection();
      return await fn(engine, (id) => (requestId = id));
    } catch (err) {
      throw toSdkError(err, requestId);
    }
  }

  // ---- openai-node shape -----------------------------------------------------------------

  readonly chat = {
    completions: {
      create: ((body: ChatCompletionRequest & { stream?: boolean | null }) => this.createChat(body)) as {
        (body: ChatCompletionRequest & { stream: true }): Promise<ChatStream>;
        (body: ChatCompletionRequest & { stream?: false | null }): Promise<ChatCompletion>;
        (body: ChatCompletionRequest & { stream?: boolean | null }): Promise<ChatCompletion | ChatStream>;
      },
    },
  };

  readonly embeddings = {
    create: (body: EmbeddingRequest): Promise<EmbeddingList> =>
      this.run(async (engine, onQueued) => (await new EmbeddingsServing(engine).create(body, SDK_CONTEXT, onQueued)).body),
  };

  /** POST /v1/moderations without HTTP: a registered moderation model (`--task moderation`) classifies the input. */
  readonly moderations = {
    create: (body: ModerationRequest): Promise<ModerationResponse> =>
      this.run(async (engine, onQueued) => (await new ModerationsServing(engine).create(body, SDK_CONTEXT, onQueued)).body),
  };

  readonly models = {
    list: (): Promise<ModelList> => this.run((engine) => new ModelsServing(engine).list(SDK_CONTEXT)),
    retrieve: (id: string): Promise<Model> => this.run((engine) => new ModelsServing(engine).retrieve(id, SDK_CONTEXT)),
  };

  /**
   * The Responses API, stored in the same tables as the gateway's (ai.responses). Responses made
   * here have no API key: the SDK sees those, and ai.my_responses shows them to the role that
   * made them.
   */
  readonly responses = {
    create: ((body: ResponseCreateRequest) => this.createResponse(body)) as {
      (body: ResponseCreateRequest & { stream: true }): Promise<ResponseStream>;
      (body: ResponseCreateRequest & { stream?: false | null }): Promise<SdkResponse>;
      (body: ResponseCreateRequest): Promise<SdkResponse | ResponseStream>;
    },
    retrieve: ((id: string, query?: { stream?: boolean; starting_after?: number }) =>
      this.run(async () => {
        const serving = await this.responsesServing();
        if (query?.stream) return new ResponseStream(id, await serving.stream(id, SDK_CONTEXT, query.starting_after ?? null), null);
        return withOutputText(await serving.retrieve(id, SDK_CONTEXT));
      })) as {
      (id: string, query: { stream: true; starting_after?: number }): Promise<ResponseStream>;
      (id: string, query?: { stream?: false; starting_after?: number }): Promise<SdkResponse>;
    },
    cancel: (id: string): Promise<SdkResponse> => this.run(async () => withOutputText(await (await this.responsesServing()).cancel(id, SDK_CONTEXT))),
    delete: (id: string): Promise<{ id: string; object: 'response'; deleted: true }> => this.run(async () => (await this.responsesServing()).delete(id, SDK_CONTEXT)),
    inputItems: {
      list: (id: string, query: { after?: string; limit?: number; order?: 'asc' | 'desc' } = {}): Promise<InputItemList> =>
        this.run(async () => (await this.responsesServing()).inputItems(id, SDK_CONTEXT, query)),
    },
  };

  private readonly batchApi = batchResources(() => this.connection(), (fn) => this.run(() => fn()), SDK_CONTEXT);

  /** OpenAI's Files API (batch input and output files), as `/v1/files` keeps them. */
  readonly files = this.batchApi.files;

  /** OpenAI's Batch API on the request queue, as `/v1/batches`: lines run as batch work on the same workers. */
  readonly batches = this.batchApi.batches;

  private async responsesServing(): Promise<ResponsesServing> {
    const { database, engine } = await this.connection();
    return new ResponsesServing(engine, new PgResponseStore(database.db));
  }

  private createResponse(body: unknown): Promise<SdkResponse | ResponseStream> {
    return this.run(async (engine, onQueued) => {
      const result = await (await this.responsesServing()).create(body, SDK_CONTEXT, onQueued);
      if (result.kind === 'json') return withOutputText(result.body);
      const id = result.requestId;
      return new ResponseStream(`resp_${id.replaceAll('-', '')}`, result.events, result.background ? null : () => engine.cancel(id));
    });
  }

  private createChat(body: unknown): Promise<ChatCompletion | ChatStream> {
    return this.run(async (engine, onQueued) => {
      const result = await new ChatServing(engine).create(body, SDK_CONTEXT, onQueued);
      if (result.kind === 'json') return result.body;
      return new ChatStream(result.stream.requestId, result.stream.chunks, () => engine.cancel(result.stream.requestId));
    });
  }

  // ---- PostgresML's OpenSourceAI methods -----------------------------------------------------

  /** PostgresML's arguments: options as an object, or positional (max_tokens, temperature, n, chat_template). */
  private async pgmlBody(model: string | ModelObject, messages: ChatMessage[], rest: unknown[], stream: boolean): Promise<ChatCompletionRequest> {
    const options: ChatOptions =
      rest.length === 1 && typeof rest[0] === 'object' && rest[0] !== null
        ? (rest[0] as ChatOptions)
        : Object.fromEntries(
            (['max_tokens', 'temperature', 'n', 'chat_template'] as const).flatMap((k, i) => (rest[i] === undefined || rest[i] === null ? [] : [[k, rest[i]]])),
          );
    const { name, chatTemplate } = await this.modelName(model);
    return {
      temperature: PGML_TEMPERATURE,
      ...(chatTemplate ? { chat_template: chatTemplate } : {}),
      ...options,
      model: name,
      messages,
      ...(stream ? { stream: true } : {}),
    };
  }

  /** Resolves to the `chat.completion` object. */
  chat_completions_create_async(model: string | ModelObject, messages: ChatMessage[], ...options: unknown[]): Promise<ChatCompletion> {
    return this.run(async () => this.pgmlBody(model, messages, options, false)).then((body) => this.createChat(body) as Promise<ChatCompletion>);
  }

  /** An async iterator of `chat.completion.chunk` objects. */
  async chat_completions_create_stream_async(model: string | ModelObject, messages: ChatMessage[], ...options: unknown[]): Promise<ChatStream> {
    const body = await this.run(async () => this.pgmlBody(model, messages, options, true));
    return this.createChat(body) as Promise<ChatStream>;
  }

  /** Blocks until the `chat.completion` object is there (runs the request on a helper thread). */
  chat_completions_create(model: string | ModelObject, messages: ChatMessage[], ...options: unknown[]): ChatCompletion {
    return this.syncBridge().call('chat_completions_create_async', [model, messages, ...options]) as ChatCompletion;
  }

  /** A synchronous iterator of `chat.completion.chunk` objects (each `next()` blocks). */
  chat_completions_create_stream(model: string | ModelObject, messages: ChatMessage[], ...options: unknown[]): IterableIterator<ChatCompletionChunk> {
    return this.syncBridge().stream([model, messages, ...options]);
  }

  private bridge: import('./sync-bridge.js').SyncBridge | null = null;
  private syncBridge() {
    if (this.closed) throw toSdkError(errors.invalid('This client is closed.'));
    this.bridge ??= new SyncBridgeCtor(this.databaseUrl, this.options);
    return this.bridge;
  }

  /** Releases the pool, the LISTEN connection and the helper thread; the process can then exit. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.bridge?.close();
    if (this.started) {
      const { database, hub } = await this.started.catch(() => ({ database: null, hub: null }));
      await hub?.stop();
      await database?.close();
    }
  }
}

/** A streamed chat completion: async-iterable chunks; `abort()` stops the generation. */
export class ChatStream implements AsyncIterable<ChatCompletionChunk> {
  constructor(
    readonly requestId: string,
    private readonly chunks: AsyncIterable<ChatCompletionChunk>,
    private readonly cancel: () => Promise<void>,
  ) {}

  async *[Symbol.asyncIterator](): AsyncIterator<ChatCompletionChunk> {
    let finished = false;
    try {
      for await (const chunk of this.chunks) yield chunk;
      finished = true;
    } catch (err) {
      finished = true;
      throw toSdkError(err, this.requestId);
    } finally {
      // A consumer that stops early (break, return, throw) cancels the generation.
      if (!finished) await this.cancel().catch(() => {});
    }
  }

  /** Stops the generation; iteration ends. */
  async abort(): Promise<void> {
    await this.cancel();
  }
}

import { SyncBridge as SyncBridgeCtor } from './sync-bridge.js';
