/**
 * The one error catalogue. Every failure a client can see is an ApiError, rendered by one
 * handler (src/http/errors.ts) into OpenAI's envelope:
 * `{"error": {"message", "type", "param", "code"}}`.
 */
export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'rate_limit_error'
  /** A budget is spent (OpenAI's type for an exhausted quota; still a 429). */
  | 'insufficient_quota'
  | 'server_error'
  | 'service_unavailable_error'
  | 'timeout_error';

export interface ErrorBody {
  message: string;
  type: ErrorType;
  param: string | null;
  code: string | null;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  toBody(): { error: ErrorBody } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }

  /** For errors that crossed a process boundary as JSON (worker → client). */
  static fromBody(status: number, body: ErrorBody): ApiError {
    return new ApiError(status, body.message, body.type, body.code, body.param);
  }
}

export const errors = {
  invalid: (message: string, param: string | null = null, code: string | null = null) =>
    new ApiError(400, message, 'invalid_request_error', code, param),
  unsupported: (param: string) =>
    new ApiError(400, `Parameter '${param}' is not supported by this server yet.`, 'invalid_request_error', 'unsupported_parameter', param),
  unknownParam: (param: string) =>
    new ApiError(400, `Unrecognized request argument supplied: ${param}`, 'invalid_request_error', 'unknown_parameter', param),
  invalidJson: (detail: string) =>
    new ApiError(400, `We could not parse the JSON body of your request. (${detail})`, 'invalid_request_error', 'invalid_json'),
  unauthenticated: (message = 'Missing API key. Pass it as "Authorization: Bearer KEY".') =>
    new ApiError(401, message, 'authentication_error', 'invalid_api_key'),
  invalidKey: () => new ApiError(401, 'Incorrect API key provided.', 'authentication_error', 'invalid_api_key'),
  forbiddenModel: (model: string) =>
    new ApiError(403, `This API key may not use the model '${model}'.`, 'permission_error', 'model_not_allowed', 'model'),
  adminRequired: () =>
    new ApiError(403, 'This API key may not use the admin API: create one with `switchyard keys create --admin`.', 'permission_error', 'admin_required'),
  modelNotFound: (model: string) =>
    new ApiError(404, `The model '${model}' does not exist.`, 'not_found_error', 'model_not_found', 'model'),
  /** A stored object (file, batch) that does not exist, or belongs to another key. */
  notFound: (message: string) => new ApiError(404, message, 'invalid_request_error', 'not_found'),
  routeNotFound: (method: string, url: string) =>
    new ApiError(404, `Unknown route: ${method} ${url}`, 'not_found_error', 'route_not_found'),
  contextLength: (message: string, param = 'messages') =>
    new ApiError(400, message, 'invalid_request_error', 'context_length_exceeded', param),
  queueFull: (model: string, retryAfter: number) =>
    Object.assign(
      new ApiError(429, `The queue for model '${model}' is full. Retry after ${retryAfter} s.`, 'rate_limit_error', 'queue_full', 'model'),
      { retryAfter },
    ),
  timeout: (seconds: number) =>
    new ApiError(504, `The request did not finish within ${seconds} s; it was cancelled.`, 'timeout_error', 'request_timeout'),
  unavailable: (message: string) => new ApiError(503, message, 'service_unavailable_error', 'service_unavailable'),
  internal: (message = 'The server had an error while processing your request.') =>
    new ApiError(500, message, 'server_error', 'internal_error'),
  modelLoad: (message: string) => new ApiError(503, message, 'server_error', 'model_load_failed'),
  workerLost: () =>
    new ApiError(502, 'The worker generating this stream stopped part-way; the request was restarted elsewhere but its earlier output was already sent. Retry the request.', 'server_error', 'worker_lost'),
};
