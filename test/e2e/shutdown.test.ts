import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** SIGTERM on a busy worker: what it runs completes, what it has not started goes elsewhere. */
let db: TestDatabase;
const procs: Proc[] = [];
let client: OpenAI;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  const key = (await cli(['keys', 'create', '--name', 'term'], env)).stdout.trim();
  const serve = await startServe(db.url);
  procs.push(serve);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
});

it('finishes in-flight generations, takes no new work, and exits', async () => {
  const a = await startWorker(db.url, ['--concurrency', '2']);
  procs.push(a);
  const long = [0, 1].map((i) =>
    client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: `long ${i}` }], max_tokens: 800, temperature: 0 }),
  );
  for (let i = 0; i < 200; i++) {
    const [r] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where status = 'running'`);
    if (r!.n === 2) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  const exited = new Promise<number | null>((resolve) => a.child.once('exit', (code) => resolve(code)));
  a.child.kill('SIGTERM');
  await new Promise((res) => setTimeout(res, 200));
  // Sent after the SIGTERM: the stopping worker must not take it.
  const later = client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'after' }], max_tokens: 5 });
  const done = await Promise.all(long);
  for (const r of done) expect(r.usage!.completion_tokens).toBe(800);
  expect(await exited).toBe(0);
  const b = await startWorker(db.url);
  procs.push(b);
  expect((await later).choices[0]!.finish_reason).toBe('length');
  const rows = await query<{ content: string; worker: string; status: string }>(
    db.url,
    `select input->'messages'->0->>'content' as content, worker, status from ai.requests order by queued_at`,
  );
  expect(rows).toEqual([
    expect.objectContaining({ worker: a.workerId, status: 'completed' }),
    expect.objectContaining({ worker: a.workerId, status: 'completed' }),
    { content: 'after', worker: b.workerId, status: 'completed' },
  ]);
  const live = await query<{ id: string }>(db.url, 'select id from ai.workers');
  expect(live.map((w) => w.id)).toEqual([b.workerId]);
});
