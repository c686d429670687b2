import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { openDatabase, type Database } from '../../src/db/pool.js';
import { createKey, revokeKey } from '../../src/db/keys-repo.js';
import { KeyCache } from '../../src/http/auth.js';

/** Serve's key lookups against a real database: one query per key per TTL, revocation within it. */
let tdb: TestDatabase;
let database: Database;

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = openDatabase(tdb.url, { max: 2, applicationName: 'key-cache-test' });
  database.pool.on('acquire', () => acquired++);
});

afterAll(async () => {
  await database?.close();
  await tdb?.drop();
});

/** Queries made through the pool (every Kysely query acquires a client). */
let acquired = 0;
const lookups = async () => acquired;

it('reuses a lookup for its TTL, and a revoked key is refused once it has passed', async () => {
  const { key, row } = await createKey(database.db, 'cached', null);
  const cache = new KeyCache(database.db, 300);
  expect((await cache.find(key))?.id).toBe(row.id);
  expect(await cache.find('sy-not-a-key')).toBeUndefined();
  const before = await lookups();
  for (let i = 0; i < 50; i++) {
    expect((await cache.find(key))?.id).toBe(row.id);
    expect(await cache.find('sy-not-a-key')).toBeUndefined();
  }
  expect(await lookups()).toBe(before);
  await new Promise((r) => setTimeout(r, 350));
  expect(await revokeKey(database.db, row.id)).toBe(true);
  expect(await cache.find(key)).toBeUndefined();
});
