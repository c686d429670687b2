import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli } from '../helpers/stack.js';
import { Reaper } from '../../src/engine/reaper.js';

/** ai.prune and `switchyard prune`: what expires goes, nothing in flight does. */
let db: TestDatabase;
let sql: pg.Client;

const count = async (text: string) => Number((await sql.query(text)).rows[0].n);

/** A request `age` ago with `events` stream events of the same age. */
async function request(status: string, age: string, events = 2): Promise<string> {
  const finished = ['completed', 'failed', 'cancelled'].includes(status);
  const r = await sql.query(
    `insert into ai.requests (id, endpoint, model, requested_model, input, status, queued_at, finished_at)
     values (gen_random_uuid(), 'chat.completions', 'm', 'm', '{}', $1, now() - $2::interval, case when $3 then now() - $2::interval end)
     returning id`,
    [status, age, finished],
  );
  const id = r.rows[0].id as string;
  for (let s = 0; s < events; s++) {
    await sql.query(`insert into ai.request_events (request_id, seq, data, created_at) values ($1, $2, '{}', now() - $3::interval)`, [id, s, age]);
  }
  return id;
}

beforeAll(async () => {
  db = await createTestDatabase();
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  // Event rows need no model row, but a cache entry's vector needs a dimension: any will do.
  await sql.query(`insert into ai.embedding_cache (model, input_hash, embedding, tokens, created_at)
                   values ('m', 'old', '[1,2]', 1, now() - interval '40 days'), ('m', 'new', '[1,2]', 1, now())`);
});

afterAll(async () => {
  await sql?.end();
  await db?.drop();
});

it('deletes expired events, requests and cache entries by the defaults, and nothing unfinished', async () => {
  const oldDone = await request('completed', '40 days');
  const dayOld = await request('failed', '2 days');
  const fresh = await request('completed', '1 minute');
  const oldRunning = await request('running', '40 days');
  const oldQueued = await request('queued', '40 days', 0);
  const r = (await sql.query('select * from ai.prune()')).rows[0];
  expect(r).toEqual({ events: '4', requests: '1', cache: '1', skipped: false });
  const left = (await sql.query('select id from ai.requests')).rows.map((x) => x.id).sort();
  expect(left).toEqual([dayOld, fresh, oldRunning, oldQueued].sort());
  expect(await count(`select count(*) as n from ai.request_events where request_id = '${dayOld}'`)).toBe(0);
  expect(await count(`select count(*) as n from ai.request_events where request_id = '${fresh}'`)).toBe(2);
  expect(await count(`select count(*) as n from ai.request_events where request_id = '${oldRunning}'`)).toBe(2);
  expect(await count(`select count(*) as n from ai.embedding_cache`)).toBe(1);
  expect(oldDone).toBeTruthy();
});

it('deletes the events left of a request it deletes (events have no foreign key to cascade)', async () => {
  await sql.query(`insert into ai.settings values ('retention_events', 'never') on conflict (name) do update set value = excluded.value`);
  try {
    const old = await request('completed', '40 days');
    expect(await count(`select count(*) as n from ai.request_events where request_id = '${old}'`)).toBe(2);
    await sql.query('select * from ai.prune()');
    expect(await count(`select count(*) as n from ai.requests where id = '${old}'`)).toBe(0);
    expect(await count(`select count(*) as n from ai.request_events where request_id = '${old}'`)).toBe(0);
  } finally {
    await sql.query(`delete from ai.settings where name = 'retention_events'`);
  }
});

it('follows ai.settings: shorter periods, never, and rejects a bad value', async () => {
  await sql.query(`insert into ai.settings values ('retention_requests', 'never'), ('retention_events', '30 seconds')`);
  await request('completed', '400 days', 1);
  const r = (await sql.query('select * from ai.prune()')).rows[0];
  expect(r.requests).toBe('0');
  // That request's event, and the two of the finished request from a minute ago.
  expect(Number(r.events)).toBe(3);
  await sql.query(`update ai.settings set value = 'soon' where name = 'retention_requests'`);
  await expect(sql.query('select * from ai.prune()')).rejects.toThrow(/retention_requests: "soon" is not an interval or 'never'/);
  await sql.query(`delete from ai.settings where name like 'retention_%'`);
});

it('works in batches, and `switchyard prune` runs it until nothing is left', async () => {
  for (let i = 0; i < 5; i++) await request('cancelled', '90 days', 3);
  const first = (await sql.query('select * from ai.prune(2)')).rows[0];
  expect(first).toMatchObject({ events: '2', requests: '2' });
  const out = await cli(['prune'], { DATABASE_URL: db.url });
  expect(out.code, out.stderr).toBe(0);
  expect(out.stdout).toMatch(/pruned \d+ events, \d+ requests, 0 cache entries/);
  expect(await count(`select count(*) as n from ai.requests where finished_at < now() - interval '30 days'`)).toBe(0);
});

it('every serve and worker prunes on its own, once per SWITCHYARD_PRUNE_INTERVAL', async () => {
  const id = await request('completed', '60 days', 1);
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  const lines: string[] = [];
  const log = { info: (m: string) => void lines.push(m), warn: (m: string) => void lines.push(m) };
  try {
    const never = new Reaper(pool, log, 30_000, 30, 0);
    await never.pruneIfDue();
    expect(await count(`select count(*) as n from ai.requests where id = '${id}'`)).toBe(1);
    const reaper = new Reaper(pool, log, 30_000, 30, 20);
    await reaper.pruneIfDue(); // a fresh process waits one interval
    expect(await count(`select count(*) as n from ai.requests where id = '${id}'`)).toBe(1);
    await new Promise((r) => setTimeout(r, 30));
    await reaper.pruneIfDue();
    expect(await count(`select count(*) as n from ai.requests where id = '${id}'`)).toBe(0);
    expect(lines.join('\n')).toMatch(/pruned 1 events, 1 requests/);
  } finally {
    await pool.end();
  }
});
