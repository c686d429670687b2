import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runChatRequest, type ChatTaskDeps } from '../../src/worker/chat-task.js';
import type { GenerationHandlers, GenerationResult, ModelHost } from '../../src/worker/model-host.js';
import { EventPublisher, OwnershipLost } from '../../src/worker/publisher.js';
import { EventFlusher } from '../../src/worker/flusher.js';
import { finish } from '../../src/worker/request-row.js';
import type { ModelSpec } from '../../src/worker/models-source.js';
import { toJsonb } from '../../src/db/jsonb.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';

// A claimed attempt of a chat request against a real database, with a stand-in for the model
// thread: what it writes when the model's output or an error cannot be stored as it is, and when
// an attempt fails. (The model itself is covered end to end in test/e2e.)

const spec: ModelSpec = {
  name: 'm', task: 'chat', source: 'm', revision: 'main', dtype: 'fp32', device: 'cpu',
  chatTemplate: null, contextLength: null, pooling: 'mean', normalize: true, truncate: false,
};
const params = { maxTokens: 4, temperature: 0, topP: 1, n: 1, stop: [], seed: null, frequencyPenalty: 0, presencePenalty: 0, logprobs: null };
const silent = { info: () => {}, warn: () => {}, error: () => {} };

let db: TestDatabase;
let pool: pg.Pool;

beforeAll(async () => {
  db = await createTestDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 4 });
});
afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

async function newRequest(stream = false): Promise<string> {
  const id = randomUUID();
  await pool.query(
    `insert into ai.requests (id, endpoint, model, requested_model, input, params, stream)
     values ($1, 'chat.completions', 'm', 'm', $2, $3, $4)`,
    [id, JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }), JSON.stringify(params), stream],
  );
  return id;
}

/** What ai.claim_chat does, then the attempt. */
async function claimAndRun(id: string, deps: Omit<ChatTaskDeps, 'pool' | 'workerId' | 'log'> & { workerId?: string }, attempt = 1, maxAttempts = 3) {
  const workerId = deps.workerId ?? 'w1';
  const r = await pool.query(`update ai.requests set status = 'running', worker = $2, attempts = $3 where id = $1 returning input, params, stream`, [id, workerId, attempt]);
  return runChatRequest(spec, { pool, log: silent, ...deps, workerId }, { id, model: 'm', attempts: attempt, max_attempts: maxAttempts, ...r.rows[0] });
}

function run(id: string, generate: () => Promise<GenerationResult>, attempt: number, maxAttempts = 3) {
  const host = { generate, isRunning: () => false, cancel: () => {} } as unknown as ModelHost;
  return claimAndRun(id, { host }, attempt, maxAttempts);
}

const row = async (id: string) =>
  (await pool.query('select status, output, error from ai.requests where id = $1', [id])).rows[0] as { status: string; output: { choices: { text: string }[] } | null; error: { code: string; message: string } | null };
const events = async (id: string) =>
  (await pool.query('select data from ai.request_events where request_id = $1 order by seq', [id])).rows.map((r) => r.data as { type: string; error?: { code: string } });

describe('what the chat task stores', () => {
  it('stores generated text holding NUL and a lone surrogate, with U+FFFD in their place', async () => {
    const id = await newRequest();
    const text = 'a\u0000b\uD83Dc';
    await run(id, async () => ({ promptTokens: 3, choices: [{ index: 0, text, tokenIds: [1, 2, 3], finishReason: 'length' }] }), 1);
    const r = await row(id);
    expect(r.status).toBe('completed');
    expect(r.output!.choices[0]!.text).toBe('a\uFFFDb\uFFFDc');
  });

  it('a failed attempt goes back to the queue; after the last one, the request fails with the reason instead of staying running', async () => {
    const id = await newRequest();
    const broken = async () => ({ promptTokens: 3 }) as unknown as GenerationResult; // no choices: the attempt throws
    await run(id, broken, 1);
    expect((await pool.query('select status, worker from ai.requests where id = $1', [id])).rows[0]).toEqual({ status: 'queued', worker: null });
    await run(id, broken, 3);
    const r = await row(id);
    expect(r.status).toBe('failed');
    expect(r.error!.code).toBe('attempts_exhausted');
    expect(r.error!.message).toMatch(/failed on all 3 attempts/);
    expect((await events(id)).at(-1)).toMatchObject({ type: 'error', status: 500, error: { code: 'attempts_exhausted' } });
  });
});

