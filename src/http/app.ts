import Fastify, { type FastifyInstance } from 'fastify';
import type { Database } from '../db/pool.js';
import type { Engine } from '../engine/types.js';
import { ChatServing } from '../serving/chat.js';
import { ModelsServing } from '../serving/models.js';
import { EmbeddingsServing } from '../serving/embeddings.js';
import { embeddingRoutes } from './routes/embeddings.js';
import { completionRoutes } from './routes/completions.js';
import { CompletionsServing } from '../serving/completions.js';
import { decorateRequests, KeyCache, registerAuth } from './auth.js';
import { registerTracing } from './tracing.js';
import { notFound, registerErrorHandling } from './errors.js';
import { errors } from '../protocol/errors.js';
import { Metrics } from './metrics.js';
import { metricsObserver, registerObservability } from './observability.js';
import { chatRoutes } from './routes/chat.js';
import { healthRoutes } from './routes/health.js';
import { modelRoutes } from './routes/models.js';
import { responseRoutes } from './routes/responses.js';
import { ResponsesServing } from '../serving/responses.js';
import { PgResponseStore } from '../db/responses-repo.js';
import type { ResponseStore } from '../serving/response-store.js';
import { batchRoutes } from './routes/batches.js';
import { BatchServing } from '../serving/batches.js';
import { PgBatchStore } from '../db/batches-repo.js';
import type { Tokenizers } from '../engine/types.js';
import { TokenizeServing } from '../serving/tokenize.js';
import { tokenizeRoutes } from './routes/tokenize.js';
import { messagesRoutes } from './routes/messages.js';
import { MessagesServing } from '../serving/messages.js';
import { moderationRoutes } from './routes/moderations.js';
import { ModerationsServing } from '../serving/moderations.js';
import { legacyRoutes } from './routes/legacy.js';
import { EditsServing } from '../serving/edits.js';
import { EnginesServing } from '../serving/engines.js';
import { registerAdmin } from './admin/index.js';

export interface AppOptions {
  engine: Engine;
  database: Database;
  /** False only for local experiments: then /v1 needs no key. */
  auth: boolean;
  listening(): boolean;
  /** Request body limit in bytes (default 16 MiB: long chat histories are large). */
  bodyLimit?: number;
  logger?: boolean;
  /** Where responses are kept (default: ai.responses in `database`). */
  responseStore?: ResponseStore;
  /** Tokenizers for /tokenize, /detokenize and count_tokens (default: none, those answer 503). */
  tokenizers?: Tokenizers;
}

/**
 * The gateway as a Fastify instance; `server.ts` only listens. Order: errors → observability →
 * the /v1 scope (auth, then its routes) → open routes.
 */
export function buildApp(opts: AppOptions): FastifyInstance {
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: opts.bodyLimit ?? 16 * 1024 * 1024,
    // Requests may wait in the queue and generations may be long: no server-side timeouts.
    requestTimeout: 0,
    // Fastify's own 503 body during close is not OpenAI's envelope; in-flight and keep-alive
    // requests are served to the end instead (close stops accepting connections).
    return503OnClosing: false,
    // Errors Fastify answers before routing (a malformed percent-encoding in the path) go
    // through the same envelope as everything else.
    frameworkErrors: (error, _request, reply) => {
      const api = errors.invalid(`Invalid request: ${error.message}`, null, 'invalid_url');
      void (reply as { status(n: number): { send(b: unknown): unknown } }).status(api.status).send(api.toBody());
    },
    // Requests Node's HTTP parser rejects (bad header lines, conflicting lengths, oversized
    // headers) never reach Fastify: answer them in the envelope too, and close the socket.
    clientErrorHandler: (err, socket) => {
      const tooLarge = (err as { code?: string }).code === 'HPE_HEADER_OVERFLOW';
      const status = tooLarge ? 431 : 400;
      const body = JSON.stringify({
        error: { message: tooLarge ? 'Request headers are too large.' : 'Malformed HTTP request.', type: 'invalid_request_error', param: null, code: tooLarge ? 'headers_too_large' : 'bad_request' },
      });
      // A HEAD request must get no body (its client would read the body as the next response).
      const head = /^HEAD /.test((err as unknown as { rawPacket?: Buffer }).rawPacket?.toString('latin1', 0, 5) ?? '');
      if (socket.writable) {
        socket.end(
          `HTTP/1.1 ${status} ${tooLarge ? 'Request Header Fields Too Large' : 'Bad Request'}\r\nContent-Type: application/json\r\n` +
            `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`,
        );
      } else socket.destroy();
    },
  });
  registerErrorHandling(app);
  // Strict UTF-8: invalid bytes are a 400, not silently turned into U+FFFD and embedded.
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => {
    let text: string;
    try {
      text = utf8.decode(body as Buffer);
    } catch {
      return done(errors.invalid('The request body is not valid UTF-8.', null, 'invalid_encoding'));
    }
    if (text.trim() === '') return done(errors.invalidJson('the body is empty'));
    try {
      done(null, JSON.parse(text));
    } catch (err) {
      done(errors.invalidJson((err as Error).message));
    }
  });
  decorateRequests(app);
  registerTracing(app);
  const metrics = new Metrics();
  registerObservability(app, metrics, opts.database.pool);
  const observer = metricsObserver(metrics);
  const keys = opts.auth ? new KeyCache(opts.database.db) : null;
  const tokenize = new TokenizeServing(opts.engine, opts.tokenizers ?? null);
  // Every /v1 route lives in this one encapsulated scope and the key check is its hook, so
  // auth follows the route a request reached, never how its URL was spelled. Unknown /v1 paths
  // get the scope's 404 after the key check, as the routes do.
  void app.register(
    async (v1) => {
      registerAuth(v1, keys);
      v1.setNotFoundHandler(notFound);
      const chat = new ChatServing(opts.engine, observer);
      chatRoutes(v1, chat, opts.engine);
      messagesRoutes(v1, new MessagesServing(opts.engine, chat, opts.tokenizers ?? null), opts.engine);
      const embeddings = new EmbeddingsServing(opts.engine, observer);
      const completions = new CompletionsServing(opts.engine, observer);
      const models = new ModelsServing(opts.engine);
      embeddingRoutes(v1, embeddings, opts.engine);
      completionRoutes(v1, completions, opts.engine);
      modelRoutes(v1, models);
      responseRoutes(v1, new ResponsesServing(opts.engine, opts.responseStore ?? new PgResponseStore(opts.database.db), observer), opts.engine);
      batchRoutes(v1, new BatchServing(opts.engine, new PgBatchStore(opts.database.pool)));
      moderationRoutes(v1, new ModerationsServing(opts.engine, observer), opts.engine);
      legacyRoutes(v1, new EditsServing(chat), new EnginesServing(models, completions, embeddings), opts.engine);
    },
    { prefix: '/v1' },
  );
  // vLLM serves these at the root; they get a scope of their own with the same key hook (and the
  // same key cache), so they too are decided on the routed path.
  void app.register(async (root) => {
    registerAuth(root, keys);
    tokenizeRoutes(root, tokenize);
  });
  // The admin API: admin keys only (see admin/index.ts).
  void app.register(async (admin) => registerAdmin(admin, keys, { engine: opts.engine, database: opts.database }), { prefix: '/admin' });
  healthRoutes(app, { pool: opts.database.pool, listening: opts.listening });
  return app;
}
