import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';

/**
 * The embedding queue's claim (ai.claim_embeddings) serves interactive requests before batch
 * work, and takes at most p_batch_limit batch rows per claim, so an interactive request that
 * arrives during a backlog is next, whatever queued before it.
 */
let tdb: TestDatabase;
let pool: pg.Pool;

beforeAll(async () => {
  tdb = await createTestDatabase();
  pool = new pg.Pool({ connectionString: tdb.url, max: 2 });
});

afterAll(async () => {
  await pool?.end();
  await tdb?.drop();
});

async function enqueue(priority: number, text: string): Promise<string> {
  const id = randomUUID();
  await pool.query(`select ai.enqueue_embedding($1::uuid, 'e', 'e', $2::jsonb, '{}', null, 5, null, $3::smallint)`, [id, JSON.stringify([text]), priority]);
  return id;
}

const claim = async (limit: number, batchLimit: number | null) =>
  (await pool.query<{ id: string }>(`select id::text from ai.claim_embeddings('e', 'w1', $1, p_batch_limit => $2)`, [limit, batchLimit])).rows.map((r) => r.id);

it('claims interactive requests first and caps batch rows per claim', async () => {
  const backlog: string[] = [];
  for (let i = 0; i < 20; i++) backlog.push(await enqueue(1, `line ${i}`));
  const interactive = [await enqueue(0, 'a'), await enqueue(0, 'b'), await enqueue(0, 'c')];

  // The interactive rows, then the oldest batch rows, no more than the cap (a claim's rows come
  // back in no particular order).
  expect((await claim(10, 4)).sort()).toEqual([...interactive, ...backlog.slice(0, 4)].sort());
  // A limit the interactive rows fill leaves no room for batch rows.
  const more = [await enqueue(0, 'd'), await enqueue(0, 'e')];
  expect((await claim(2, 4)).sort()).toEqual(more.sort());

  // No interactive work left: batch rows still at most the cap, oldest next; without a cap, up to the limit.
  expect((await claim(10, 4)).sort()).toEqual(backlog.slice(4, 8).sort());
  expect((await claim(10, null)).sort()).toEqual(backlog.slice(8, 18).sort());
});

it('ai.submit_embed queues batch work; the gateway and ai.embed queue interactive work', async () => {
  const submitted = (await pool.query<{ id: string }>(`select ai.submit_embed('e', 'some text') as id`).catch((e: Error) => ({ rows: [{ id: e.message }] }))).rows[0]!.id;
  // The model 'e' is not registered: submit refuses it; register one and submit again.
  expect(submitted).toMatch(/model|not/i);
  await pool.query(`insert into ai.models (name, task, source) values ('e2', 'embedding', 'nowhere')`);
  const id = (await pool.query<{ id: string }>(`select ai.submit_embed('e2', 'some text') as id`)).rows[0]!.id;
  const direct = await enqueue(0, 'x');
  const rows = (await pool.query<{ id: string; priority: number }>(`select id::text, priority from ai.requests where id = any($1::uuid[])`, [[id, direct]])).rows;
  expect(Object.fromEntries(rows.map((r) => [r.id, r.priority]))).toEqual({ [id]: 1, [direct]: 0 });
});

it('a finished batch notifies the listeners of its requests, and calls nothing to notify when none listens', async () => {
  const listener = new pg.Client({ connectionString: tdb.url });
  await listener.connect();
  try {
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(`${n.channel} ${n.payload}`));
    await listener.query('listen ai_events_finish_test');
    const enqueueFor = async (text: string, channel: string | null) => {
      const id = randomUUID();
      await pool.query(`select ai.enqueue_embedding($1::uuid, 'f', 'f', $2::jsonb, '{}', null, 5, $3)`, [id, JSON.stringify([text]), channel]);
      return id;
    };
    const finish = async (ids: string[]) => {
      const c = await pool.connect();
      try {
        await c.query(`begin`);
        await c.query(`set local track_functions = 'all'`);
        const vec = Buffer.alloc(8 * ids.length);
        const n = (await c.query<{ n: number }>(
          `select ai.finish_embeddings('w1', $1::uuid[], array_fill('completed'::text, array[$2::int]), array_fill('{}'::jsonb, array[$2::int]),
                   array_fill('{}'::jsonb, array[$2::int]), array_fill(null::jsonb, array[$2::int]), array_fill('{"type":"embedded"}'::jsonb, array[$2::int]),
                   $3::bytea, (select array_agg((i - 1) * 8) from generate_series(1, $2::int) i), array_fill(8, array[$2::int])) as n`,
          [ids, ids.length, vec])).rows[0]!.n;
        const called = (await c.query(`select funcname from pg_stat_xact_user_functions where schemaname = 'ai'`)).rows.map((r) => r.funcname as string);
        await c.query('commit');
        return { n, called };
      } finally {
        c.release();
      }
    };
    const claimF = () => pool.query(`select id from ai.claim_embeddings('f', 'w1', 10)`);

    // ai.embed's requests name no listener: nothing to notify, and no notifying function called.
    const quiet = [await enqueueFor('q1', null), await enqueueFor('q2', null)];
    await claimF();
    const a = await finish(quiet);
    expect(a.n).toBe(2);
    expect(a.called).not.toContain('_notify_events');

    // One request with a listener beside one without: one notification, naming the first only.
    const loud = await enqueueFor('l1', 'ai_events_finish_test');
    const other = await enqueueFor('l2', null);
    await claimF();
    const b = await finish([loud, other]);
    expect(b.n).toBe(2);
    expect(b.called).toContain('_notify_events');
    for (let i = 0; i < 50 && heard.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(heard).toEqual([`ai_events_finish_test ${loud}:0`]);

    const rows = (await pool.query(`select id::text, status, length(vectors) as len, (select count(*)::int from ai.request_events e where e.request_id = r.id) as events
                                      from ai.requests r where id = any($1::uuid[]) order by id`, [[...quiet, loud, other]])).rows;
    expect(rows.map((r) => [r.status, r.len, r.events])).toEqual(rows.map(() => ['completed', 8, 1]));
  } finally {
    await listener.end();
  }
});
