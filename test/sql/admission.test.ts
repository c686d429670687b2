import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';

/**
 * ai.enqueue_request and its settlement (sql/074_admission.sql) on their own, from many
 * connections at once: a team budget shared by two keys, admissions racing settlements (no
 * deadlock, nothing lost), the reaper's way of failing a request, and a period that rolls over.
 */
let db: TestDatabase;
let pool: pg.Pool;

beforeAll(async () => {
  db = await createTestDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 12 });
  // pool.end() resolves before its clients' sockets close; dropping the database (with force)
  // can then end a closing backend, whose error would otherwise be an unhandled 'error' event.
  pool.on('error', () => {});
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

const team = async (budget: number | null) =>
  (await pool.query(`insert into ai.teams (name, budget_tokens) values ($1, $2) returning id`, [randomUUID(), budget])).rows[0].id as string;
const key = async (teamId: string | null, budget: number | null = null, period = 'month') =>
  (await pool.query(`insert into ai.api_keys (name, prefix, key_hash, team_id, budget_tokens, budget_period) values ('k', 'x', $1, $2, $3, $4) returning id`,
    [randomBytes(32), teamId, budget, period])).rows[0].id as string;
const admit = (keyId: string, tokens: number, id = randomUUID()) =>
  pool.query(`select ai.enqueue_request($1, 'chat.completions', 'm', 'm', '{}', '{}', false, $2, 3, null, 100000, $3, '1 minute') as r`, [id, keyId, tokens])
    .then(() => ({ id, ok: true as const }), (e: { code?: string; detail?: string }) => {
      if (e.code !== 'SY429') throw e;
      return { id, ok: false as const, refusal: JSON.parse(e.detail!) };
    });
const spend = async (subject: string) => (await pool.query(`select reserved::int, spent::int from ai.spend where subject = $1`, [subject])).rows[0];

it("a team's budget holds across its keys, whichever key's requests race", async () => {
  const t = await team(1000);
  const [k1, k2] = [await key(t), await key(t)];
  const results = await Promise.all(Array.from({ length: 60 }, (_, i) => admit(i % 2 ? k1 : k2, 70)));
  expect(results.filter((r) => r.ok)).toHaveLength(14); // 14 × 70 = 980 ≤ 1000 < 15 × 70
  const refusal = results.find((r) => !r.ok)!;
  expect(refusal.refusal).toMatchObject({ code: 'budget_exceeded', kind: 'team', limit: 1000, asked: 70 });
  expect(await spend(t)).toEqual({ reserved: 980, spent: 0 });
  expect(await spend(k1)).toBeUndefined(); // the keys have no limits of their own: no row, no lock
});

it('admissions racing settlements neither deadlock nor lose a token', async () => {
  const t = await team(1_000_000);
  const keys = [await key(t, 1_000_000), await key(t, 1_000_000)];
  const done: string[] = [];
  // Admit and end requests of both keys at once, for a while: settlement takes the key's row
  // then the team's inside the request's transaction, admission the same two rows in the same order.
  await Promise.all(Array.from({ length: 8 }, async (_, w) => {
    for (let i = 0; i < 25; i++) {
      const r = await admit(keys[(w + i) % 2]!, 10);
      expect(r.ok).toBe(true);
      const status = ['completed', 'failed', 'cancelled'][i % 3];
      await pool.query(`update ai.requests set status = $2, usage = '{"prompt_tokens": 3, "completion_tokens": 4}' where id = $1`, [r.id, status]);
      done.push(status!);
    }
  }));
  const completed = done.filter((s) => s === 'completed').length;
  expect(await spend(t)).toEqual({ reserved: 0, spent: completed * 7 });
  const [a, b] = [await spend(keys[0]!), await spend(keys[1]!)];
  expect(a.reserved + b.reserved).toBe(0);
  expect(a.spent + b.spent).toBe(completed * 7);
});

