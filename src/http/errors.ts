import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ApiError, errors } from '../protocol/errors.js';
import { isDatabaseUnavailable } from '../db/errors.js';
import { logFailure } from './observability.js';

/** Everything a route can throw, as the ApiError the client will see. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const fe = err as FastifyError;
  switch (fe.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return errors.invalidJson(fe.message);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError(415, "Unsupported content type: send the body as 'application/json'.", 'invalid_request_error', 'unsupported_media_type');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, 'The request body is too large.', 'invalid_request_error', 'request_too_large');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return errors.invalid('The Content-Length header does not match the body.');
  }
  if (err instanceof SyntaxError) return errors.invalidJson(err.message);
  if (isDatabaseUnavailable(err)) return errors.unavailable('The database is unavailable; retry shortly.');
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new ApiError(fe.statusCode, fe.message, 'invalid_request_error', fe.code ?? null);
  }
  return errors.internal();
}

/** The one error handler: every error leaves in OpenAI's envelope with its status. */
export function registerErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err, request, reply) => {
    const api = toApiError(err);
    if (api.status >= 500) logFailure(request, reply, err, api.status);
    // A budget or rate-limit refusal brings its own (Retry-After, x-ratelimit-*, x-should-retry).
    const own = (api as { headers?: Record<string, string> }).headers;
    if (own) reply.headers(own);
    else if (api.status === 503 || api.status === 429) reply.header('retry-after', String((api as { retryAfter?: number }).retryAfter ?? 1));
    return reply.status(api.status).send(api.toBody());
  });
  app.setNotFoundHandler(notFound);
}

export function notFound(request: FastifyRequest, reply: FastifyReply) {
  const api = errors.routeNotFound(request.method, request.url.split('?')[0]!);
  return reply.status(404).send(api.toBody());
}
