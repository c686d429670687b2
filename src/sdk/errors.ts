import { ApiError, errors, type ErrorType } from '../protocol/errors.js';
import { isDatabaseUnavailable } from '../db/errors.js';

/**
 * Errors the SDK raises: one class per kind, as openai-node has, each carrying the HTTP
 * status the gateway would have answered with, OpenAI's `type`, `code` and `param`, and the
 * request id when the request got as far as being queued. Messages are the gateway's.
 */
export class SwitchyardError extends Error {
  readonly status: number;
  readonly type: ErrorType;
  readonly code: string | null;
  readonly param: string | null;
  readonly requestId: string | null;

  constructor(api: ApiError, requestId: string | null = null) {
    super(api.message);
    this.name = new.target.name;
    this.status = api.status;
    this.type = api.type;
    this.code = api.code;
    this.param = api.param;
    this.requestId = requestId;
  }

  /** The error in OpenAI's wire envelope, exactly as the HTTP API would send it. */
  get error() {
    return { message: this.message, type: this.type, param: this.param, code: this.code };
  }
}

export class BadRequestError extends SwitchyardError {}
export class AuthenticationError extends SwitchyardError {}
export class PermissionDeniedError extends SwitchyardError {}
export class NotFoundError extends SwitchyardError {}
export class ConflictError extends SwitchyardError {}
export class UnprocessableEntityError extends SwitchyardError {}
export class RateLimitError extends SwitchyardError {}
export class APITimeoutError extends SwitchyardError {}
export class InternalServerError extends SwitchyardError {}

const byStatus: Record<number, new (api: ApiError, requestId: string | null) => SwitchyardError> = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  408: APITimeoutError,
  409: ConflictError,
  413: BadRequestError,
  422: UnprocessableEntityError,
  429: RateLimitError,
  504: APITimeoutError,
};

/** Turns whatever the engine threw into the SDK's error class for it. */
export function toSdkError(err: unknown, requestId: string | null = null): SwitchyardError {
  if (err instanceof SwitchyardError) return err;
  const api =
    err instanceof ApiError
      ? err
      : isDatabaseUnavailable(err)
        ? errors.unavailable(`The database is unavailable: ${(err as Error).message}`)
        : new ApiError(500, err instanceof Error ? err.message : String(err), 'server_error', 'internal_error');
  const Cls = byStatus[api.status] ?? (api.status >= 500 ? InternalServerError : SwitchyardError);
  return new Cls(api, requestId);
}
