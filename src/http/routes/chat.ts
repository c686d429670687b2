import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { ChatServing } from '../../serving/chat.js';
import { cancelOnClose } from '../cancel-on-close.js';
import { sendSse } from '../sse.js';
import { errors } from '../../protocol/errors.js';
import { parseChatId, type ChatReplayServing } from '../../serving/chat-replay.js';

/**
 * Thin by design: the serving layer decides everything; the route picks JSON or SSE and
 * cancels the generation when the client goes away before it is finished.
 */
export function chatRoutes(app: FastifyInstance, chat: ChatServing, engine: Engine, replay?: ChatReplayServing): void {
  app.post('/chat/completions', async (request, reply) => {
    const lifecycle = cancelOnClose(request, reply, engine);
    const result = await chat.create(request.body, request.ctx, lifecycle.queued);
    if (result.kind === 'json') {
      lifecycle.finished();
      return reply.header('x-request-id', result.requestId).send(result.body);
    }
    reply.header('x-request-id', result.stream.requestId);
    // Our extension: a stream asked for as resumable runs to its end whether or not its client
    // stays, so that a client that lost its connection can resume it (GET below).
    // Only such a stream numbers its frames (`id:`): a plain stream stays byte for byte what
    // OpenAI sends, for clients whose own SSE parsing expects every event to start with `data:`.
    const resumable = request.headers['x-switchyard-resumable'] === 'true';
    if (resumable) lifecycle.finished();
    await sendSse(reply, result.stream.chunks, resumable ? { ids: { after: -1 } } : {});
    lifecycle.finished();
  });

  // Our extension: resume a stream after a disconnect (serving/chat-replay.ts). The generation
  // is not cancelled when this reader leaves: the original request owns it.
  if (replay) {
    app.get('/chat/completions/:id', async (request, reply) => {
      const q = request.query as Record<string, unknown>;
      if (q.stream !== 'true') throw errors.invalid("Only streams can be resumed: pass 'stream=true'.", 'stream');
      const after = lastEventId(request.headers['last-event-id'], q.starting_after);
      const left = new AbortController();
      reply.raw.on('close', () => left.abort());
      const chunks = await replay.replay((request.params as { id: string }).id, request.ctx, left.signal);
      reply.header('x-request-id', parseChatId((request.params as { id: string }).id));
      // HEAD: the stream's headers only; a stream would run on with nobody to read it.
      if (request.method === 'HEAD') return reply.type('text/event-stream; charset=utf-8').send();
      await sendSse(reply, chunks, { ids: { after } });
    });
  }
}

/** Last-Event-ID (the header an EventSource sends when it reconnects) or ?starting_after=N; -1: from the start. */
function lastEventId(header: string | string[] | undefined, query: unknown): number {
  const given = query !== undefined ? query : header;
  if (given === undefined) return -1;
  const param = query !== undefined ? 'starting_after' : 'Last-Event-ID';
  if (typeof given !== 'string' || !/^\d{1,15}$/.test(given)) throw errors.invalid(`Invalid value for '${param}': expected a non-negative integer (an event id).`, param);
  return Number(given);
}
