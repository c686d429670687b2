import type { FastifyInstance } from 'fastify';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../../../src/http/app.js';
import { openDatabase, type Database } from '../../../src/db/pool.js';
import { createKey } from '../../../src/db/keys-repo.js';
import { createTestDatabase, type TestDatabase } from '../../helpers/db.js';
import { FakeEngine } from '../../helpers/fake-app.js';

/**
 * The admin reads on the real app and a real database: a log written as the gateway writes it
 * (rows in ai.requests and ai.request_events, workers in ai.workers), read back through
 * /admin/requests, /admin/usage and /admin/workers, and compared with what was written.
 */
let tdb: TestDatabase;
let database: Database;
let app: FastifyInstance;
let adminKey: string;
let modelKey: string;
let keyA: string;
let keyB: string;

/** 30 requests: every third by key B, alternating models, one per minute from a fixed start. */
const START = Date.parse('2026-03-01T23:50:00Z');
const rows: { id: string; model: string; key: string; status: string; at: Date; prompt: number; completion: number }[] = [];

const as = (key: string) => ({ authorization: `Bearer ${key}` });
const get = (url: string, key = adminKey) => app.inject({ method: 'GET', url, headers: as(key) });

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = openDatabase(tdb.url, { max: 3, applicationName: 'admin-read-test' });
  app = buildApp({ engine: new FakeEngine(), database, auth: true, listening: () => true });
  adminKey = (await createKey(database.db, 'ops', null, { admin: true })).key;
  const a = await createKey(database.db, 'app-a', null);
  const b = await createKey(database.db, 'app-b', ['tiny']);
  modelKey = a.key;
  keyA = a.row.id;
  keyB = b.row.id;
  for (let i = 0; i < 30; i++) {
    rows.push({
      id: randomUUID(),
      model: i % 2 ? 'tiny' : 'embed',
      key: i % 3 === 0 ? keyB : keyA,
      status: i % 10 === 9 ? 'failed' : 'completed',
      at: new Date(START + i * 60_000),
      prompt: 10 + i,
      completion: i % 2 ? i : 0,
    });
  }
  // Two rows share a queued_at: the cursor must order them by id and neither skip nor repeat one.
  rows[20]!.at = rows[19]!.at;
  for (const r of rows) {
    await database.pool.query(
      `insert into ai.requests (id, endpoint, model, requested_model, input, status, key_id, queued_at, started_at, first_token_at, finished_at, usage, error)
       values ($1, $2, $3, $3, '[]', $4, $5, $6, $6::timestamptz + interval '5 ms', $6::timestamptz + interval '20 ms', $6::timestamptz + interval '120 ms', $7, $8)`,
      [
        r.id,
        r.model === 'tiny' ? 'chat.completions' : 'embeddings',
        r.model,
        r.status,
        r.key,
        r.at,
        JSON.stringify({ prompt_tokens: r.prompt, completion_tokens: r.completion, total_tokens: r.prompt + r.completion }),
        r.status === 'failed' ? JSON.stringify({ message: 'boom', type: 'server_error', code: 'internal_error', param: null }) : null,
      ],
    );
  }
  await database.pool.query(`insert into ai.request_events (request_id, seq, data) values ($1, 0, '{"delta":"Hel"}'), ($1, 1, '{"delta":"lo"}')`, [rows[1]!.id]);
  await database.pool.query(`insert into ai.models (name, task, source) values ('tiny', 'chat', 'tiny-chat'), ('embed', 'embedding', 'tiny-embed')`);
});

afterAll(async () => {
  await app?.close();
  await database?.close();
  await tdb?.drop();
});

const newestFirst = () => [...rows].sort((x, y) => y.at.getTime() - x.at.getTime() || (y.id < x.id ? -1 : 1));

