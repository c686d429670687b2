import type { FastifyInstance } from 'fastify';
import { getRequest, listRequests, type Cursor, type RequestStatus } from '../../db/admin-repo.js';
import { errors } from '../../protocol/errors.js';
import type { AdminDeps } from './index.js';
import { Params, UUID, type Query } from './params.js';

const STATUSES: readonly RequestStatus[] = ['queued', 'running', 'completed', 'failed', 'cancelled'];
export const MAX_LIST_LIMIT = 200;

/** The cursor is opaque to clients: base64url of `micros.id`. */
const encodeCursor = (c: Cursor) => Buffer.from(`${c.micros}.${c.id}`).toString('base64url');

function decodeCursor(s: string): Cursor {
  const [micros, id, ...rest] = Buffer.from(s, 'base64url').toString('utf8').split('.');
  if (rest.length || !micros || !/^-?\d{1,17}$/.test(micros) || !id || !UUID.test(id)) {
    throw errors.invalid("'after' is not a cursor this API gave out (use next_cursor from the previous page).", 'after');
  }
  return { micros, id };
}

/** GET /admin/requests (search the log, newest first) and GET /admin/requests/:id (one, with its events). */
export function adminRequestRoutes(app: FastifyInstance, deps: AdminDeps): void {
  app.get('/requests', async (request) => {
    const p = new Params(request.query as Query, ['model', 'key_id', 'status', 'endpoint', 'since', 'until', 'limit', 'after']);
    const after = p.string('after');
    const page = await listRequests(deps.database.pool, {
      model: p.string('model'),
      keyId: p.uuid('key_id'),
      status: p.oneOf('status', STATUSES),
      endpoint: p.string('endpoint'),
      ...p.range(),
      limit: p.int('limit', 1, MAX_LIST_LIMIT, 50),
      after: after === undefined ? undefined : decodeCursor(after),
    });
    return { object: 'list', data: page.rows, has_more: page.hasMore, next_cursor: page.next ? encodeCursor(page.next) : null };
  });

  app.get<{ Params: { id: string } }>('/requests/:id', async (request) => {
    const id = request.params.id;
    // Ids are UUIDs; responses and chat completions show them with a prefix, which is accepted.
    const bare = id.replace(/^(chatcmpl-|cmpl-|resp_|req_)/, '');
    const uuid = /^[0-9a-f]{32}$/i.test(bare) ? bare.replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5') : bare;
    if (!UUID.test(uuid)) throw errors.notFound(`No request with id '${id}'.`);
    const detail = await getRequest(deps.database.pool, uuid);
    if (!detail) throw errors.notFound(`No request with id '${id}'.`);
    return { object: 'admin.request', ...detail };
  });
}
