import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { ChatServing } from '../../serving/chat.js';
import { cancelOnClose } from '../cancel-on-close.js';
import { sendSse } from '../sse.js';

/**
 * Thin by design: the serving layer decides everything; the route picks JSON or SSE and
 * cancels the generation when the client goes away before it is finished.
 */
export function chatRoutes(app: FastifyInstance, chat: ChatServing, engine: Engine): void {
  app.post('/chat/completions', async (request, reply) => {
    const lifecycle = cancelOnClose(request, reply, engine);
    const result = await chat.create(request.body, request.ctx, lifecycle.queued);
    if (result.kind === 'json') {
      lifecycle.finished();
      return reply.header('x-request-id', result.requestId).send(result.body);
    }
    reply.header('x-request-id', result.stream.requestId);
    await sendSse(reply, result.stream.chunks);
    lifecycle.finished();
  });
}
