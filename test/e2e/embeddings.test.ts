import { AutoTokenizer, env, pipeline } from '@huggingface/transformers';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** /v1/embeddings through serve + worker processes, with the official openai client. */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;
let key: string;

const cosine = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return dot / Math.sqrt(na * nb);
};
const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed', '--alias', 'text-embedding-3-small'], e)).code).toBe(0);
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], e)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'emb'], e)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

describe('embeddings', () => {
  it('returns the same vectors with the SDK default (base64) and float, equal to the model run in-process', async () => {
    const input = ['The quick brown fox', 'jumps over the lazy dog', 'Postgres keeps everything'];
    const b64 = await client.embeddings.create({ model: 'minilm', input });
    const flt = await client.embeddings.create({ model: 'minilm', input, encoding_format: 'float' });
    expect(b64.object).toBe('list');
    expect(b64.model).toBe('minilm');
    expect(b64.data.map((d) => d.index)).toEqual([0, 1, 2]);
    for (let i = 0; i < 3; i++) {
      expect(b64.data[i]!.object).toBe('embedding');
      expect(b64.data[i]!.embedding).toHaveLength(32);
      expect(b64.data[i]!.embedding).toEqual(flt.data[i]!.embedding);
    }
    const extractor = await pipeline('feature-extraction', 'tiny-embed', { dtype: 'fp32' });
    const local = await extractor(input, { pooling: 'mean', normalize: true });
    for (let i = 0; i < 3; i++) {
      expect(cosine(flt.data[i]!.embedding, (local.tolist() as number[][])[i]!)).toBeGreaterThan(0.99999);
    }
    const tok = await AutoTokenizer.from_pretrained('tiny-embed');
    expect(flt.usage.prompt_tokens).toBe(input.reduce((s, t) => s + tok.encode(t).length, 0));
    expect(flt.usage.total_tokens).toBe(flt.usage.prompt_tokens);
  });

  it('truncates to `dimensions` and re-normalises', async () => {
    const full = await client.embeddings.create({ model: 'minilm', input: 'hello world', encoding_format: 'float' });
    const cut = await client.embeddings.create({ model: 'minilm', input: 'hello world', dimensions: 8, encoding_format: 'float' });
    const v = cut.data[0]!.embedding;
    expect(v).toHaveLength(8);
    expect(norm(v)).toBeCloseTo(1, 5);
    expect(cosine(v, full.data[0]!.embedding.slice(0, 8))).toBeCloseTo(1, 5);
  });

  it('accepts token ids, a list of token-id lists, and aliases', async () => {
    const tok = await AutoTokenizer.from_pretrained('tiny-embed');
    const ids = tok.encode('hello world');
    const byText = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'hello world', encoding_format: 'float' });
    const byIds = await client.embeddings.create({ model: 'minilm', input: ids, encoding_format: 'float' });
    const byLists = await client.embeddings.create({ model: 'minilm', input: [ids, ids.slice(0, 3)], encoding_format: 'float' });
    expect(byIds.data[0]!.embedding).toEqual(byText.data[0]!.embedding);
    expect(byLists.data[0]!.embedding).toEqual(byText.data[0]!.embedding);
    expect(byLists.data).toHaveLength(2);
    expect(byIds.usage.prompt_tokens).toBe(ids.length);
  });

  it('serves repeated inputs from the cache in Postgres', async () => {
    const text = `cache me ${Date.now()}`;
    const first = await client.embeddings.create({ model: 'minilm', input: text, encoding_format: 'float' }).withResponse();
    const again = await client.embeddings.create({ model: 'minilm', input: [text], encoding_format: 'float' }).withResponse();
    expect(again.data.data[0]!.embedding).toEqual(first.data.data[0]!.embedding);
    const rows = await query<{ cached: number }>(db.url, `select (output->>'cached')::int as cached from ai.requests where id = any($1::uuid[]) order by queued_at`, [
      [first.response.headers.get('x-request-id'), again.response.headers.get('x-request-id')],
    ]);
    expect(rows.map((r) => r.cached)).toEqual([0, 1]);
    const [n] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.embedding_cache where model = 'minilm' and input_hash = ai.embedding_input_hash('minilm', to_jsonb($1::text))`, [text]);
    expect(n!.n).toBe(1);
  });

  it('splits 2048 inputs into model-sized calls', async () => {
    const input = Array.from({ length: 2048 }, (_, i) => `sentence number ${i}`);
    const r = await client.embeddings.create({ model: 'minilm', input, encoding_format: 'float' });
    expect(r.data).toHaveLength(2048);
    expect(r.data[2047]!.index).toBe(2047);
    expect(norm(r.data[1000]!.embedding)).toBeCloseTo(1, 5);
  });

  const modelCalls = async (prefix: string) =>
    (await query<{ requests: number; calls: number }>(
      db.url,
      `select count(*)::int as requests, count(distinct c)::int as calls
         from ai.requests, jsonb_array_elements_text(output->'model_calls') c
        where input->'input'->>0 like $1`,
      [`${prefix} %`],
    ))[0]!;

  it('batches 256 concurrent single-input requests into few model calls', async () => {
    const stamp = `concurrent ${Date.now()}`;
    const results = await Promise.all(
      Array.from({ length: 256 }, (_, i) => client.embeddings.create({ model: 'minilm', input: `${stamp} ${i}`, encoding_format: 'float' })),
    );
    expect(results.every((r) => r.data[0]!.embedding.length === 32)).toBe(true);
    const row = await modelCalls(stamp);
    expect(row.requests).toBe(256);
    // While the burst is still arriving the worker runs what it has (2–5 calls on an idle machine,
    // up to ~55 on a loaded one, where the burst trickles in): fewer calls than requests is what
    // batching guarantees whatever the timing; without it this would be 256.
    expect(row.calls).toBeLessThanOrEqual(128);
  });

  it('coalesces a burst into shared enqueue statements, and logs one row per API request with its own key, usage and timings', async () => {
    const key2 = (await cli(['keys', 'create', '--name', 'emb-other'], { DATABASE_URL: db.url })).stdout.trim();
    const other = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key2, maxRetries: 0 });
    const keyIds = Object.fromEntries(
      (await query<{ id: string; name: string }>(db.url, `select id::text, name from ai.api_keys where name in ('emb', 'emb-other')`)).map((r) => [r.name, r.id]),
    );
    const stamp = `burst ${Date.now()}`;
    const n = 48;
    const texts = Array.from({ length: n }, (_, i) => `${stamp} ${i} ${'word '.repeat(i % 7)}`);
    const sent = await Promise.all(
      texts.map((input, i) => (i % 2 ? other : client).embeddings.create({ model: 'minilm', input, encoding_format: 'float' }).withResponse()),
    );
    // One request in the same burst that the worker rejects (a token id outside the vocabulary):
    // it fails alone, and nobody else's result is affected.
    const bad = await fetch(`${serve.url}/v1/embeddings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key2}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'minilm', input: [101, 999999, 102] }),
    });
    expect(bad.status).toBe(400);
    const ids = sent.map((r) => r.response.headers.get('x-request-id')!);
    expect(new Set(ids).size).toBe(n);
    const rows = await query<{ id: string; key_id: string; status: string; prompt_tokens: number; input: string; queued_at: string; started: boolean; finished: boolean }>(
      db.url,
      `select id::text, key_id::text, status, (usage->>'prompt_tokens')::int as prompt_tokens, input->'input'->>0 as input,
              queued_at::text, started_at is not null as started, finished_at >= started_at as finished
         from ai.requests where id = any($1::uuid[])`,
      [ids],
    );
    expect(rows).toHaveLength(n);
    const byId = new Map(rows.map((r) => [r.id, r]));
    sent.forEach((r, i) => {
      const row = byId.get(ids[i]!)!;
      expect(row.input).toBe(texts[i]);
      expect(row.key_id).toBe(keyIds[i % 2 ? 'emb-other' : 'emb']);
      expect(row).toMatchObject({ status: 'completed', started: true, finished: true, prompt_tokens: r.data.usage.prompt_tokens });
    });
    // Rows written by one statement share its transaction's now(): fewer distinct times than
    // requests means requests travelled together. (Each in its own transaction, all would differ.)
    const statements = new Set(rows.map((r) => r.queued_at)).size;
    expect(statements).toBeLessThan(n);
    // Each response holds its own input's vector: asked again one at a time (from the cache),
    // every text gives back exactly what its burst request received.
    for (let i = 0; i < n; i += 5) {
      const again = await client.embeddings.create({ model: 'minilm', input: texts[i]!, encoding_format: 'float' });
      expect(again.data[0]!.embedding).toEqual(sent[i]!.data.data[0]!.embedding);
    }
    expect(sent[0]!.data.data[0]!.embedding).not.toEqual(sent[1]!.data.data[0]!.embedding);
  });

  it('claims requests that are already queued together: 256 of them in one or two model calls', async () => {
    // No worker while the requests queue up, so the claim sees all of them at once.
    await worker.stop();
    const stamp = `queued ${Date.now()}`;
    const pending = Promise.all(
      Array.from({ length: 256 }, (_, i) => client.embeddings.create({ model: 'minilm', input: `${stamp} ${i}`, encoding_format: 'float' })),
    );
    let queued = 0;
    while (queued < 256) {
      await new Promise((r) => setTimeout(r, 50));
      const [row] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where status = 'queued' and input->'input'->>0 like $1`, [`${stamp} %`]);
      queued = row!.n;
    }
    worker = await startWorker(db.url);
    const results = await pending;
    expect(results.every((r) => r.data[0]!.embedding.length === 32)).toBe(true);
    const row = await modelCalls(stamp);
    expect(row.requests).toBe(256);
    expect(row.calls).toBeLessThanOrEqual(2);
  });
});

describe('embedding errors', () => {
  const post = async (body: unknown, raw?: Buffer) => {
    const res = await fetch(`${serve.url}/v1/embeddings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: raw ?? JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as { error: { param: string | null; code: string | null; message: string; type: string } } };
  };

  it.each([
    ['empty string', { model: 'minilm', input: '' }, 400, 'input'],
    ['empty list', { model: 'minilm', input: [] }, 400, 'input'],
    ['2049 inputs', { model: 'minilm', input: Array.from({ length: 2049 }, () => 'x') }, 400, 'input'],
    ['mixed types', { model: 'minilm', input: ['a', 1] }, 400, 'input[1]'],
    ['empty string in a list', { model: 'minilm', input: ['a', ''] }, 400, 'input[1]'],
    ['negative token id', { model: 'minilm', input: [1, -2] }, 400, 'input[1]'],
    ['lone surrogate', { model: 'minilm', input: 'a\ud800b' }, 400, 'input'],
    ['unknown model', { model: 'nope', input: 'a' }, 404, 'model'],
    ['chat model', { model: 'tiny', input: 'a' }, 400, 'model'],
    ['dimensions 0', { model: 'minilm', input: 'a', dimensions: 0 }, 400, 'dimensions'],
    ['dimensions above the model', { model: 'minilm', input: 'a', dimensions: 64 }, 400, 'dimensions'],
    ['bad encoding_format', { model: 'minilm', input: 'a', encoding_format: 'int8' }, 400, 'encoding_format'],
    ['token id outside the vocabulary', { model: 'minilm', input: [101, 999999, 102] }, 400, 'input'],
    ['input longer than the model takes', { model: 'minilm', input: 'word '.repeat(700) }, 400, 'input'],
  ])('%s → %i naming %s', async (_name, body, status, param) => {
    const r = await post(body);
    expect(r.status).toBe(status);
    expect(r.body.error.param).toBe(param);
    expect(r.body.error.message.length).toBeGreaterThan(5);
  });

  it('a too-long input names its index and the limit', async () => {
    const r = await post({ model: 'minilm', input: ['short', 'word '.repeat(700)] });
    expect(r.body.error.code).toBe('context_length_exceeded');
    expect(r.body.error.message).toMatch(/input\[1\].*at most 512/);
  });

  it('a body that is not UTF-8 → 400', async () => {
    const raw = Buffer.concat([Buffer.from('{"model":"minilm","input":"a'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]);
    const r = await post(null, raw);
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('invalid_encoding');
  });

  it('the worker is still alive afterwards', async () => {
    expect(worker.exited()).toBe(false);
    const r = await client.embeddings.create({ model: 'minilm', input: 'still here' });
    expect(r.data).toHaveLength(1);
  });
});
