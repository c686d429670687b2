import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { RerankServing } from '../../serving/rerank.js';
import { cancelOnClose } from '../cancel-on-close.js';

/** `paths`: /rerank under /v1; /rerank and /v2/rerank at the root, as vLLM serves them. */
export function rerankRoutes(app: FastifyInstance, rerank: RerankServing, engine: Engine, paths: string[]): void {
  for (const path of paths) {
    app.post(path, async (request, reply) => {
      const lifecycle = cancelOnClose(request, reply, engine);
      const result = await rerank.create(request.body, request.ctx, lifecycle.queued);
      lifecycle.finished();
      return reply.header('x-request-id', result.requestId).send(result.body);
    });
  }
}
