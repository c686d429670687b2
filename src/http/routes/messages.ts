import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import type { MessagesServing } from '../../serving/messages.js';
import { toAnthropicError } from '../../protocol/messages.js';
import { cancelOnClose } from '../cancel-on-close.js';
import { sendSse } from '../sse.js';
import { toApiError } from '../errors.js';
import { logFailure } from '../observability.js';

/**
 * Anthropic's Messages API, in a scope of its own inside /v1: its errors (the key check's
 * included, which runs for these routes) leave in Anthropic's envelope, and its routes accept
 * the key as `x-api-key` (route config read by the /v1 key hook).
 */
export function messagesRoutes(v1: FastifyInstance, messages: MessagesServing, engine: Engine): void {
  void v1.register(async (scope) => {
    scope.setErrorHandler((err, request, reply) => {
      const api = toApiError(err);
      if (api.status >= 500) logFailure(request, reply, err, api.status);
      if (api.status === 503 || api.status === 429) reply.header('retry-after', String((api as { retryAfter?: number }).retryAfter ?? 1));
      return reply.status(api.status).send(toAnthropicError(api));
    });
    const config = { xApiKey: true };
    scope.post('/messages', { config }, async (request, reply) => {
      const lifecycle = cancelOnClose(request, reply, engine);
      const result = await messages.create(request.body, request.ctx, lifecycle.queued);
      // Anthropic's clients read `request-id`; ours is the ai.requests row.
      reply.header('x-request-id', result.requestId).header('request-id', result.requestId);
      if (result.kind === 'json') {
        lifecycle.finished();
        return reply.send(result.body);
      }
      await sendSse(reply, result.events, { named: true, errorBody: (api) => toAnthropicError(api) });
      lifecycle.finished();
    });
    scope.post('/messages/count_tokens', { config }, async (request) => messages.countTokens(request.body, request.ctx));
  });
}
