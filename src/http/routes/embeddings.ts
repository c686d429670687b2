import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { EmbeddingsServing } from '../../serving/embeddings.js';
import { cancelOnClose } from '../cancel-on-close.js';

export function embeddingRoutes(app: FastifyInstance, embeddings: EmbeddingsServing, engine: Engine): void {
  app.post('/embeddings', async (request, reply) => {
    const lifecycle = cancelOnClose(request, reply, engine);
    const result = await embeddings.create(request.body, request.ctx, lifecycle.queued);
    lifecycle.finished();
    return reply.header('x-request-id', result.requestId).send(result.body);
  });
}
