import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { buildApp } from '../../../src/http/app.js';
import { openDatabase, type Database } from '../../../src/db/pool.js';
import { createKey } from '../../../src/db/keys-repo.js';
import { createTestDatabase, type TestDatabase } from '../../helpers/db.js';
import { FakeEngine } from '../../helpers/fake-app.js';
import { spellings } from '../../helpers/url-spellings.js';

/**
 * The /admin boundary on the real app and a real key table: no key is a 401, a model key (even
 * one scoped to every model) a 403 `admin_required`, however the URL is spelled; only an admin
 * key gets past both hooks (to the scope's 404 here: the paths asked for are not routes).
 */
let tdb: TestDatabase;
let database: Database;
let app: FastifyInstance;
let adminKey: string;
let modelKey: string;

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = openDatabase(tdb.url, { max: 2, applicationName: 'admin-auth-test' });
  app = buildApp({ engine: new FakeEngine(), database, auth: true, listening: () => true });
  adminKey = (await createKey(database.db, 'ops', null, { admin: true })).key;
  modelKey = (await createKey(database.db, 'app', null)).key;
});

afterAll(async () => {
  await app?.close();
  await database?.close();
  await tdb?.drop();
});

const as = (key: string | null) => (key ? { authorization: `Bearer ${key}` } : {});

it('needs an admin key on every spelling of an admin path', async () => {
  const urls = spellings('/admin/no-such-thing');
  expect(urls.length).toBeGreaterThan(20);
  for (const url of urls) {
    const none = await app.inject({ method: 'GET', url, headers: as(null) });
    const model = await app.inject({ method: 'GET', url, headers: as(modelKey) });
    // A spelling that reaches the /admin scope meets its hooks; one that misses it is some other 404.
    if (none.statusCode === 404) {
      expect(model.statusCode, url).toBe(404);
      continue;
    }
    expect(none.statusCode, url).toBe(401);
    expect(model.statusCode, url).toBe(403);
    expect(model.json().error.code, url).toBe('admin_required');
  }
  const admin = await app.inject({ method: 'GET', url: '/admin/no-such-thing', headers: as(adminKey) });
  expect(admin.statusCode).toBe(404);
  expect(admin.json().error.code).toBe('route_not_found');
});

it('a model key is refused before the route is looked up', async () => {
  const res = await app.inject({ method: 'POST', url: '/admin/keys', headers: as(modelKey), payload: { name: 'escalate', admin: true } });
  expect(res.statusCode).toBe(403);
  expect(res.json().error).toMatchObject({ type: 'permission_error', code: 'admin_required' });
});
