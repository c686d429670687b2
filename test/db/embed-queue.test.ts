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
