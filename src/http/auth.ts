import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Db } from '../db/pool.js';
import { findActiveKey, hashKey } from '../db/keys-repo.js';
import type { ApiKeyRow } from '../db/types.js';
import { errors } from '../protocol/errors.js';
import type { RequestContext } from '../serving/context.js';

declare module 'fastify' {
  interface FastifyRequest {
    ctx: RequestContext;
    /** The registered name the request's model resolved to (null: none did); labels metrics. */
    resolvedModel: string | null;
  }
}

function context(request: FastifyRequest, reply: FastifyReply, keyId: string | null, allowedModels: string[] | null, admin: boolean): RequestContext {
  return {
    keyId, allowedModels, admin,
    onModel: (name) => void (request.resolvedModel = name),
    // Set on the reply before it is sent: a JSON body, an SSE stream (sse.ts copies them) or an error all carry them.
    onLimits: (headers) => void reply.headers(headers),
  };
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Anthropic's clients send the key as `x-api-key`; routes that speak their API accept it too. */
    xApiKey?: boolean;
  }
}

/**
 * Bearer-key auth (on by default) as a hook of the encapsulated scope that holds the /v1
 * routes (see app.ts). It runs for whatever route a request reached, so it is decided on the
 * routed path: a URL spelled so that a prefix test misses it (`/v%31/models`, absolute-form
 * `http://host/v1/models`) still meets it. `x-api-key` is read only when the route reached says
 * so in its config (never from the URL), and a request with no key at all is refused as before.
 * `keys: null` turns it off, for local experiments only: then every caller may use every model.
 */
export function registerAuth(scope: FastifyInstance, keys: KeyCache | null): void {
  scope.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    if (!keys) {
      request.ctx = context(request, reply, null, null, true);
      return;
    }
    const header = request.headers.authorization;
    const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    const apiKey = request.routeOptions.config?.xApiKey === true ? request.headers['x-api-key'] : undefined;
    const given = match?.[1] ?? (typeof apiKey === 'string' && /^\S+$/.test(apiKey.trim()) ? apiKey.trim() : undefined);
    if (!given) throw errors.unauthenticated();
    const key = await keys.find(given);
    if (!key) throw errors.invalidKey();
    request.ctx = context(request, reply, key.id, key.models, key.admin);
  });
}

/** Request fields every route may read; outside /v1 they stay empty. */
export function decorateRequests(app: FastifyInstance): void {
  app.decorateRequest('ctx', null as unknown as RequestContext);
  app.decorateRequest('resolvedModel', null);
}

/** How long a key lookup (found or not) is reused: a revocation reaches every serve within it. */
export const KEY_CACHE_MS = 1000;
const KEY_CACHE_MAX = 10_000;

/**
 * Key lookups of the last second, by the key's SHA-256: a busy client costs one query per second
 * instead of one per request. Unknown keys are remembered too (a flood of bad keys costs the
 * database no more), bounded in number; concurrent lookups of one key share one query.
 */
export class KeyCache {
  private readonly entries = new Map<string, { at: number; row: Promise<ApiKeyRow | undefined> }>();

  constructor(
    private readonly db: Db,
    private readonly ttlMs = KEY_CACHE_MS,
  ) {}

  find(key: string): Promise<ApiKeyRow | undefined> {
    const id = hashKey(key).toString('base64');
    const now = Date.now();
    const hit = this.entries.get(id);
    if (hit && now - hit.at < this.ttlMs) return hit.row;
    if (hit) this.entries.delete(id);
    const row = findActiveKey(this.db, key);
    // A failed lookup (database away) is not remembered.
    row.catch(() => this.entries.get(id)?.row === row && this.entries.delete(id));
    this.entries.set(id, { at: now, row });
    if (this.entries.size > KEY_CACHE_MAX) this.entries.delete(this.entries.keys().next().value!);
    return row;
  }
}
