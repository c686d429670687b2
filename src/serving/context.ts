import type { Engine, ModelInfo } from '../engine/types.js';
import { errors } from '../protocol/errors.js';

/** Who is asking: the API key's id and model scope (null: any model). */
export interface RequestContext {
  keyId: string | null;
  allowedModels: string[] | null;
  /** The key may administer the gateway (/admin, the console); true when auth is off. */
  admin?: boolean;
  /** Told the registered name once the request's model resolves (the HTTP layer labels metrics with it). */
  onModel?(name: string): void;
  /** Told the headers admission set (x-ratelimit-*): the HTTP layer sends them with the response. */
  onLimits?(headers: Record<string, string>): void;
  /** The W3C trace context to queue work under (the HTTP request's span); absent: a new trace. */
  traceparent?: string | null;
}

export function mayUse(ctx: RequestContext, model: ModelInfo): boolean {
  if (!ctx.allowedModels) return true;
  return ctx.allowedModels.includes(model.name) || model.aliases.some((a) => ctx.allowedModels!.includes(a));
}

/** Resolves a model the caller may use: 404 when unknown, 403 when the key's scope excludes it. */
export async function resolveModel(engine: Engine, name: string, ctx: RequestContext): Promise<ModelInfo> {
  // No model has such a name, and Postgres could not even compare it (GET /v1/models/%00).
  if (name.includes('\u0000') || !name.isWellFormed()) throw errors.modelNotFound(name.replace(/\u0000/g, '\\0'));
  const model = await engine.getModel(name);
  if (!model) throw errors.modelNotFound(name);
  ctx.onModel?.(model.name);
  if (!mayUse(ctx, model)) throw errors.forbiddenModel(name);
  return model;
}

/**
 * How long a request may take before it is cancelled with a 504 (SWITCHYARD_REQUEST_TIMEOUT,
 * seconds, default 600): the whole answer for JSON responses, the wait for the first token for
 * streams (a stream that is producing may run as long as it needs).
 */
export function requestTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const s = Number(env.SWITCHYARD_REQUEST_TIMEOUT ?? 600);
  return Number.isFinite(s) && s > 0 ? s * 1000 : 600_000;
}

/** Resolves like `work`, or cancels the request and throws a 504 once `deadline` (epoch ms) passes. */
export async function beforeDeadline<T>(work: Promise<T>, deadline: number, cancel: () => Promise<void> | void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    // The 504 says the request was cancelled: record the cancellation before answering.
    timer = setTimeout(() => {
      Promise.resolve()
        .then(cancel)
        .catch(() => {})
        .finally(() => reject(errors.timeout(Math.round(requestTimeoutMs() / 1000))));
    }, Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}
