import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { EditsServing } from '../../serving/edits.js';
import type { EnginesServing } from '../../serving/engines.js';
import { errors } from '../../protocol/errors.js';
import { cancelOnClose } from '../cancel-on-close.js';
import { sendSse } from '../sse.js';

/**
 * Endpoints OpenAI retired that old applications still call (issue 22): /edits, and the engines
 * routes as aliases of /completions, /embeddings and /models. They live in the /v1 scope, so the
 * key hook, metrics and error envelope are the ones every route gets.
 */
export function legacyRoutes(app: FastifyInstance, edits: EditsServing, engines: EnginesServing, engine: Engine): void {
  app.post('/edits', async (request, reply) => {
    const lifecycle = cancelOnClose(request, reply, engine);
    const result = await edits.create(request.body, request.ctx, lifecycle.queued);
    lifecycle.finished();
    return reply.header('x-request-id', result.requestId).send(result.body);
  });

  app.get('/engines', async (request) => engines.list(request.ctx));
  // Engine ids are model ids, which may contain slashes (org/name): the id is the rest of the path.
  app.get('/engines/*', async (request) => engines.retrieve((request.params as { '*': string })['*'], request.ctx));
  app.post('/engines/*', async (request, reply) => {
    const rest = (request.params as { '*': string })['*'];
    const [, id, action] = /^(.+)\/(completions|embeddings)$/.exec(rest) ?? [];
    if (!id || !action) throw errors.routeNotFound(request.method, request.url.split('?')[0]!);
    const lifecycle = cancelOnClose(request, reply, engine);
    if (action === 'embeddings') {
      const result = await engines.embed(id, request.body, request.ctx, lifecycle.queued);
      lifecycle.finished();
      return reply.header('x-request-id', result.requestId).send(result.body);
    }
    const result = await engines.complete(id, request.body, request.ctx, lifecycle.queued);
    reply.header('x-request-id', result.requestId);
    if (result.kind === 'json') {
      lifecycle.finished();
      return reply.send(result.body);
    }
    await sendSse(reply, result.chunks);
    lifecycle.finished();
  });
}
