import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** A client that goes away stops its generation; the request ends `cancelled`. */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  expect((await cli(['models', 'add', 'idle', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  const key = (await cli(['keys', 'create', '--name', 'c'], env)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url, ['--models', 'tiny'])]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

const eventCount = async (id: string) =>
  (await query<{ n: number }>(db.url, 'select count(*)::int as n from ai.request_events where request_id = $1', [id]))[0]!.n;

it('stops generating within a second of the client closing the stream', async () => {
  const stream = await client.chat.completions
    .create({ model: 'tiny', messages: [{ role: 'user', content: 'go on forever' }], max_tokens: 2000, stream: true })
    .withResponse();
  const requestId = stream.response.headers.get('x-request-id')!;
  let chunks = 0;
  for await (const _ of stream.data) {
    if (++chunks === 1) break; // after the first chunk: leaving the loop aborts the HTTP request
  }
  const closedAt = Date.now();
  await new Promise((r) => setTimeout(r, 1000));
  const [row] = await query<{ status: string; output: unknown; usage: { completion_tokens: number } | null; started_at: Date }>(
    db.url,
    'select status, output, usage, started_at from ai.requests where id = $1',
    [requestId],
  );
  expect(row!.status).toBe('cancelled');
  expect(row!.output).toBeNull();
  // The worker records how many tokens it produced before it stopped: far fewer than the 2000
  // asked for, and no more than this model makes in the time up to the close plus a second.
  const rate = 1500; // tokens/s, above what the fixture model reaches on these machines
  expect(row!.usage!.completion_tokens).toBeLessThan(2000);
  expect(row!.usage!.completion_tokens).toBeLessThan(((closedAt - new Date(row!.started_at).getTime()) / 1000 + 1) * rate);
  // Nothing more is produced once it stopped.
  const before = await eventCount(requestId);
  await new Promise((r) => setTimeout(r, 700));
  expect(await eventCount(requestId)).toBe(before);
  // The worker is free and serves the next request normally.
  const next = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
  expect(next.choices[0]!.finish_reason).toBe('length');
});

it('a request cancelled while still queued is never run', async () => {
  // No worker serves `idle` yet, so its request waits in the queue while the client gives up.
  const controller = new AbortController();
  const queued = client.chat.completions
    .create({ model: 'idle', messages: [{ role: 'user', content: 'never runs' }], max_tokens: 5 }, { signal: controller.signal })
    .catch((e) => e);
  await new Promise((r) => setTimeout(r, 500));
  controller.abort();
  expect(await queued).toBeInstanceOf(Error);
  await new Promise((r) => setTimeout(r, 300));
  // Now a worker for `idle` starts: it must skip the cancelled job, and still serve new ones.
  const late = await startWorker(db.url, ['--models', 'idle']);
  try {
    const next = await client.chat.completions.create({ model: 'idle', messages: [{ role: 'user', content: 'runs' }], max_tokens: 3 });
    expect(next.choices[0]!.finish_reason).toBe('length');
  } finally {
    await late.stop();
  }
  const rows = await query<{ status: string; started_at: Date | null; worker: string | null }>(
    db.url,
    `select status, started_at, worker from ai.requests where input->'messages'->0->>'content' = 'never runs'`,
  );
  expect(rows).toEqual([{ status: 'cancelled', started_at: null, worker: null }]);
});
