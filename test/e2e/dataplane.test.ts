import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The lean data plane (sql/010_events.sql): each serve listens on a channel of its own, named on
 * the requests it waits on, so a serve never receives another's traffic; a request that does not
 * stream is written as one delta with its outcome; cancellation still reaches the right serve.
 */
let db: TestDatabase;
const procs: Proc[] = [];
let key: string;
let ear: pg.Client | undefined;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'dataplane'], env)).stdout.trim();
});

afterAll(async () => {
  await ear?.end().catch(() => {});
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
});

const chat = (base: string, body: Record<string, unknown>, signal?: AbortSignal) =>
  fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    signal,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', temperature: 0, ...body }),
  });

/** The text of an SSE chat stream. */
async function streamed(res: Response): Promise<string> {
  let text = '';
  for (const frame of (await res.text()).split('\n\n')) {
    const line = frame.replace(/^id: \d+\n/, '');
    if (line.startsWith('data: {')) text += JSON.parse(line.slice(6)).choices[0]?.delta?.content ?? '';
  }
  return text;
}

it('two serves: each hears only the events of its own requests, in notifications naming only ids (their events sealed)', async () => {
  const [a, b, worker] = await Promise.all([startServe(db.url), startServe(db.url), startWorker(db.url)]);
  procs.push(a, b, worker);
  // Each serve's channel, from a request it made.
  const channelOf = async (base: string) => {
    const res = await chat(base, { messages: [{ role: 'user', content: 'hello' }], max_tokens: 2 });
    expect(res.status).toBe(200);
    const id = res.headers.get('x-request-id')!;
    return (await query<{ listener: string }>(db.url, 'select listener from ai.requests where id = $1', [id]))[0]!.listener;
  };
  const channels = { a: await channelOf(a.url), b: await channelOf(b.url) };
  expect(channels.a).toMatch(/^ai_events_[0-9a-f]+$/);
  expect(channels.b).toMatch(/^ai_events_[0-9a-f]+$/);
  expect(channels.a).not.toBe(channels.b);

  ear = new pg.Client({ connectionString: db.url });
  await ear.connect();
  const heard: { channel: string; payload: string }[] = [];
  ear.on('notification', (m) => heard.push({ channel: m.channel, payload: m.payload ?? '' }));
  for (const c of [channels.a, channels.b, 'ai_events']) await ear.query(`listen ${pg.escapeIdentifier(c)}`);

  const ids: Record<string, string> = {};
  const texts: Record<string, string> = {};
  await Promise.all(
    (['a', 'b'] as const).flatMap((s) => {
      const base = s === 'a' ? a.url : b.url;
      return Array.from({ length: 4 }, async (_, i) => {
        const res = await chat(base, { messages: [{ role: 'user', content: `${s} ${i}` }], max_tokens: 40, stream: true });
        expect(res.status).toBe(200);
        const id = res.headers.get('x-request-id')!;
        ids[id] = s;
        texts[id] = await streamed(res);
      });
    }),
  );
  await new Promise((r) => setTimeout(r, 200));

  const rows = await query<{ id: string; listener: string; output: { choices: { text: string }[] } }>(db.url, 'select id::text, listener, output from ai.requests');
  const listenerOf = new Map(rows.map((r) => [r.id, r.listener]));
  for (const r of rows.filter((r) => ids[r.id])) {
    expect(r.listener).toBe(channels[ids[r.id] as 'a' | 'b']);
    expect(texts[r.id]).toBe(r.output.choices[0]!.text);
  }
  expect(heard.filter((h) => h.channel === 'ai_events')).toEqual([]);
  for (const s of ['a', 'b'] as const) {
    const mine = heard.filter((h) => h.channel === channels[s]);
    expect(mine.length).toBeGreaterThan(0);
    for (const h of mine) {
      // `<id>:<seq>`, or with the events sealed by the request's key (src/engine/notice.ts).
      expect(h.payload).toMatch(/^[0-9a-f-]{36}:\d+(:[A-Za-z0-9_-]{38}:[A-Za-z0-9_-]+)?( [0-9a-f-]{36}:\d+(:[A-Za-z0-9_-]{38}:[A-Za-z0-9_-]+)?)*$/);
      // Every request named on a serve's channel is one that serve waits on.
      for (const item of h.payload.split(' ')) expect(listenerOf.get(item.split(':')[0]!)).toBe(channels[s]);
    }
  }
  // Fewer notifications than tokens: one per flush, naming every request it advanced.
  expect(heard.length).toBeLessThan(8 * 40);
});

it('a request that does not stream is written as one delta with its outcome, and reads the same', async () => {
  const [a] = procs as [Proc & { url: string }];
  const res = await chat(a.url, { messages: [{ role: 'user', content: 'once' }], max_tokens: 30, logprobs: true });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { choices: { message: { content: string }; logprobs: { content: unknown[] } }[] };
  const id = res.headers.get('x-request-id')!;
  const events = await query<{ data: { type: string; choices?: { text: string; logprobs?: unknown[] }[] } }>(db.url, 'select data from ai.request_events where request_id = $1 order by seq', [id]);
  expect(events.map((e) => e.data.type)).toEqual(['start', 'delta', 'done']);
  expect(events[1]!.data.choices![0]!.text).toBe(body.choices[0]!.message.content);
  expect(events[1]!.data.choices![0]!.logprobs).toHaveLength(30);
  expect(body.choices[0]!.logprobs.content).toHaveLength(30);
});

it('a client that leaves stops its generation, through the serve that held it', async () => {
  const [a, b] = procs as (Proc & { url: string })[];
  const abort = new AbortController();
  const res = await chat(b!.url, { messages: [{ role: 'user', content: 'a long story' }], max_tokens: 1000, stream: true }, abort.signal);
  const id = res.headers.get('x-request-id')!;
  const reader = res.body!.getReader();
  await reader.read();
  abort.abort();
  let status = '';
  for (let i = 0; i < 100 && status !== 'cancelled'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    status = (await query<{ status: string }>(db.url, 'select status from ai.requests where id = $1', [id]))[0]!.status;
  }
  expect(status).toBe('cancelled');
  const count = async () => (await query<{ n: number }>(db.url, 'select count(*)::int as n from ai.request_events where request_id = $1', [id]))[0]!.n;
  const n = await count();
  await new Promise((r) => setTimeout(r, 500));
  expect(await count()).toBe(n);
  // And both serves still answer.
  for (const s of [a!, b!]) expect((await chat(s.url, { messages: [{ role: 'user', content: 'still' }], max_tokens: 2 })).status).toBe(200);
});
