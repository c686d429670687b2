import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Engine } from '../engine/types.js';

/**
 * Stops a request's work when its client goes away before the answer is complete. Returns the
 * two hooks a route needs: record the request id once queued (also as the x-request-id
 * header), mark the answer as sent.
 */
export function cancelOnClose(request: FastifyRequest, reply: FastifyReply, engine: Engine) {
  let requestId: string | null = null;
  let finished = false;
  reply.raw.on('close', () => {
    if (!finished && requestId) engine.cancel(requestId).catch((err) => request.log.warn({ err }, 'cancel failed'));
  });
  return {
    // The id goes on the response at once, so errors that come after queueing carry it too.
    queued: (id: string) => {
      requestId = id;
      if (!reply.sent && !reply.raw.headersSent) reply.header('x-request-id', id);
    },
    finished: () => void (finished = true),
  };
}