describe('what the chat task publishes', () => {
  const textOf = (evs: { type: string; choices?: { text: string }[] }[]) => evs.filter((e) => e.type === 'delta').map((e) => e.choices![0]!.text);

  it('a request that does not stream: no deltas while it runs, its whole text in one delta written with the outcome', async () => {
    const id = await newRequest(false);
    let during: string[] = [];
    const generate = async (_id: string, _spec: unknown, _prompt: unknown, _params: unknown, h: GenerationHandlers) => {
      h.onStarted(3);
      for (const t of ['a', 'b', 'c']) {
        h.onDelta(0, t, t === 'c' ? 'length' : null);
        await new Promise((r) => setTimeout(r, 30));
      }
      during = (await events(id)).map((e) => e.type);
      return { promptTokens: 3, choices: [{ index: 0, text: 'abc', tokenIds: [1, 2, 3], finishReason: 'length' as const }] };
    };
    const host = { generate, isRunning: () => false, cancel: () => {} } as unknown as ModelHost;
    await claimAndRun(id, { host });
    // Not even the start: it is written with the outcome (one statement for the whole request).
    expect(during).toEqual([]);
    const evs = await events(id);
    expect(evs.map((e) => e.type)).toEqual(['start', 'delta', 'done']);
    expect(textOf(evs)).toEqual(['abc']);
  });

  it('streaming requests: the first text at once, later text coalesced, and one flush carries several requests', async () => {
    // Every connection of the pool warm first: a fresh backend's first ai.publish_events took
    // 43 ms on a 2-core machine (its plans and caches cold), 3-4 ms after, and "at once" is
    // measured against a 40 ms interval.
    const clients = await Promise.all(Array.from({ length: 4 }, () => pool.connect()));
    await Promise.all(clients.map((c) => c.query(`select ai.publish_events($1, '[]'::jsonb)`, [randomUUID()])));
    for (const c of clients) c.release();
    const flusher = new EventFlusher(pool, 40);
    const ids = [await newRequest(true), await newRequest(true)];
    const firstSeen: number[] = [];
    const generate = async (id: string, _spec: unknown, _prompt: unknown, _params: unknown, h: GenerationHandlers) => {
      h.onStarted(3);
      const t0 = Date.now();
      h.onDelta(0, 't0', null);
      // The first text is written at once, not after the flush interval.
      for (;;) {
        if (textOf(await events(id)).length > 0) break;
        await new Promise((r) => setTimeout(r, 2));
      }
      firstSeen.push(Date.now() - t0);
      for (let i = 1; i < 20; i++) {
        await new Promise((r) => setTimeout(r, 5));
        h.onDelta(0, ` t${i}`, i === 19 ? 'length' : null);
      }
      const text = Array.from({ length: 20 }, (_, i) => `t${i}`).join(' ');
      return { promptTokens: 3, choices: [{ index: 0, text, tokenIds: Array.from({ length: 20 }, (_, i) => i), finishReason: 'length' as const }] };
    };
    const host = { generate, isRunning: () => false, cancel: () => {} } as unknown as ModelHost;
    await Promise.all(ids.map((id) => claimAndRun(id, { host, flusher })));
    for (const ms of firstSeen) expect(ms).toBeLessThan(40);
    for (const id of ids) {
      const evs = await events(id);
      expect(textOf(evs).join('')).toBe(Array.from({ length: 20 }, (_, i) => `t${i}`).join(' '));
      expect(evs.at(-1)!.type).toBe('done');
      // 20 tokens over ~100 ms at most every 40 ms: a handful of deltas, not 20.
      expect(textOf(evs).length).toBeLessThan(8);
    }
    // Rows written by one statement share a transaction timestamp: some flushes carried both.
    const shared = await pool.query(
      `select count(*)::int as n from (select created_at from ai.request_events where request_id = any($1) group by created_at having count(distinct request_id) = 2) s`,
      [ids],
    );
    expect(shared.rows[0].n).toBeGreaterThan(0);
    expect(flusher.stats.events).toBeGreaterThan(flusher.stats.flushes);
  });
});

