import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** Postgres is the only coordination point: two gateways and two workers share one database. */
let db: TestDatabase;
const procs: Proc[] = [];
let urls: string[];
let workerIds: string[];
let key: string;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'scale'], env)).stdout.trim();
  // One job at a time per worker, so concurrent requests must spread over both.
  const [s1, s2, w1, w2] = await Promise.all([
    startServe(db.url),
    startServe(db.url),
    startWorker(db.url, ['--concurrency', '1']),
    startWorker(db.url, ['--concurrency', '1']),
  ]);
  procs.push(s1, s2, w1, w2);
  urls = [s1.url, s2.url];
  workerIds = [w1.workerId, w2.workerId];
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
});

it('spreads concurrent requests from both gateways over both workers', async () => {
  const clients = urls.map((url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 }));
  const results = await Promise.all(
    Array.from({ length: 12 }, (_, i) =>
      clients[i % 2]!.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: `request ${i}` }], max_tokens: 150, temperature: 0 }),
    ),
  );
  for (const r of results) expect(r.usage!.completion_tokens).toBe(150);
  const rows = await query<{ worker: string; n: number }>(db.url, `select worker, count(*)::int as n from ai.requests where status = 'completed' group by worker`);
  expect(rows.map((r) => r.worker).sort()).toEqual([...workerIds].sort());
  expect(rows.reduce((s, r) => s + r.n, 0)).toBe(12);
});
