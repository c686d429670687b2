import type { FastifyInstance } from 'fastify';
import { USAGE_DIMENSIONS, usage, type UsageDimension } from '../../db/admin-stats-repo.js';
import type { AdminDeps } from './index.js';
import { Params, type Query } from './params.js';

/** Without `since`, usage covers the last 30 days: the default retention of the request log. */
const DEFAULT_WINDOW_MS = 30 * 24 * 3600 * 1000;

/** GET /admin/usage?group_by=day,model,key&since=&until=: requests and tokens from the request log. */
export function adminUsageRoutes(app: FastifyInstance, deps: AdminDeps): void {
  app.get('/usage', async (request) => {
    const p = new Params(request.query as Query, ['group_by', 'since', 'until']);
    const groupBy = p.list('group_by', Object.keys(USAGE_DIMENSIONS) as UsageDimension[]);
    const range = p.range();
    const since = range.since ?? new Date((range.until?.getTime() ?? Date.now()) - DEFAULT_WINDOW_MS);
    const rows = await usage(deps.database.pool, groupBy, since, range.until ?? null);
    return { object: 'list', group_by: groupBy, since: since.toISOString(), until: range.until?.toISOString() ?? null, data: rows };
  });
}
