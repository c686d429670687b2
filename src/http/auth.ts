import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Db } from '../db/pool.js';
import { findActiveKey } from '../db/keys-repo.js';
import { errors } from '../protocol/errors.js';
import type { RequestContext } from '../serving/context.js';

declare module 'fastify' {
  interface FastifyRequest {
    ctx: RequestContext;
    /** The registered name the request's model resolved to (null: none did); labels metrics. */
    resolvedModel: string | null;
  }
}

function context(request: FastifyRequest, keyId: string | null, allowedModels: string[] | null): RequestContext {
  return { keyId, allowedModels, onModel: (name) => void (request.resolvedModel = name) };
}

/**
 * Bearer-key auth (on by default) as a hook of the encapsulated scope that holds the /v1
 * routes (see app.ts). It runs for whatever route a request reached, so it is decided on the
 * routed path: a URL spelled so that a prefix test misses it (`/v%31/models`, absolute-form
 * `http://host/v1/models`) still meets it. `db: null` turns it off, for local experiments
 * only: then every caller may use every model.
 */
export function registerAuth(scope: FastifyInstance, db: Db | null): void {
  scope.addHook('onRequest', async (request: FastifyRequest) => {
    if (!db) {
      request.ctx = context(request, null, null);
      return;
    }
    const header = request.headers.authorization;
    const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!match) throw errors.unauthenticated();
    const key = await findActiveKey(db, match[1]!);
    if (!key) throw errors.invalidKey();
    request.ctx = context(request, key.id, key.models);
  });
}

/** Request fields every route may read; outside /v1 they stay empty. */
export function decorateRequests(app: FastifyInstance): void {
  app.decorateRequest('ctx', null as unknown as RequestContext);
  app.decorateRequest('resolvedModel', null);
}
