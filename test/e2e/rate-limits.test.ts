import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, start, startWorker, type Proc } from '../helpers/stack.js';

/**
 * Rate limits with the database as the shared state: two serve processes share one key's
 * per-window counts, every admitted response carries OpenAI's x-ratelimit-* headers, a refusal
 * carries Retry-After, and the official client's retries wait for it. The window is shortened
 * (SWITCHYARD_RATE_WINDOW=15 s) so a retry test does not wait a minute; limits are per window.
 */
const WINDOW_S = 15;
let db: TestDatabase;
const procs: Proc[] = [];
let serves: (Proc & { url: string })[];
const keys: Record<string, string> = {};

const startServe = async (url: string) => {
  const p = await start(['serve'], { DATABASE_URL: url, PORT: '0', HOST: '127.0.0.1', SWITCHYARD_RATE_WINDOW: String(WINDOW_S) }, /listening on (http:\/\/\S+)/);
  return { ...p, url: p.match[1]! };
};
const post = (base: string, key: string, body: Record<string, unknown> = {}) =>
  fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1, ...body }),
  }).then(async (res) => ({ status: res.status, headers: res.headers, body: (await res.json()) as Record<string, any> }));

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  expect((await cli(['models', 'add', 'mini', '--task', 'embedding', '--source', 'tiny-embed'], env)).code).toBe(0);
  expect((await cli(['models', 'add', 'guard', '--task', 'moderation', '--source', 'tiny-moderation'], env)).code).toBe(0);
  expect((await cli(['models', 'add', 'ranker', '--task', 'rerank', '--source', 'tiny-rerank'], env)).code).toBe(0);
  for (const name of ['rpm', 'tpm', 'retry', 'quota', 'free', 'stream', 'embed', 'side', 'sidequota']) keys[name] = (await cli(['keys', 'create', '--name', name], env)).stdout.trim();
  await query(db.url, `update ai.api_keys set rpm_limit = 2 where name = 'side'`);
  await query(db.url, `update ai.api_keys set budget_tokens = 60, budget_period = 'day' where name = 'sidequota'`);
  await query(db.url, `update ai.api_keys set rpm_limit = 20 where name = 'rpm'`);
  await query(db.url, `update ai.api_keys set rpm_limit = 1 where name = 'retry'`);
  await query(db.url, `update ai.api_keys set tpm_limit = 200 where name = 'tpm'`);
  await query(db.url, `update ai.api_keys set rpm_limit = 100, tpm_limit = 100000 where name = 'stream'`);
  await query(db.url, `update ai.api_keys set rpm_limit = 2 where name = 'embed'`);
  await query(db.url, `update ai.api_keys set budget_tokens = 1, budget_period = 'day' where name = 'quota'`);
  serves = await Promise.all([startServe(db.url), startServe(db.url)]);
  procs.push(...serves, await startWorker(db.url));
}, 120_000);

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
});

it('holds a requests-per-window limit across two serve processes, with OpenAI headers on each answer', async () => {
  const results = await Promise.all(Array.from({ length: 60 }, (_, i) => post(serves[i % 2]!.url, keys.rpm!)));
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status === 429);
  expect(ok.length + refused.length).toBe(60);
  // Exact when the flood fits in one window (it takes well under 15 s); the contract is within 10%.
  expect(ok.length).toBeGreaterThanOrEqual(18);
  expect(ok.length).toBeLessThanOrEqual(22);
  // Each serve had 30 of them: counted per process, 40 would pass. The remainders form one sequence.
  const remaining = ok.map((r) => Number(r.headers.get('x-ratelimit-remaining-requests'))).sort((a, b) => a - b);
  expect(remaining).toEqual(Array.from({ length: ok.length }, (_, i) => i).map((i) => Math.max(0, 20 - ok.length + i)));
  for (const r of ok) {
    expect(r.headers.get('x-ratelimit-limit-requests')).toBe('20');
    expect(r.headers.get('x-ratelimit-reset-requests')).toMatch(/^(\d+ms|\d+s)$/);
    expect(r.headers.get('x-ratelimit-limit-tokens')).toBeNull(); // no token limit on this key
  }
  for (const r of refused) {
    expect(r.body.error).toMatchObject({ type: 'rate_limit_error', code: 'rate_limit_exceeded', param: null });
    const after = Number(r.headers.get('retry-after'));
    expect(after).toBeGreaterThanOrEqual(1);
    expect(after).toBeLessThanOrEqual(WINDOW_S);
    expect(r.headers.get('x-ratelimit-remaining-requests')).toBe('0');
  }
  const [row] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests r join ai.api_keys k on k.id = r.key_id where k.name = 'rpm'`);
  expect(row!.n).toBe(ok.length);
}, 120_000);

it('charges prompt + max_tokens against a tokens-per-window limit, shared by both serves', async () => {
  const a = await post(serves[0]!.url, keys.tpm!, { max_tokens: 50 });
  expect(a.status).toBe(200);
  expect(a.headers.get('x-ratelimit-limit-tokens')).toBe('200');
  const charged = 200 - Number(a.headers.get('x-ratelimit-remaining-tokens'));
  const prompt = charged - 50; // the same prompt each time: what the gateway counts for it
  expect(prompt).toBeGreaterThan(0);
  const left = 200 - charged;
  const b = await post(serves[1]!.url, keys.tpm!, { max_tokens: left - prompt + 1 }); // one token too many, on the other serve
  expect(b.status).toBe(429);
  expect(b.body.error.code).toBe('rate_limit_exceeded');
  expect(b.headers.get('x-ratelimit-remaining-tokens')).toBe('0');
  const c = await post(serves[1]!.url, keys.tpm!, { max_tokens: left - prompt }); // exactly what is left
  expect(c.status).toBe(200);
  expect(c.headers.get('x-ratelimit-remaining-tokens')).toBe('0');
});

it("openai-node's retries wait for Retry-After and then succeed; an exhausted budget is not retried", async () => {
  let calls = 0;
  const counting: typeof fetch = (input, init) => {
    calls++;
    return fetch(input, init);
  };
  const client = (key: string) => new OpenAI({ baseURL: `${serves[0]!.url}/v1`, apiKey: key, maxRetries: 2, fetch: counting });
  const req = { model: 'tiny', messages: [{ role: 'user' as const, content: 'hi' }], max_tokens: 1 };
  await client(keys.retry!).chat.completions.create(req);
  const started = Date.now();
  calls = 0;
  const { response } = await client(keys.retry!).chat.completions.create(req).withResponse();
  const waited = Date.now() - started;
  expect(response.status).toBe(200);
  expect(calls).toBe(2); // one 429, one retry after the window
  expect(waited).toBeGreaterThan(1000);
  expect(waited).toBeLessThan((WINDOW_S + 5) * 1000);

  calls = 0;
  const err = await client(keys.quota!).chat.completions.create(req).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.RateLimitError);
  expect((err as InstanceType<typeof OpenAI.RateLimitError>).code).toBe('budget_exceeded');
  expect(calls).toBe(1);
}, 60_000);

it('a streamed answer carries the headers too (they go out with the 200, before the first chunk)', async () => {
  const res = await fetch(`${serves[1]!.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${keys.stream}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, stream: true }),
  });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
  expect(res.headers.get('x-ratelimit-limit-requests')).toBe('100');
  expect(res.headers.get('x-ratelimit-remaining-requests')).toBe('99');
  expect(res.headers.get('x-ratelimit-limit-tokens')).toBe('100000');
  expect(Number(res.headers.get('x-ratelimit-remaining-tokens'))).toBeLessThan(100000);
  expect(await res.text()).toMatch(/data: \[DONE\]/);
});

