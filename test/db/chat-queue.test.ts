import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { batchShare } from '../../src/worker/chat-claimer.js';

/**
 * Workers claim chat requests straight from ai.requests (ai.claim_chat): one statement per
 * pickup, oldest first, never one request twice, each claim one attempt.
 */
let tdb: TestDatabase;
let pool: pg.Pool;

beforeAll(async () => {
  tdb = await createTestDatabase();
  pool = new pg.Pool({ connectionString: tdb.url, max: 4 });
});

afterAll(async () => {
  await pool?.end();
  await tdb?.drop();
});

async function queue(model: string, n: number, endpoint = 'chat.completions'): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const id = randomUUID();
    await pool.query(
      `insert into ai.requests (id, endpoint, model, requested_model, input, params, max_attempts, queued_at)
       values ($1, $2, $3, $3, '{}', '{}', 2, now() + make_interval(secs => $4))`,
      [id, endpoint, model, i],
    );
    ids.push(id);
  }
  return ids;
}

const claim = async (worker: string, models: string[], limit: number, skip: string[] = []) =>
  (await pool.query(`select id::text, model, attempts, max_attempts from ai.claim_chat($1, $2, $3, $4::uuid[])`, [worker, models, limit, skip])).rows as {
    id: string; model: string; attempts: number; max_attempts: number;
  }[];

it('claims the oldest queued requests of the models asked for, up to the limit, as running attempts', async () => {
  const a = await queue('a', 3);
  const b = await queue('b', 1);
  await queue('e', 1, 'embeddings');
  const got = await claim('w1', ['a'], 2);
  expect(got.map((r) => r.id).sort()).toEqual(a.slice(0, 2).sort());
  expect(got.every((r) => r.attempts === 1 && r.max_attempts === 2)).toBe(true);
  const rows = (await pool.query(`select id::text, status, worker from ai.requests where id = any($1) order by array_position($1::uuid[], id)`, [[...a, ...b]])).rows;
  expect(rows.map((r) => [r.status, r.worker])).toEqual([['running', 'w1'], ['running', 'w1'], ['queued', null], ['queued', null]]);
  // Skipped: a request this worker is still stopping. Never an embedding request.
  expect(await claim('w1', ['a', 'b', 'e'], 10, [a[2]!])).toEqual([expect.objectContaining({ id: b[0] })]);
  expect((await claim('w1', ['a'], 10)).map((r) => r.id)).toEqual([a[2]]);
});

it('concurrent claims never take one request twice', async () => {
  const ids = await queue('c', 40);
  const got = await Promise.all(Array.from({ length: 8 }, (_, w) => claim(`w${w}`, ['c'], 7)));
  const all = got.flat().map((r) => r.id);
  expect(new Set(all).size).toBe(all.length);
  expect(all.length).toBe(40);
  expect(all.sort()).toEqual([...ids].sort());
});

it('a released attempt goes back to the queue, announced; only its owner may release it', async () => {
  const [id] = await queue('d', 1);
  await claim('w1', ['d'], 1);
  const listener = await pool.connect();
  const heard: string[] = [];
  listener.on('notification', (n) => heard.push(`${n.channel}:${n.payload}`));
  await listener.query('listen ai_chat');
  try {
    expect((await pool.query(`select ai.release_chat($1, 'w2', 1) as ok`, [id])).rows[0].ok).toBe(false);
    expect((await pool.query(`select ai.release_chat($1, 'w1', 2) as ok`, [id])).rows[0].ok).toBe(false);
    expect((await pool.query(`select ai.release_chat($1, 'w1', 1) as ok`, [id])).rows[0].ok).toBe(true);
    const again = await claim('w2', ['d'], 1);
    expect(again).toEqual([expect.objectContaining({ id, attempts: 2 })]);
    await new Promise((r) => setTimeout(r, 100));
    expect(heard).toEqual(['ai_chat:d']);
  } finally {
    listener.release(true);
  }
});

it('a role with no grants can neither claim nor release', async () => {
  const role = `nogrants_${randomUUID().slice(0, 8)}`;
  await pool.query(`create role ${role} login`);
  const [id] = await queue('f', 1);
  const url = new URL(tdb.url);
  url.username = role;
  const c = new pg.Client({ connectionString: url.toString() });
  await c.connect();
  try {
    await expect(c.query(`select * from ai.claim_chat('x', array['f'], 1)`)).rejects.toThrow(/permission denied/);
    await expect(c.query(`select ai.release_chat($1, 'x', 1)`, [id])).rejects.toThrow(/permission denied/);
    expect((await pool.query(`select status from ai.requests where id = $1`, [id])).rows[0].status).toBe('queued');
  } finally {
    await c.end();
    await pool.query(`drop owned by ${role}; drop role ${role}`);
  }
});