it('charges no more than reserved, refunds what the reaper fails, and settles only once', async () => {
  const k = await key(null, 100);
  const r = await admit(k, 30);
  await pool.query(`update ai.requests set status = 'running' where id = $1`, [r.id]);
  // Usage above the reservation (a prompt the estimate undercounted) is capped at it.
  await pool.query(`update ai.requests set status = 'completed', usage = '{"prompt_tokens": 40, "completion_tokens": 5}' where id = $1`, [r.id]);
  expect(await spend(k)).toEqual({ reserved: 0, spent: 30 });
  // A second terminal update (a target write failing after completion) settles nothing again.
  await pool.query(`update ai.requests set status = 'failed' where id = $1`, [r.id]);
  expect(await spend(k)).toEqual({ reserved: 0, spent: 30 });
  // The reaper's statement for a request out of attempts.
  const lost = await admit(k, 50);
  await pool.query(`update ai.requests set status = 'running' where id = $1`, [lost.id]);
  expect(await spend(k)).toEqual({ reserved: 50, spent: 30 });
  await pool.query(`update ai.requests r set status = 'failed', error = '{"code":"worker_lost"}', finished_at = clock_timestamp() where r.id = $1 and r.status = 'running'`, [lost.id]);
  expect(await spend(k)).toEqual({ reserved: 0, spent: 30 });
  // ai.cancel_request, the path of a client that leaves.
  const gone = await admit(k, 60);
  await pool.query(`select ai.cancel_request($1)`, [gone.id]);
  expect(await spend(k)).toEqual({ reserved: 0, spent: 30 });
  expect((await admit(k, 71)).ok).toBe(false);
  expect((await admit(k, 70)).ok).toBe(true);
});

it('a new period starts from zero, and a reservation from the old one does not touch it', async () => {
  const k = await key(null, 100, 'day');
  const old = await admit(k, 80);
  // Pretend the day has turned: the row says yesterday.
  await pool.query(`update ai.spend set period_start = period_start - interval '1 day' where subject = $1`, [k]);
  await pool.query(`update ai.requests set reservation = jsonb_set(reservation, '{periods,0,p}', to_jsonb((reservation #>> '{periods,0,p}')::timestamptz - interval '1 day')) where id = $1`, [old.id]);
  const fresh = await admit(k, 90);
  expect(fresh.ok).toBe(true);
  expect(await spend(k)).toEqual({ reserved: 90, spent: 0 });
  await pool.query(`update ai.requests set status = 'completed', usage = '{"prompt_tokens": 1, "completion_tokens": 1}' where id = $1`, [old.id]);
  expect(await spend(k)).toEqual({ reserved: 90, spent: 0 });
});

it('a refused admission writes nothing, and the queue bound comes first', async () => {
  const k = await key(null, 10);
  const before = Number((await pool.query(`select count(*) from ai.requests`)).rows[0].count);
  expect((await admit(k, 11)).ok).toBe(false);
  const full = await pool.query(`select ai.enqueue_request($1, 'chat.completions', 'm', 'm', '{}', '{}', false, $2, 3, null, 0, 5, '1 minute') as r`, [randomUUID(), k]);
  expect(full.rows[0].r).toEqual({ queued: false });
  expect(Number((await pool.query(`select count(*) from ai.requests`)).rows[0].count)).toBe(before);
  expect(await spend(k)).toBeUndefined(); // not even the counter row: the refusal rolled it all back
});

it('the embedding queue admits each limited request on its own, in the one statement of its group', async () => {
  const t = await team(25);
  const limited = await key(t);
  const free = await key(null);
  const ids = Array.from({ length: 5 }, () => randomUUID());
  const keys = [free, limited, limited, free, limited];
  const rows = (await pool.query(
    `select id::text, refusal, limits from ai.enqueue_embeddings($1::uuid[], 'e', array_fill('e'::text, array[5]), '[["a"],["b"],["c"],["d"],["e"]]',
                                                      array_fill('{}'::jsonb, array[5]), $2::uuid[], 5, null, 100, array[10, 10, 10, 10, 10]::bigint[], '1 minute')`,
    [ids, keys])).rows;
  // The team's 25 tokens hold two of its three requests of 10; the free key's requests are not counted.
  expect(rows.map((r) => r.refusal?.code ?? 'ok')).toEqual(['ok', 'ok', 'ok', 'ok', 'budget_exceeded']);
  const written = (await pool.query(`select id::text, team_id::text, reservation from ai.requests where id = any($1::uuid[]) order by id`, [ids])).rows;
  expect(written.map((r) => r.id).sort()).toEqual(ids.slice(0, 4).sort());
  expect(written.filter((r) => r.team_id === t)).toHaveLength(2);
  expect(await spend(t)).toEqual({ reserved: 20, spent: 0 });
  // Settled by the embedding finish path's status update, like chat.
  await pool.query(`update ai.requests set status = 'completed', usage = '{"prompt_tokens": 4}' where id = any($1::uuid[])`, [ids]);
  expect(await spend(t)).toEqual({ reserved: 0, spent: 8 });
});