describe('ownership', () => {
  it('an attempt that lost the request (re-queued by a reaper, then claimed by another worker) writes nothing more, and leaves it alone', async () => {
    const id = await newRequest(true);
    const takenOver = async () => {
      // What a reaper and the next attempt do while this one still runs.
      await pool.query(`update ai.requests set status = 'queued' where id = $1`, [id]);
      await pool.query(`update ai.requests set status = 'running', worker = 'w2', attempts = 2 where id = $1`, [id]);
    };
    const generate = async (_id: string, _spec: unknown, _prompt: unknown, _params: unknown, h: GenerationHandlers) => {
      h.onStarted(3);
      h.onDelta(0, 'before', null);
      await new Promise((r) => setTimeout(r, 100));
      await takenOver();
      h.onDelta(0, ' after', null);
      await new Promise((r) => setTimeout(r, 100));
      h.onDelta(0, ' more', 'length');
      return { promptTokens: 3, choices: [{ index: 0, text: 'before after more', tokenIds: [1, 2, 3], finishReason: 'length' as const }] };
    };
    const cancelled: string[] = [];
    const host = { generate, isRunning: () => false, cancel: (rid: string) => cancelled.push(rid) } as unknown as ModelHost;
    await claimAndRun(id, { host });
    // The first refusal stopped the generation.
    expect(cancelled).toEqual([id]);
    const r = (await pool.query('select status, worker, attempts, output from ai.requests where id = $1', [id])).rows[0];
    expect(r).toEqual({ status: 'running', worker: 'w2', attempts: 2, output: null });
    const texts = (await events(id)).map((e) => (e as { choices?: { text: string }[] }).choices?.[0]?.text ?? e.type);
    expect(texts).toEqual(['start', 'before']);
  });

  it('refuses events and an outcome from a writer that does not own the request', async () => {
    const id = await newRequest();
    await pool.query(`update ai.requests set status = 'running', worker = 'w2', attempts = 3 where id = $1`, [id]);
    const publisher = new EventPublisher(new EventFlusher(pool), { requestId: id, workerId: 'w1', attempt: 3 }, 0);
    publisher.publish({ type: 'start', promptTokens: 1 });
    await expect(publisher.flush()).rejects.toThrow(OwnershipLost);
    expect(await finish(pool, publisher, 'failed', { error: { code: 'x' } }, { type: 'error', status: 500, error: { message: 'x', type: 'server_error', param: null, code: 'x' } })).toBe(false);
    expect((await row(id)).status).toBe('running');
    expect(await events(id)).toEqual([]);
  });
});

describe('toJsonb', () => {
  it('writes only what jsonb accepts, and leaves well-formed text as it is', async () => {
    const value = { ok: 'plain 👩‍👩‍👧 text', nul: 'x\u0000y', high: '\uD83D', low: 'z\uDC69', list: ['\u0000'] };
    await expect(pool.query('select $1::jsonb', [JSON.stringify(value)])).rejects.toThrow();
    const stored = (await pool.query('select $1::jsonb as v', [toJsonb(value)])).rows[0].v;
    expect(stored).toEqual({ ok: 'plain 👩‍👩‍👧 text', nul: 'x\uFFFDy', high: '\uFFFD', low: 'z\uFFFD', list: ['\uFFFD'] });
  });
});