describe('GET /admin/requests', () => {
  it('pages the whole log newest first by cursor, without skipping or repeating a row', async () => {
    const seen: string[] = [];
    let url = '/admin/requests?limit=7';
    for (let pages = 0; pages < 10; pages++) {
      const res = await get(url);
      expect(res.statusCode, res.body).toBe(200);
      const body = res.json();
      expect(body.object).toBe('list');
      seen.push(...body.data.map((r: { id: string }) => r.id));
      if (!body.has_more) {
        expect(body.next_cursor).toBeNull();
        break;
      }
      url = `/admin/requests?limit=7&after=${body.next_cursor}`;
    }
    expect(seen).toEqual(newestFirst().map((r) => r.id));
  });

  it('filters by model, key, status, endpoint and time, and says who and how much', async () => {
    const res = await get(`/admin/requests?model=tiny&key_id=${keyA}&status=completed&endpoint=chat.completions&since=2026-03-02T00:00:00Z&until=${Date.parse('2026-03-02T00:15:00Z') / 1000}`);
    expect(res.statusCode, res.body).toBe(200);
    const want = newestFirst().filter((r) => r.model === 'tiny' && r.key === keyA && r.status === 'completed' && r.at >= new Date('2026-03-02T00:00:00Z') && r.at < new Date('2026-03-02T00:15:00Z'));
    expect(want.length).toBeGreaterThan(2);
    const data = res.json().data;
    expect(data.map((r: { id: string }) => r.id)).toEqual(want.map((r) => r.id));
    expect(data[0]).toMatchObject({ key_name: 'app-a', model: 'tiny', endpoint: 'chat.completions', usage: { prompt_tokens: want[0]!.prompt } });
    expect(data[0].input).toBeUndefined();
  });

  it('refuses bad parameters with a 400 naming them', async () => {
    const cases: [string, string][] = [
      ['limit=0', 'limit'],
      ['limit=201', 'limit'],
      ['limit=ten', 'limit'],
      ['status=done', 'status'],
      ['key_id=not-a-uuid', 'key_id'],
      ['since=yesterday', 'since'],
      ['until=2026-13-45', 'until'],
      ['since=2026-03-02&until=2026-03-01', 'since'],
      ['after=garbage', 'after'],
      ['model=a&model=b', 'model'],
      ['modle=tiny', 'modle'],
    ];
    for (const [qs, param] of cases) {
      const res = await get(`/admin/requests?${qs}`);
      expect(res.statusCode, qs).toBe(400);
      expect(res.json().error, qs).toMatchObject({ type: 'invalid_request_error', param });
    }
  });

  it('shows one request with its timings and stream events; 404 for none', async () => {
    const r = rows[1]!;
    const res = await get(`/admin/requests/chatcmpl-${r.id.replaceAll('-', '')}`);
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({ object: 'admin.request', id: r.id, status: 'completed', key_name: 'app-a', input: [] });
    expect(body.timings).toEqual({ queue_ms: 5, time_to_first_token_ms: 20, run_ms: 115, total_ms: 120 });
    expect(body.events.map((e: { data: unknown }) => e.data)).toEqual([{ delta: 'Hel' }, { delta: 'lo' }]);
    const failed = (await get(`/admin/requests/${rows[9]!.id}`)).json();
    expect(failed.error).toMatchObject({ code: 'internal_error' });
    for (const id of [randomUUID(), 'nope', "1' or '1'='1"]) {
      const miss = await get(`/admin/requests/${encodeURIComponent(id)}`);
      expect(miss.statusCode, id).toBe(404);
      expect(miss.json().error.code).toBe('not_found');
    }
  });
});

