import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Db } from '../db/pool.js';
import { findActiveKey } from '../db/keys-repo.js';
import { errors } from '../protocol/errors.js';
import type { RequestContext } from '../serving/context.js';

declare module 'fastify' {
  interface FastifyRequest {
    ctx: RequestContext;
  }
}

const OPEN: RequestContext = { keyId: null, allowedModels: null };

/**
 * Bearer-key auth for every /v1 route (on by default). `db: null` turns it off, for local
 * experiments only: then every caller may use every model.
 */
export function registerAuth(app: FastifyInstance, db: Db | null): void {
  app.decorateRequest('ctx', null as unknown as RequestContext);
  app.addHook('onRequest', async (request: FastifyRequest) => {
    if (!request.url.startsWith('/v1/') && request.url !== '/v1') {
      request.ctx = OPEN;
      return;
    }
    if (!db) {
      request.ctx = OPEN;
      return;
    }
    const header = request.headers.authorization;
    const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!match) throw errors.unauthenticated();
    const key = await findActiveKey(db, match[1]!);
    if (!key) throw errors.invalidKey();
    request.ctx = { keyId: key.id, allowedModels: key.models };
  });
}
