import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** /metrics, the per-request log line, and usage per key and model in SQL. */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;
let key: string;
const SECRET_PROMPT = 'the password is swordfish';

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'observer'], env)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
});

/** A worker-published series of model tiny in a /metrics text. */
const value = (text: string, name: string) => Number(text.match(new RegExp(`^${name}\\{model="tiny",worker="[^"]+"\\} (\\S+)$`, 'm'))?.[1] ?? NaN);
const metrics = async () => (await fetch(`${serve.url}/metrics`)).text();
/** The metrics once the worker has published a prefix-cache lookup more than in `since` (workers publish with their heartbeat). */
async function after(since: string): Promise<string> {
  let text = '';
  for (const t0 = Date.now(); Date.now() - t0 < 20_000; await new Promise((r) => setTimeout(r, 500))) {
    text = await metrics();
    if (value(text, 'switchyard_prefix_cache_lookups_total') > value(since, 'switchyard_prefix_cache_lookups_total')) break;
  }
  return text;
}
/** Prompt tokens the prefix cache saved between two /metrics texts. */
const saved = (a: string, b: string) => value(b, 'switchyard_prefix_cache_tokens_saved_total') - value(a, 'switchyard_prefix_cache_tokens_saved_total');

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

it('counts requests, tokens, queue wait and time to first token, and shows queue depth and live workers', async () => {
  const chat = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: SECRET_PROMPT }], max_tokens: 7 }).withResponse();
  await client.embeddings.create({ model: 'minilm', input: 'hello' });
  await client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }).catch(() => {});
  const res = await fetch(`${serve.url}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/text\/plain/);
  const text = await res.text();
  expect(text).toContain('switchyard_requests_total{endpoint="/v1/chat/completions",model="tiny",status="200"} 1');
  // A name no model has is no label value (clients could add series without bound).
  expect(text).toContain('switchyard_requests_total{endpoint="/v1/chat/completions",model="unknown",status="404"} 1');
  expect(text).not.toContain('model="nope"');
  expect(text).toContain('switchyard_requests_total{endpoint="/v1/embeddings",model="minilm",status="200"} 1');
  expect(text).toContain('switchyard_tokens_total{kind="completion",model="tiny"} 7');
  expect(text).toMatch(/switchyard_time_to_first_token_seconds_count\{model="tiny"\} 1/);
  expect(text).toMatch(/switchyard_queue_wait_seconds_count\{model="tiny"\} 1/);
  expect(text).toMatch(/switchyard_request_duration_seconds_bucket\{endpoint="\/v1\/chat\/completions",le="\+Inf"\} 2/);
  expect(text).toContain('switchyard_workers 1');

  // One JSON line per request, carrying the id that is in the header and in ai.requests.
  const requestId = chat.response.headers.get('x-request-id')!;
  await new Promise((r) => setTimeout(r, 100));
  const line = serve
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l.request_id === requestId);
  expect(line).toMatchObject({ msg: 'request', route: '/v1/chat/completions', status: 200, model: 'tiny' });
  expect(serve.output()).not.toContain(SECRET_PROMPT);
  expect(serve.output()).not.toContain(key);
  expect(await query(db.url, 'select 1 from ai.requests where id = $1', [requestId])).toHaveLength(1);
});

it('exports the decode batches: steps, sequences per step and tokens, per worker and model', async () => {
  // Four at once share decode steps: 4 × 64 tokens, the first of each from its prefill (long
  // enough to overlap even on a loaded machine).
  await Promise.all(Array.from({ length: 4 }, () => client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 64 })));
  let text = '';
  // Workers publish these with their heartbeat (every 10 s by default).
  for (const t0 = Date.now(); Date.now() - t0 < 20_000; await new Promise((r) => setTimeout(r, 500))) {
    text = await (await fetch(`${serve.url}/metrics`)).text();
    if (value(text, 'switchyard_batch_decode_tokens_total') >= 4 * 63 + 6) break;
  }
  // 4 × 63 decode tokens here, plus 6 from the first test's 7-token request.
  expect(value(text, 'switchyard_batch_decode_tokens_total')).toBe(4 * 63 + 6);
  expect(value(text, 'switchyard_batch_size_max')).toBeGreaterThanOrEqual(2);
  expect(value(text, 'switchyard_batch_steps_total')).toBeLessThan(4 * 63 + 6);
  expect(value(text, 'switchyard_batch_admitted_total')).toBe(5);
  expect(value(text, 'switchyard_batch_sequences')).toBe(0);
  expect(text).toContain('# TYPE switchyard_batch_step_sequences_total counter');
});

it('reports usage per key, model and day in SQL', async () => {
  const rows = await query<{ key_name: string; model: string; requests: number; completion_tokens: number }>(
    db.url,
    `select key_name, model, requests::int, completion_tokens::int from ai.usage_daily where model = 'tiny' and day = date_trunc('day', now())`,
  );
  // The first test's request, then the four of the batch test.
  expect(rows).toEqual([{ key_name: 'observer', model: 'tiny', requests: 5, completion_tokens: 7 + 4 * 64 }]);
});

it('exports the prefix cache: a repeated system prompt is a hit, and its tokens are not prefilled again', async () => {
  const before = await metrics();
  const system = 'You answer questions about lighthouses, their keepers and the winter storms on the northern coast. '.repeat(4);
  const ask = (q: string) => client.chat.completions.create({ model: 'tiny', messages: [{ role: 'system', content: system }, { role: 'user', content: q }], max_tokens: 2 });
  await ask('first question');
  const first = await after(before);
  await ask('second question');
  const second = await after(first);
  // The first prompt is new: at most the template's opening tokens, inside its first block, come
  // from earlier requests. The second reuses the system prompt (well over 16 tokens).
  expect(saved(before, first)).toBeLessThan(16);
  expect(saved(first, second)).toBeGreaterThanOrEqual(16);
  expect(value(second, 'switchyard_prefix_cache_hits_total') - value(first, 'switchyard_prefix_cache_hits_total')).toBe(1);
  expect(value(second, 'switchyard_prefix_cache_bytes')).toBeGreaterThan(0);
  expect(second).toContain('# TYPE switchyard_prefix_cache_evictions_total counter');
});

it("keeps one key's prompts out of another key's prefix cache: the same system prompt under another key is prefilled anew", async () => {
  const other = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: (await cli(['keys', 'create', '--name', 'other tenant'], { DATABASE_URL: db.url })).stdout.trim(), maxRetries: 0 });
  const system = 'Another tenant keeps its own system prompt about the harbour and its pilots, long enough for blocks. '.repeat(4);
  const ask = (c: OpenAI) => c.chat.completions.create({ model: 'tiny', messages: [{ role: 'system', content: system }, { role: 'user', content: 'a question' }], max_tokens: 2 });
  const t0 = await metrics();
  await ask(client);
  const t1 = await after(t0);
  // The same prompt under another key: none of the first key's blocks, whole or inside one.
  await ask(other);
  const t2 = await after(t1);
  expect(saved(t1, t2)).toBe(0);
  // Under the first key again: its own blocks.
  await ask(client);
  const t3 = await after(t2);
  expect(saved(t2, t3)).toBeGreaterThanOrEqual(16);
});
