import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** /v1/completions with a list of prompts: a client that leaves cancels every prompt's request. */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let key: string;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'c'], env)).stdout.trim();
  // allSettled: if one fails to start, the other is still stopped in afterAll.
  const [s, w] = await Promise.allSettled([startServe(db.url), startWorker(db.url, ['--models', 'tiny'])]);
  if (s.status === 'fulfilled') serve = s.value;
  if (w.status === 'fulfilled') worker = w.value;
  if (s.status === 'rejected') throw s.reason;
  if (w.status === 'rejected') throw w.reason;
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

it('closing a multi-prompt stream leaves every one of its requests cancelled', async () => {
  const controller = new AbortController();
  const res = await fetch(`${serve.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', prompt: ['one', 'two', 'three'], max_tokens: 2000, stream: true }),
    signal: controller.signal,
  });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  await reader.read(); // the first chunk: all three are queued and started
  controller.abort();
  await reader.cancel().catch(() => {});
  const statuses = async () => (await query<{ status: string }>(db.url, `select status from ai.requests where endpoint = 'completions' order by queued_at`)).map((r) => r.status);
  for (const end = Date.now() + 5000; Date.now() < end && !(await statuses()).every((s) => s === 'cancelled'); ) await new Promise((r) => setTimeout(r, 100));
  expect(await statuses()).toEqual(['cancelled', 'cancelled', 'cancelled']);
});