it('embeddings count too: each request of a coalesced group is admitted on its own', async () => {
  const embed = (base: string) =>
    fetch(`${base}/v1/embeddings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${keys.embed}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mini', input: 'hello' }),
    }).then(async (res) => ({ status: res.status, headers: res.headers, body: (await res.json()) as Record<string, any> }));
  const results = await Promise.all([embed(serves[0]!.url), embed(serves[0]!.url), embed(serves[1]!.url), embed(serves[1]!.url)]);
  const ok = results.filter((r) => r.status === 200);
  expect(ok).toHaveLength(2);
  for (const r of ok) expect(r.headers.get('x-ratelimit-limit-requests')).toBe('2');
  expect(ok.map((r) => r.headers.get('x-ratelimit-remaining-requests')).sort()).toEqual(['0', '1']);
  for (const r of results.filter((x) => x.status !== 200)) {
    expect(r.status).toBe(429);
    expect(r.body.error.code).toBe('rate_limit_exceeded');
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
  }
}, 60_000);

it('moderations and rerank are admitted like the rest: no way around a key\'s rate limit or budget', async () => {
  const call = (key: string, path: string, body: Record<string, unknown>) =>
    fetch(`${serves[0]!.url}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    }).then(async (res) => ({ status: res.status, headers: res.headers, body: (await res.json()) as Record<string, any> }));
  const moderate = (key: string, input: string) => call(key, '/v1/moderations', { model: 'guard', input });
  const rerank = (key: string, documents: string[]) => call(key, '/v1/rerank', { model: 'ranker', query: 'which one', documents });
  // Two requests per window, whichever endpoint spends them.
  const results = [await moderate(keys.side!, 'one'), await rerank(keys.side!, ['a', 'b']), await moderate(keys.side!, 'three'), await rerank(keys.side!, ['c'])];
  expect(results.map((r) => r.status)).toEqual([200, 200, 429, 429]);
  for (const r of results.slice(2)) {
    expect(r.body.error.code).toBe('rate_limit_exceeded');
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
  }
  // A 60-token budget: what a request may use (its bytes) is reserved, its usage spent.
  const big = 'x'.repeat(100);
  const over = [await moderate(keys.sidequota!, big), await rerank(keys.sidequota!, [big])];
  expect(over.map((r) => r.status)).toEqual([429, 429]);
  for (const r of over) expect(r.body.error.code).toBe('budget_exceeded');
  expect((await moderate(keys.sidequota!, 'short')).status).toBe(200);
  const [spend] = await query<{ spent: number; reserved: number }>(db.url,
    `select s.spent::int, s.reserved::int from ai.spend s join ai.api_keys k on k.id = s.subject where k.name = 'sidequota'`);
  expect(spend!.reserved).toBe(0);
  expect(spend!.spent).toBeGreaterThan(0);
  expect(spend!.spent).toBeLessThanOrEqual(60);
}, 60_000);

it('sends no x-ratelimit-* headers for a key without limits', async () => {
  const r = await post(serves[1]!.url, keys.free!);
  expect(r.status).toBe(200);
  expect([...r.headers.keys()].filter((h) => h.startsWith('x-ratelimit'))).toEqual([]);
});
