import { readFileSync } from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** Backpressure and bounds: a full queue is a 429, a late request a 504, a huge body a 413. */
let db: TestDatabase;
let serve: Proc & { url: string };
const procs: Proc[] = [];
let key: string;

const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

const post = (url: string, body: unknown, path = '/v1/chat/completions', auth = key) =>
  fetch(`${url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${auth}`, 'content-type': 'application/json' },
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

describe('batch work and the bound', () => {
  it('queued batch work does not count against the bound: interactive requests are still admitted beside a deep batch', async () => {
    // Batch lines (priority 1) far past the bound (3), as a Batch API job or ai.submit_chat leaves them.
    await query(db.url, `insert into ai.requests (id, endpoint, model, requested_model, input, params, priority)
                         select gen_random_uuid(), 'chat.completions', 'tiny', 'tiny', '{"messages": [{"role": "user", "content": "b"}]}', '{}', 1
                           from generate_series(1, 50)`);
    const res = await post(serve.url, { model: 'tiny', messages: [{ role: 'user', content: 'me first' }], max_tokens: 2 });
    expect(res.status).toBe(200);
    // (Nothing announced those rows, so they were still queued when it came: the worker finds them only by its poll.)
    await query(db.url, `update ai.requests set status = 'cancelled', finished_at = now() where priority = 1 and status in ('queued', 'running')`);
  });
});

