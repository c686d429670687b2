import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { openDatabase, type Database } from '../../src/db/pool.js';
import { EmbedEnqueueCoalescer } from '../../src/engine/embed-coalescer.js';

/** Serve's embedding enqueue: requests that arrive together share one statement, each keeps its row. */
let tdb: TestDatabase;
let database: Database;

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = openDatabase(tdb.url, { max: 2, applicationName: 'coalescer-test' });
});

afterAll(async () => {
  await database?.close();
  await tdb?.drop();
});

const item = (inputs: unknown[]) => ({ id: randomUUID(), requestedModel: 'm', inputs, meta: {}, keyId: null });
const opts = (queueBound: number) => ({ maxAttempts: 5, listener: null, queueBound });

it('sends requests that arrive together in one statement, a row each, and keeps the queue bound inside it', async () => {
  const q = new EmbedEnqueueCoalescer(database.db);
  const items = Array.from({ length: 5 }, (_, i) => item([`text ${i}`]));
  const results = await Promise.all(items.map((it) => q.enqueue('bounded', it, opts(3))));
  expect(q.stats).toEqual({ statements: 1, requests: 5 });
  // The first three (in arrival order) fit under the bound of 3; the rest are refused, unwritten.
  expect(results).toEqual([true, true, true, false, false]);
  const rows = await database.pool.query<{ id: string; xmin: string }>(
    `select id::text, xmin::text from ai.requests where model = 'bounded' order by input->'input'->>0`,
  );
  expect(rows.rows.map((r) => r.id)).toEqual(items.slice(0, 3).map((i) => i.id));
  expect(new Set(rows.rows.map((r) => r.xmin)).size).toBe(1); // one transaction wrote them
});

it("fails only the request whose data the database refuses, not the others in its statement", async () => {
  const q = new EmbedEnqueueCoalescer(database.db);
  // jsonb cannot hold U+0000: the serve layer refuses it in HTTP bodies, so only a caller of the
  // engine could send it; it must not take the requests it travels with down with it.
  const good = [item(['fine 1']), item(['fine 2'])];
  const bad = item(['nul \u0000 inside']);
  const settled = await Promise.allSettled([q.enqueue('isolated', good[0]!, opts(100)), q.enqueue('isolated', bad, opts(100)), q.enqueue('isolated', good[1]!, opts(100))]);
  expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  expect(settled.filter((s) => s.status === 'fulfilled').map((s) => (s as PromiseFulfilledResult<boolean>).value)).toEqual([true, true]);
  const ids = (await database.pool.query<{ id: string }>(`select id::text from ai.requests where model = 'isolated' order by input->'input'->>0`)).rows.map((r) => r.id);
  expect(ids).toEqual(good.map((g) => g.id));
});

it('a request that finds no statement in flight goes out alone, at once', async () => {
  const q = new EmbedEnqueueCoalescer(database.db);
  expect(await q.enqueue('alone', item(['one']), opts(10))).toBe(true);
  expect(await q.enqueue('alone', item(['two']), opts(10))).toBe(true);
  expect(q.stats).toEqual({ statements: 2, requests: 2 });
});
