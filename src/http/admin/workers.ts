import type { FastifyInstance } from 'fastify';
import { modelWorkers } from '../../db/admin-stats-repo.js';
import { workerTimeoutMs } from '../../engine/reaper.js';
import type { AdminDeps } from './index.js';
import { Params, type Query } from './params.js';

/** GET /admin/workers: each model with its live workers and queue depth, across every serve. */
export function adminWorkerRoutes(app: FastifyInstance, deps: AdminDeps): void {
  const timeoutMs = workerTimeoutMs();
  app.get('/workers', async (request) => {
    new Params(request.query as Query, []);
    const data = await modelWorkers(deps.database.pool, timeoutMs);
    return { object: 'list', worker_timeout_s: timeoutMs / 1000, data };
  });
}