describe('GET /admin/usage', () => {
  it('sums requests and tokens by day, model and key, as the log holds them', async () => {
    const res = await get('/admin/usage?group_by=day,model,key&since=2026-03-01T00:00:00Z&until=2026-03-03T00:00:00Z');
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json();
    expect(body.group_by).toEqual(['day', 'model', 'key']);
    const want = new Map<string, { requests: number; prompt_tokens: number; completion_tokens: number }>();
    for (const r of rows) {
      const k = `${r.at.toISOString().slice(0, 10)}|${r.model}|${r.key}`;
      const w = want.get(k) ?? { requests: 0, prompt_tokens: 0, completion_tokens: 0 };
      w.requests++;
      w.prompt_tokens += r.prompt;
      w.completion_tokens += r.completion;
      want.set(k, w);
    }
    const got = new Map(body.data.map((d: { day: string; model: string; key_id: string; requests: number; prompt_tokens: number; completion_tokens: number }) => [`${d.day}|${d.model}|${d.key_id}`, { requests: d.requests, prompt_tokens: d.prompt_tokens, completion_tokens: d.completion_tokens }]));
    expect(got).toEqual(want);
    expect(body.data.some((d: { day: string }) => d.day === '2026-03-01')).toBe(true);
    expect(body.data.some((d: { day: string }) => d.day === '2026-03-02')).toBe(true);
  });

  it('gives one total without group_by, and a window by since/until', async () => {
    const all = (await get('/admin/usage?since=2026-01-01')).json().data;
    expect(all).toHaveLength(1);
    expect(all[0]).toMatchObject({ requests: 30, failed: 3, prompt_tokens: rows.reduce((s, r) => s + r.prompt, 0) });
    const byKey = (await get('/admin/usage?group_by=key&since=2026-03-02T00:00:00Z')).json().data;
    expect(byKey.reduce((s: number, d: { requests: number }) => s + d.requests, 0)).toBe(rows.filter((r) => r.at >= new Date('2026-03-02T00:00:00Z')).length);
    expect(byKey.map((d: { key_name: string }) => d.key_name).sort()).toEqual(['app-a', 'app-b']);
  });

  it('groups by the team a request was made for, not the key\'s team now', async () => {
    const team = (await database.pool.query<{ id: string }>(`insert into ai.teams (name) values ('research') returning id`)).rows[0]!.id;
    // Key B's requests were made for the team; key B then leaves it: its past usage stays the team's.
    await database.pool.query(`update ai.requests set team_id = $1 where key_id = $2`, [team, keyB]);
    try {
      const byTeam = (await get('/admin/usage?group_by=team&since=2026-01-01')).json().data as { team_id: string | null; team_name: string | null; requests: number }[];
      expect(byTeam).toEqual([
        expect.objectContaining({ team_id: team, team_name: 'research', requests: rows.filter((r) => r.key === keyB).length }),
        expect.objectContaining({ team_id: null, team_name: null, requests: rows.filter((r) => r.key !== keyB).length }),
      ]);
    } finally {
      await database.pool.query(`update ai.requests set team_id = null`);
      await database.pool.query(`delete from ai.teams where id = $1`, [team]);
    }
  });

  it('refuses a dimension it does not know, and a backwards window', async () => {
    for (const [qs, param] of [['group_by=tenant', 'group_by'], ['group_by=day,day', 'group_by'], ['since=2026-03-02&until=2026-03-01', 'since'], ['limit=3', 'limit']]) {
      const res = await get(`/admin/usage?${qs}`);
      expect(res.statusCode, qs).toBe(400);
      expect(res.json().error.param, qs).toBe(param);
    }
  });
});

describe('GET /admin/workers', () => {
  it('lists each model with its live workers and queue depth; a silent worker is not live', async () => {
    await database.pool.query(
      `insert into ai.workers (id, hostname, pid, models, heartbeat_at) values
         ('w-live', 'box1', 11, '{tiny,embed}', now()), ('w-dead', 'box2', 12, '{tiny}', now() - interval '10 minutes')`,
    );
    const queued = [randomUUID(), randomUUID(), randomUUID()];
    for (const [i, id] of queued.entries()) {
      await database.pool.query(`insert into ai.requests (id, endpoint, model, requested_model, input, status) values ($1, 'chat.completions', $2, $2, '[]', $3)`, [id, i < 2 ? 'tiny' : 'gone', i === 1 ? 'running' : 'queued']);
    }
    try {
      const res = await get('/admin/workers');
      expect(res.statusCode, res.body).toBe(200);
      const data = res.json().data as { model: string; task: string; workers: { id: string }[]; queued: number; running: number }[];
      expect(data.map((m) => [m.model, m.task, m.workers.map((w) => w.id), m.queued, m.running])).toEqual([
        ['embed', 'embedding', ['w-live'], 0, 0],
        ['gone', 'unregistered', [], 1, 0],
        ['tiny', 'chat', ['w-live'], 1, 1],
      ]);
    } finally {
      await database.pool.query('delete from ai.requests where id = any($1::uuid[])', [queued]);
    }
  });
});

it('a model key gets 403 admin_required on every admin read', async () => {
  for (const url of ['/admin/requests', `/admin/requests/${rows[0]!.id}`, '/admin/usage?group_by=key', '/admin/workers']) {
    const res = await get(url, modelKey);
    expect(res.statusCode, url).toBe(403);
    expect(res.json().error.code, url).toBe('admin_required');
  }
});
