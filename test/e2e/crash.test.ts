import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * `kill -9` of a worker in the middle of a generation. Every process here takes a worker
 * silent for 2 s as dead (SWITCHYARD_WORKER_TIMEOUT; 30 s by default).
 */
let db: TestDatabase;
const procs: Proc[] = [];
let key: string;
const prompt = [{ role: 'user' as const, content: 'a long story please' }];

beforeAll(async () => {
  process.env.SWITCHYARD_WORKER_TIMEOUT = '2';
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'crash'], env)).stdout.trim();
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
});

async function runningOn(): Promise<{ id: string; worker: string }> {
  for (let i = 0; i < 200; i++) {
    const rows = await query<{ id: string; worker: string }>(db.url, `select id, worker from ai.requests where status = 'running'`);
    if (rows[0]) return rows[0];
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('no request started running');
}

it('with a second worker, the request completes there after the first one is killed', async () => {
  const serve = await startServe(db.url);
  const a = await startWorker(db.url);
  procs.push(serve, a);
  const client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
  const started = Date.now();
  const pending = client.chat.completions.create({ model: 'tiny', messages: prompt, max_tokens: 1500, temperature: 0 });
  const { id, worker } = await runningOn();
  expect(worker).toBe(a.workerId);
  const b = await startWorker(db.url);
  procs.push(b);
  a.child.kill('SIGKILL');
  const result = await pending;
  expect(result.choices[0]!.finish_reason).toBe('length');
  expect(result.usage!.completion_tokens).toBe(1500);
  const [row] = await query<{ status: string; worker: string }>(db.url, 'select status, worker from ai.requests where id = $1', [id]);
  expect(row).toEqual({ status: 'completed', worker: b.workerId });
  // The threshold (2 s) plus a generation from scratch, with generous room for a busy machine.
  expect(Date.now() - started).toBeLessThan(30_000);
  await b.stop();
});

it('with no attempts left, the request fails with an error that says why', async () => {
  const serve = await startServe(db.url, []);
  procs.push(serve);
  // A gateway that gives chat requests a single attempt.
  const strict = await (async () => {
    process.env.SWITCHYARD_CHAT_ATTEMPTS = '1';
    try {
      return await startServe(db.url);
    } finally {
      delete process.env.SWITCHYARD_CHAT_ATTEMPTS;
    }
  })();
  procs.push(strict);
  const c = await startWorker(db.url);
  procs.push(c);
  const client = new OpenAI({ baseURL: `${strict.url}/v1`, apiKey: key, maxRetries: 0 });
  const pending = client.chat.completions.create({ model: 'tiny', messages: prompt, max_tokens: 1500 }).catch((e) => e);
  const { id } = await runningOn();
  c.child.kill('SIGKILL');
  const err = await pending;
  expect(err, String(err)).toBeInstanceOf(OpenAI.InternalServerError);
  expect(err.code).toBe('worker_lost');
  const [row] = await query<{ status: string; error: { code: string; message: string } }>(db.url, 'select status, error from ai.requests where id = $1', [id]);
  expect(row!.status).toBe('failed');
  expect(row!.error.code).toBe('worker_lost');
  expect(row!.error.message).toMatch(/stopped responding/);
});
