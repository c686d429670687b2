import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { CompletionsServing } from '../../serving/completions.js';
import { cancelOnClose } from '../cancel-on-close.js';
import { sendSse } from '../sse.js';

export function completionRoutes(app: FastifyInstance, completions: CompletionsServing, engine: Engine): void {
  app.post('/completions', async (request, reply) => {
    const lifecycle = cancelOnClose(request, reply, engine);
    const result = await completions.create(request.body, request.ctx, lifecycle.queued);
    reply.header('x-request-id', result.requestId);
    if (result.kind === 'json') {
      lifecycle.finished();
      return reply.send(result.body);
    }
    await sendSse(reply, result.chunks);
    lifecycle.finished();
  });
}
