import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { EventHub } from '../../src/engine/event-hub.js';
import { sealNotice } from '../../src/engine/notice.js';
import type { EngineEvent } from '../../src/engine/types.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';

/**
 * A serve's EventHub takes events sealed with a request's notify_key from the notification
 * itself (no read), and treats anything else as a hint to read the rows: a forged item, even
 * shaped like a sealed one, delivers nothing that is not in ai.request_events.
 */
let tdb: TestDatabase;
let pool: pg.Pool;
let hub: EventHub;
const quiet = { info: () => {}, warn: () => {} };

beforeAll(async () => {
  tdb = await createTestDatabase();
  pool = new pg.Pool({ connectionString: tdb.url, max: 4 });
  hub = new EventHub(pool, tdb.url, quiet);
  await hub.start();
});

afterAll(async () => {
  await hub?.stop();
  await pool?.end();
  await tdb?.drop();
});

async function request(key: Buffer | null): Promise<string> {
  const id = randomUUID();
  await pool.query(
    `insert into ai.requests (id, endpoint, model, requested_model, input, params, listener, notify_key, status, worker, attempts)
     values ($1, 'chat.completions', 'm', 'm', '{}', '{}', $2, $3, 'running', 'w', 1)`,
    [id, hub.channel, key],
  );
  return id;
}

const delta = (text: string): EngineEvent => ({ type: 'delta', choices: [{ index: 0, text, finishReason: null }], at: 0 } as EngineEvent);
const done = { type: 'done', choices: [{ index: 0, finishReason: 'stop' }], usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } } as unknown as EngineEvent;

async function collect(sub: AsyncIterable<EngineEvent>, ms = 3000): Promise<EngineEvent[]> {
  const out: EngineEvent[] = [];
  const deadline = new Promise<void>((r) => setTimeout(r, ms));
  const it = sub[Symbol.asyncIterator]();
  for (;;) {
    const r = await Promise.race([it.next(), deadline.then(() => null)]);
    if (!r || r.done) break;
    out.push(r.value);
  }
  await it.return?.();
  return out;
}

it('sealed events arrive from the notification alone, in order, and end the stream', async () => {
  const key = randomBytes(16);
  const id = await request(key);
  const sub = hub.subscribe(id, key);
  const before = hub.sealed;
  // Nothing in ai.request_events: only the notification carries these.
  await pool.query('select pg_notify($1, $2)', [hub.channel, sealNotice(key, id, 0, JSON.stringify([delta('Hel')]))]);
  await pool.query('select pg_notify($1, $2)', [hub.channel, sealNotice(key, id, 2, JSON.stringify([delta('lo'), done]))]);
  expect(await collect(sub)).toEqual([delta('Hel'), delta('lo'), done]);
  expect(hub.sealed - before).toBe(2);
});

it('an item that does not open is a hint: the stream gets what the rows hold, never the forged text', async () => {
  const key = randomBytes(16);
  const id = await request(key);
  const sub = hub.subscribe(id, key);
  const forged = [delta('INJECTED'), done];
  for (const wrong of [randomBytes(16), null]) {
    const item = wrong ? sealNotice(wrong, id, 1, JSON.stringify(forged))! : `${id}:1:${randomBytes(28).toString('base64url')}:${Buffer.from(JSON.stringify(forged)).toString('base64url')}`;
    await pool.query('select pg_notify($1, $2)', [hub.channel, item]);
  }
  // The genuine events, in the rows only (as a worker whose notice was too long writes them).
  await pool.query(`insert into ai.request_events (request_id, seq, data) values ($1, 0, $2), ($1, 1, $3)`, [id, JSON.stringify(delta('real')), JSON.stringify(done)]);
  await pool.query('select pg_notify($1, $2)', [hub.channel, `${id}:1`]);
  expect(await collect(sub)).toEqual([delta('real'), done]);
});

it('a sealed item after a gap waits for the read that fills the gap', async () => {
  const key = randomBytes(16);
  const id = await request(key);
  const sub = hub.subscribe(id, key);
  // Event 0 is only in the rows (its notification was lost); 1 and 2 come sealed.
  await pool.query(`insert into ai.request_events (request_id, seq, data) values ($1, 0, $2)`, [id, JSON.stringify(delta('a'))]);
  await pool.query('select pg_notify($1, $2)', [hub.channel, sealNotice(key, id, 2, JSON.stringify([delta('b'), done]))]);
  expect(await collect(sub)).toEqual([delta('a'), delta('b'), done]);
});

it('a subscription without a key ignores sealed items and reads', async () => {
  const key = randomBytes(16);
  const id = await request(key);
  const sub = hub.subscribe(id);
  await pool.query(`insert into ai.request_events (request_id, seq, data) values ($1, 0, $2)`, [id, JSON.stringify(done)]);
  await pool.query('select pg_notify($1, $2)', [hub.channel, sealNotice(key, id, 1, JSON.stringify([delta('never'), done]))]);
  expect(await collect(sub)).toEqual([done]);
});
