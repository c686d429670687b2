import type { ErrorBody } from '../../protocol/errors.js';

/**
 * An error that crosses the model thread's boundary as plain data. `user` errors are the
 * client's fault (bad template, prompt too long): reported as-is, never retried. `cancelled`
 * ends quietly. Anything else is a server fault.
 */
export class ThreadError extends Error {
  constructor(
    readonly kind: 'user' | 'cancelled' | 'server',
    readonly status: number,
    readonly body: ErrorBody,
    /** For a cancelled generation: how many tokens it had produced when it stopped. */
    readonly generatedTokens = 0,
  ) {
    super(body.message);
  }

  static user(status: number, message: string, code: string | null = null, param: string | null = null): ThreadError {
    return new ThreadError('user', status, { message, type: 'invalid_request_error', code, param });
  }

  static cancelled(generatedTokens = 0): ThreadError {
    return new ThreadError('cancelled', 499, { message: 'The request was cancelled.', type: 'invalid_request_error', code: 'cancelled', param: null }, generatedTokens);
  }

  static server(message: string, code: string | null = 'internal_error', status = 500): ThreadError {
    return new ThreadError('server', status, { message, type: 'server_error', code, param: null });
  }

  toJSON() {
    return { kind: this.kind, status: this.status, body: this.body, generatedTokens: this.generatedTokens };
  }

  static from(value: unknown): ThreadError {
    if (value instanceof ThreadError) return value;
    const v = value as { kind?: ThreadError['kind']; status?: number; body?: ErrorBody; generatedTokens?: number } | null;
    if (v && v.kind && v.status && v.body) return new ThreadError(v.kind, v.status, v.body, v.generatedTokens ?? 0);
    return ThreadError.server(value instanceof Error ? value.message : String(value));
  }
}