it('taking a request from its attempt waits for that attempt\'s event write in flight; a later write is refused', async () => {
  const [id] = await queue('g', 1);
  await claim('w1', ['g'], 1);
  const event = (seq: number) => JSON.stringify([{ request: id, attempt: 1, seq, data: { type: 'start', promptTokens: 1 } }]);
  const writer = await pool.connect();
  const taker = await pool.connect();
  try {
    await writer.query('begin');
    expect((await writer.query(`select ai.publish_events('w1', $1::jsonb)::text[] as refused`, [event(0)])).rows[0].refused).toEqual([]);
    // A reaper's takeover: fence, re-queue. It must wait for the write in flight.
    await taker.query('begin');
    let fenced = false;
    const takeover = taker.query('select ai._fence_requests(array[$1::uuid])', [id]).then(() => (fenced = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(fenced).toBe(false);
    await writer.query('commit');
    await takeover;
    await taker.query(`update ai.requests set status = 'queued' where id = $1`, [id]);
    // A write that starts now waits for the takeover, then sees it and is refused.
    const late = pool.query(`select ai.publish_events('w1', $1::jsonb)::text[] as refused`, [event(1)]);
    await new Promise((r) => setTimeout(r, 100));
    await taker.query('commit');
    expect((await late).rows[0].refused).toEqual([id]);
    expect((await pool.query('select seq from ai.request_events where request_id = $1', [id])).rows).toEqual([{ seq: 0 }]);
  } finally {
    writer.release(true);
    taker.release(true);
  }
});

it('batch work (priority 1) takes the slots interactive requests leave, never more than its limit; SWITCHYARD_BATCH_SHARE sets the share', async () => {
  const batchIds = await queue('h', 3);
  await pool.query(`update ai.requests set priority = 1 where id = any($1)`, [batchIds]);
  const interactive = await queue('h', 2);
  const got = (await pool.query(`select id::text, priority from ai.claim_chat('w1', array['h'], 10, '{}', 0, 1)`)).rows as { id: string; priority: number }[];
  expect(got.filter((r) => r.priority === 0).map((r) => r.id).sort()).toEqual([...interactive].sort());
  expect(got.filter((r) => r.priority === 1)).toHaveLength(1);
  expect(batchShare({})).toBe(0.25);
  expect(batchShare({ SWITCHYARD_BATCH_SHARE: '0.5' })).toBe(0.5);
  for (const bad of ['0', '-1', '2', 'x', '']) expect(batchShare({ SWITCHYARD_BATCH_SHARE: bad })).toBe(0.25);
});

it('ai.enqueue_request announces `<model> <id>`, and a claimer skips the claim for a request its last claim already took', async () => {
  const { ChatClaimer } = await import('../../src/worker/chat-claimer.js');
  const listen = new pg.Client({ connectionString: tdb.url });
  await listen.connect();
  const heard: string[] = [];
  listen.on('notification', (n) => n.channel === 'ai_chat' && heard.push(n.payload ?? ''));
  await listen.query('listen ai_chat');
  const id = randomUUID();
  const one = (await pool.query(
    `select ai.enqueue_request($1::uuid, 'chat.completions', 'k', 'k', '{}'::jsonb, '{}'::jsonb, false, null, 2, null, 100, 1, '1 minute'::interval) as r`, [id],
  )).rows[0].r;
  expect(one).toEqual({ queued: true });
  await expect.poll(() => heard).toEqual([`k ${id}`]);
  await listen.end();

  // A claimer whose statements are counted; runs end at once.
  let claims = 0;
  const counting = { query: (text: string, values: unknown[]) => ((claims += text.includes('claim_chat') ? 1 : 0), pool.query(text, values)) } as unknown as pg.Pool;
  const ran: string[] = [];
  const claimer = new ChatClaimer({ pool: counting, workerId: 'wk', log: { warn: () => {} }, capacity: 8, stopping: () => [], run: async (row) => void ran.push(row.id), pollMs: 60_000 });
  const second = randomUUID();
  await pool.query(`select ai.enqueue_request($1::uuid, 'chat.completions', 'k', 'k', '{}'::jsonb, '{}'::jsonb, false, null, 2, null, 100, 1, '1 minute'::interval)`, [second]);
  claimer.serve(['k']);
  await expect.poll(() => ran.sort()).toEqual([id, second].sort());
  const before = claims;
  // Their notifications arrive after the claim took both: no claim for them.
  claimer.wakeFor(`k ${id}`);
  claimer.wakeFor(`k ${second}`);
  await new Promise((r) => setTimeout(r, 150));
  expect(claims).toBe(before);
  // Another request, or a bare model name (a re-queue, a batch), claims.
  const third = randomUUID();
  await pool.query(`select ai.enqueue_request($1::uuid, 'chat.completions', 'k', 'k', '{}'::jsonb, '{}'::jsonb, false, null, 2, null, 100, 1, '1 minute'::interval)`, [third]);
  claimer.wakeFor(`k ${third}`);
  await expect.poll(() => ran).toContain(third);
  expect(claims).toBe(before + 1);
  claimer.wakeFor('k');
  await expect.poll(() => claims).toBe(before + 2);
  // Another model's notification does not wake it.
  claimer.wakeFor(`other ${randomUUID()}`);
  await new Promise((r) => setTimeout(r, 150));
  expect(claims).toBe(before + 2);
  await claimer.stop();
});

it('a request queued again wakes the claimers of its endpoint: batch claimers on ai_embed, chat on ai_chat', async () => {
  const r = await pool.query(`select e, ai._queue_channel(e) as c from unnest(array['embeddings', 'moderations', 'rerank', 'chat.completions', 'completions', 'responses']) e`);
  expect(Object.fromEntries(r.rows.map((x) => [x.e, x.c]))).toEqual({
    embeddings: 'ai_embed', moderations: 'ai_embed', rerank: 'ai_embed',
    'chat.completions': 'ai_chat', completions: 'ai_chat', responses: 'ai_chat',
  });
});

it('a rerank request carries its attempts in the column the reaper reads', async () => {
  const id = randomUUID();
  await pool.query(`select ai.enqueue_rerank($1::uuid, 'r', 'r', 'q', '["a"]'::jsonb, '{}'::jsonb, null, 5, null, 100)`, [id]);
  const [row] = (await pool.query(`select max_attempts, (params->>'max_attempts')::int as claim from ai.requests where id = $1`, [id])).rows;
  expect(row).toEqual({ max_attempts: 5, claim: 5 });
});
