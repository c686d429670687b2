import type { FastifyInstance } from 'fastify';
import type { Database } from '../../db/pool.js';
import type { Engine } from '../../engine/types.js';
import { errors } from '../../protocol/errors.js';
import { type KeyCache, registerAuth } from '../auth.js';
import { notFound } from '../errors.js';
import { adminRequestRoutes } from './requests.js';
import { adminUsageRoutes } from './usage.js';
import { adminWorkerRoutes } from './workers.js';
import { registerKeyRoutes } from './keys.js';
import { registerModelRoutes } from './models.js';
import { registerTeamRoutes } from './teams.js';

/** What the /admin routes may use. */
export interface AdminDeps {
  engine: Engine;
  database: Database;
}

/**
 * The /admin scope: the same key hook as /v1 (decided on the routed path, so no URL spelling
 * skips it), then a second hook that lets only admin keys through. A model key gets a 403, not
 * a 404, so a client can tell "wrong key" from "no such route"; unknown /admin paths answer 404
 * only after both hooks. Each group of admin routes registers itself below.
 */
export function registerAdmin(scope: FastifyInstance, keys: KeyCache | null, deps: AdminDeps): void {
  registerAuth(scope, keys);
  scope.addHook('onRequest', async (request) => {
    if (!request.ctx.admin) throw errors.adminRequired();
  });
  scope.setNotFoundHandler(notFound);
  adminRequestRoutes(scope, deps);
  adminUsageRoutes(scope, deps);
  adminWorkerRoutes(scope, deps);
  registerKeyRoutes(scope, deps);
  registerTeamRoutes(scope, deps);
  registerModelRoutes(scope, deps);
}