describe('other bounds', () => {
  it('a body over the limit → 413 in the error envelope', async () => {
    // Declared with Content-Length and only begun, over a socket: the gateway answers before
    // reading it. (fetch sending all 17 MiB races the server closing the connection: EPIPE on
    // the client under load, not a server bug.)
    const { port } = new URL(serve.url);
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(Number(port), '127.0.0.1');
      let got = '';
      const timer = setTimeout(() => socket.destroy(new Error('no answer to an oversized body')), 10_000);
      socket.on('error', reject);
      socket.on('data', (c: Buffer) => {
        got += c.toString('latin1');
        const end = got.indexOf('\r\n\r\n');
        const length = Number(/content-length: (\d+)/i.exec(got.slice(0, Math.max(0, end)))?.[1]);
        if (end >= 0 && got.length >= end + 4 + length) {
          clearTimeout(timer);
          socket.destroy();
          resolve(got);
        }
      });
      socket.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${17 * 1024 * 1024}\r\n\r\n{"model":"tiny","messages":[{"role":"user","content":"${'a'.repeat(1000)}`,
      );
    });
    expect(raw).toMatch(/^HTTP\/1\.1 413 /);
    const body = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as { error: { type: string } };
    expect(body.error.type).toBe('invalid_request_error');
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

describe('bounded work per request', () => {
  type ErrorBody = { error: { type: string; code: string; param: string } };
  // A stack of its own: the worker above serves every model, and would share these requests.
  let db: TestDatabase;
  let serve: Proc & { url: string };
  const procs: Proc[] = [];
  let bkey: string;
  const send = (body: unknown, path?: string) => post(serve.url, body, path, bkey);
  const word = 'a'.repeat(6 * 1024 * 1024);
  const bound = async (model: string) =>
    (await query<{ b: unknown }>(db.url, 'select input_bound as b from ai.models where name = $1', [model]))[0]?.b ?? null;

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
    await db?.drop();
  });

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = { DATABASE_URL: db.url };
    bkey = (await cli(['keys', 'create', '--name', 'bounded'], env)).stdout.trim();
    serve = await startServe(db.url);
    procs.push(serve);
    expect((await cli(['models', 'add', 'bounded', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
    expect((await cli(['models', 'add', 'bounded-embed', '--task', 'embedding', '--source', 'tiny-embed'], env)).code).toBe(0);
    procs.push(await startWorker(db.url, ['--models', 'bounded,bounded-embed']));
    // The worker records what the gateway needs when it loads the models.
    for (let i = 0; i < 200 && (!(await bound('bounded')) || !(await bound('bounded-embed'))); i++) await new Promise((r) => setTimeout(r, 100));
    expect(await bound('bounded')).toMatchObject({ kind: 'chars', contextLength: 2048 });
    expect(await bound('bounded-embed')).toMatchObject({ kind: 'words' });
  }, 60_000);

  it('a 6 MiB one-word prompt does not stall the model: a small request answers within 3 s, the big one gets a 400', async () => {
    // The gateway does not know the bound (as for a request from SQL or the SDK): the worker refuses it.
    const saved = await bound('bounded');
    await query(db.url, `update ai.models set input_bound = null where name = 'bounded'`);
    await new Promise((r) => setTimeout(r, 1200)); // the gateway's model cache
    try {
      const big = send({ model: 'bounded', messages: [{ role: 'user', content: word }], max_tokens: 4 });
      for (let i = 0; i < 100; i++) {
        const [r] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where model = 'bounded' and status <> 'queued'`);
        if (r!.n > 0) break;
        await new Promise((res) => setTimeout(res, 20));
      }
      const started = Date.now();
      const small = await send({ model: 'bounded', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 });
      expect(small.status).toBe(200);
      expect(Date.now() - started).toBeLessThan(3000);
      const res = await big;
      expect(res.status).toBe(400);
      expect(((await res.json()) as ErrorBody).error).toMatchObject({ type: 'invalid_request_error', code: 'context_length_exceeded', param: 'messages' });
    } finally {
      await query(db.url, `update ai.models set input_bound = $1 where name = 'bounded'`, [JSON.stringify(saved)]);
      await new Promise((r) => setTimeout(r, 1200));
    }
  }, 60_000);

  it('the gateway refuses before queueing when it knows the bound: chat, completions, embeddings', async () => {
    const [before] = await query<{ n: number }>(db.url, 'select count(*)::int as n from ai.requests');
    const cases: [string, unknown, string][] = [
      ['/v1/chat/completions', { model: 'bounded', messages: [{ role: 'user', content: word }] }, 'messages'],
      ['/v1/completions', { model: 'bounded', prompt: ['ok', word] }, 'prompt'],
      ['/v1/embeddings', { model: 'bounded-embed', input: ['ok', 'hello world '.repeat(1000)] }, 'input'],
    ];
    for (const [path, body, param] of cases) {
      const started = Date.now();
      const res = await send(body, path);
      expect(res.status, path).toBe(400);
      expect(((await res.json()) as ErrorBody).error, path).toMatchObject({ code: 'context_length_exceeded', param });
      expect(Date.now() - started).toBeLessThan(2000);
    }
    const [after] = await query<{ n: number }>(db.url, 'select count(*)::int as n from ai.requests');
    expect(after!.n).toBe(before!.n);
  });

  it('n × (prompt + max_tokens) beyond the budget is a 400 naming n, from the gateway or the worker', async () => {
    // 32 prompts × n = 128: 4096 sequences from one request.
    let res = await send({ model: 'bounded', prompt: Array.from({ length: 32 }, (_, i) => `p${i}`), n: 128, max_tokens: 1 }, '/v1/completions');
    expect(res.status).toBe(400);
    expect(((await res.json()) as ErrorBody).error).toMatchObject({ code: 'invalid_value', param: 'n' });
    // n × max_tokens alone is over the budget (65536): the gateway knows without the prompt.
    res = await send({ model: 'bounded', messages: [{ role: 'user', content: 'hi' }], n: 128, max_tokens: 1000 });
    expect(res.status).toBe(400);
    expect(((await res.json()) as ErrorBody).error).toMatchObject({ code: 'invalid_value', param: 'n' });
    // Only the prompt's tokens tip it over: 34 × (~60 + 1900) > 65536. The worker refuses it, before any output.
    res = await send({ model: 'bounded', messages: [{ role: 'user', content: 'hello '.repeat(50) }], n: 34, max_tokens: 1900, stream: true });
    expect(res.status).toBe(400);
    expect(((await res.json()) as ErrorBody).error).toMatchObject({ code: 'invalid_value', param: 'n' });
    const [row] = await query<{ status: string }>(db.url, `select status from ai.requests where params->>'n' = '34'`);
    expect(row!.status).toBe('failed');
  }, 120_000);
});
