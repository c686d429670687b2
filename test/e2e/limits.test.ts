import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** Backpressure and bounds: a full queue is a 429, a late request a 504, a huge body a 413. */
let db: TestDatabase;
let serve: Proc & { url: string };
const procs: Proc[] = [];
let key: string;

const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

const post = (url: string, body: unknown) =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat', '--max-queue', '3'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'limits'], env)).stdout.trim();
  serve = await startServe(db.url);
  procs.push(serve);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
});

describe('a bounded queue per model', () => {
  it('answers 429 with Retry-After past the bound, keeps memory bounded, and completes every accepted request', async () => {
    // No worker yet: requests wait in the queue, so the bound (3) is reached at once.
    const accepted = [0, 1, 2].map((i) => post(serve.url, { model: 'tiny', messages: [{ role: 'user', content: `keep ${i}` }], max_tokens: 4 }));
    for (let i = 0; i < 100; i++) {
      const [r] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where status = 'queued'`);
      if (r!.n === 3) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    const before = rssMiB(serve.child.pid!);
    const statuses: number[] = [];
    for (let round = 0; round < 10; round++) {
      const flood = await Promise.all(
        Array.from({ length: 100 }, () => post(serve.url, { model: 'tiny', messages: [{ role: 'user', content: 'x'.repeat(2000) }], max_tokens: 4 })),
      );
      for (const res of flood) {
        statuses.push(res.status);
        if (res.status === 429) {
          expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
          const body = (await res.json()) as { error: { type: string; code: string; param: string } };
          expect(body.error).toMatchObject({ type: 'rate_limit_error', code: 'queue_full', param: 'model' });
        } else await res.body?.cancel();
      }
    }
    expect(statuses.filter((s) => s === 429)).toHaveLength(1000);
    expect(rssMiB(serve.child.pid!) - before).toBeLessThan(150);
    procs.push(await startWorker(db.url));
    const done = await Promise.all(accepted);
    for (const res of done) expect(res.status).toBe(200);
    const rows = await query<{ status: string; n: number }>(db.url, 'select status, count(*)::int as n from ai.requests group by status');
    expect(rows).toEqual([{ status: 'completed', n: 3 }]);
  });
});

describe('other bounds', () => {
  it('a body over the limit → 413 in the error envelope', async () => {
    const res = await post(serve.url, `{"model":"tiny","messages":[{"role":"user","content":"${'a'.repeat(17 * 1024 * 1024)}"}]}`);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe('invalid_request_error');
  });

  it('a request that cannot finish within the deadline → 504, and it is cancelled', async () => {
    process.env.SWITCHYARD_REQUEST_TIMEOUT = '1';
    let strict: (Proc & { url: string }) | undefined;
    try {
      strict = await startServe(db.url);
    } finally {
      delete process.env.SWITCHYARD_REQUEST_TIMEOUT;
    }
    procs.push(strict);
    expect((await cli(['models', 'add', 'nobody', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url })).code).toBe(0);
    const started = Date.now();
    const res = await post(strict.url, { model: 'nobody', messages: [{ role: 'user', content: 'hi' }] });
    expect(res.status).toBe(504);
    expect(((await res.json()) as { error: { type: string; code: string } }).error).toMatchObject({ type: 'timeout_error', code: 'request_timeout' });
    expect(Date.now() - started).toBeLessThan(5000);
    const [row] = await query<{ status: string }>(db.url, `select status from ai.requests where model = 'nobody'`);
    expect(row!.status).toBe('cancelled');
  });
});
