import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Engine } from '../engine/types.js';

/**
 * Stops a request's work when its client goes away before the answer is complete. Returns the
 * two hooks a route needs: record each request id once queued (the first also as the
 * x-request-id header), mark the answer as sent. One HTTP request may queue several
 * generations (/v1/completions with a list of prompts): a disconnect cancels every one, and
 * one queued after the client left is cancelled at once.
 */
export function cancelOnClose(request: FastifyRequest, reply: FastifyReply, engine: Engine) {
  const requestIds: string[] = [];
  let finished = false;
  let closed = false;
  const cancel = (id: string) => engine.cancel(id).catch((err) => request.log.warn({ err }, 'cancel failed'));
  reply.raw.on('close', () => {
    closed = true;
    if (!finished) for (const id of requestIds) void cancel(id);
  });
  return {
    // The id goes on the response at once, so errors that come after queueing carry it too.
    queued: (id: string) => {
      requestIds.push(id);
      if (closed && !finished) return void cancel(id);
      if (requestIds.length === 1 && !reply.sent && !reply.raw.headersSent) reply.header('x-request-id', id);
    },
    finished: () => void (finished = true),
  };
}
