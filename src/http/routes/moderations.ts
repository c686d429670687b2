import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { ModerationsServing } from '../../serving/moderations.js';
import { cancelOnClose } from '../cancel-on-close.js';

export function moderationRoutes(app: FastifyInstance, moderations: ModerationsServing, engine: Engine): void {
  app.post('/moderations', async (request, reply) => {
    const lifecycle = cancelOnClose(request, reply, engine);
    const result = await moderations.create(request.body, request.ctx, lifecycle.queued);
    lifecycle.finished();
    return reply.header('x-request-id', result.requestId).send(result.body);
  });
}
