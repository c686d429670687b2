import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { AutoModelForSequenceClassification, AutoTokenizer, env } from '@huggingface/transformers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * Rerank (issue 19) through serve + worker processes: POST /v1/rerank (and vLLM's /rerank and
 * /v2/rerank) against the tiny-rerank cross-encoder run in-process, and ai.rerank in SQL.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let key: string;
let scopedKey: string;
const tag = randomBytes(4).toString('hex');
const APP = `sy_rr_app_${tag}`;
const NOBODY = `sy_rr_nobody_${tag}`;

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/** The same cross-encoder in this process: the padded batch transformers.js makes itself. */
async function reference(q: string, docs: string[]): Promise<number[]> {
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
  const tokenizer = await AutoTokenizer.from_pretrained('tiny-rerank');
  const model = await AutoModelForSequenceClassification.from_pretrained('tiny-rerank', { dtype: 'fp32' });
  const inputs = tokenizer(new Array(docs.length).fill(q), { text_pair: docs, padding: true, truncation: true });
  const out = (await model(inputs)) as { logits: { data: Float32Array } };
  await model.dispose();
  return Array.from(out.logits.data, sigmoid);
}

async function post(path: string, body: unknown, k: string | null = key): Promise<{ status: number; body: any }> {
  const res = await fetch(`${serve.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(k ? { authorization: `Bearer ${k}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const QUERY = 'what is a cat?';
const DOCS = [
  'a cat is a small domesticated animal',
  'the stock market fell sharply today after the announcement',
  'cats',
  'Postgres keeps everything next to the data',
  'kittens grow into cats within a year',
];

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'rr', '--task', 'rerank', '--source', 'tiny-rerank', '--alias', 'rerank-english-v3.0'], e)).code).toBe(0);
  expect((await cli(['models', 'add', 'rr-cut', '--task', 'rerank', '--source', 'tiny-rerank', '--truncate'], e)).code).toBe(0);
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], e)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'all'], e)).stdout.trim();
  scopedKey = (await cli(['keys', 'create', '--name', 'embed-only', '--models', 'minilm'], e)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  for (const role of [APP, NOBODY]) await admin.query(`drop role if exists ${role}`);
  await admin.end();
});

async function as<T>(role: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const u = new URL(db.url);
  u.username = role;
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

describe('POST /v1/rerank', () => {
  it('scores every document as the cross-encoder does in-process, sorted, with usage', async () => {
    const r = await post('/v1/rerank', { model: 'rr', query: QUERY, documents: DOCS });
    expect(r.status).toBe(200);
    expect(r.body.object).toBe('rerank');
    expect(r.body.model).toBe('rr');
    const expected = await reference(QUERY, DOCS);
    expect(r.body.results).toHaveLength(DOCS.length);
    for (const res of r.body.results) expect(Math.abs(res.relevance_score - expected[res.index]!)).toBeLessThan(1e-4);
    const scores = r.body.results.map((x: { relevance_score: number }) => x.relevance_score);
    expect(scores).toEqual([...scores].sort((a, b) => b - a));
    expect(new Set(r.body.results.map((x: { index: number }) => x.index))).toEqual(new Set([0, 1, 2, 3, 4]));
    expect(r.body.results[0].document).toBeUndefined();
    // Each pair is [CLS] query [SEP] document [SEP]: the tokens the model ran.
    const tokenizer = await AutoTokenizer.from_pretrained('tiny-rerank');
    const tokens = DOCS.reduce((n, d) => n + tokenizer.encode(QUERY, { text_pair: d }).length, 0);
    expect(r.body.usage).toEqual({ prompt_tokens: tokens, total_tokens: tokens });
    const [row] = await query<{ endpoint: string; status: string }>(db.url, `select endpoint, status from ai.requests where id = $1`, [r.body.id.replace(/^rerank-/, '')]);
    expect(row).toEqual({ endpoint: 'rerank', status: 'completed' });
  });

  it('top_n keeps the best n; return_documents returns their text; objects with text are documents too', async () => {
    const full = await post('/v1/rerank', { model: 'rr', query: QUERY, documents: DOCS });
    const r = await post('/v1/rerank', { model: 'rerank-english-v3.0', query: QUERY, documents: DOCS.map((text) => ({ text })), top_n: 2, return_documents: true });
    expect(r.status).toBe(200);
    expect(r.body.results).toHaveLength(2);
    expect(r.body.results.map((x: { index: number }) => x.index)).toEqual(full.body.results.slice(0, 2).map((x: { index: number }) => x.index));
    for (const res of r.body.results) expect(res.document).toEqual({ text: DOCS[res.index] });
    // top_n larger than the list: all of them.
    expect((await post('/v1/rerank', { model: 'rr', query: QUERY, documents: DOCS, top_n: 50 })).body.results).toHaveLength(DOCS.length);
  });

  it('answers at /rerank and /v2/rerank too, as vLLM does, with the same key check', async () => {
    const v1 = await post('/v1/rerank', { model: 'rr', query: QUERY, documents: DOCS });
    for (const path of ['/rerank', '/v2/rerank']) {
      const r = await post(path, { model: 'rr', query: QUERY, documents: DOCS });
      expect(r.status).toBe(200);
      expect(r.body.results).toEqual(v1.body.results);
      expect((await post(path, { model: 'rr', query: QUERY, documents: DOCS }, null)).status).toBe(401);
    }
  });

  it('refuses bad inputs with a 400 naming the param', async () => {
    const cases: [unknown, string][] = [
      [{ model: 'rr', query: QUERY, documents: [] }, 'documents'],
      [{ model: 'rr', query: QUERY, documents: Array.from({ length: 1001 }, (_, i) => `doc ${i}`) }, 'documents'],
      [{ model: 'rr', query: QUERY, documents: ['fine', 'word '.repeat(600)] }, 'documents'],
      [{ model: 'rr', query: 'word '.repeat(600), documents: ['fine'] }, 'query'],
      [{ model: 'rr', documents: ['fine'] }, 'query'],
      [{ model: 'rr', query: '', documents: ['fine'] }, 'query'],
      [{ model: 'rr', query: QUERY, documents: [3] }, 'documents[0]'],
      [{ model: 'rr', query: QUERY, documents: ['a'], top_n: 0 }, 'top_n'],
      [{ model: 'rr', query: QUERY, documents: ['a'], rank_fields: ['x'] }, 'rank_fields'],
      [{ model: 'minilm', query: QUERY, documents: ['a'] }, 'model'],
    ];
    for (const [body, param] of cases) {
      const r = await post('/v1/rerank', body);
      expect(r.status, JSON.stringify(r.body)).toBe(400);
      expect(r.body.error.param).toBe(param);
      expect(r.body.error.type).toBe('invalid_request_error');
    }
    expect((await post('/v1/rerank', { model: 'nope', query: QUERY, documents: ['a'] })).status).toBe(404);
  });

  it('a document too long for the model is refused by the worker when the gateway cannot tell (exact token count)', async () => {
    // 150 words of five word pieces each: 750 tokens, but few enough words to pass the
    // gateway's bound (one token per word at least), so the worker's count decides.
    const long = Array.from({ length: 150 }, () => 'xqzvbw').join(' ');
    const r = await post('/v1/rerank', { model: 'rr', query: QUERY, documents: ['fine', long] });
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ param: 'documents', code: 'context_length_exceeded' });
    expect(r.body.error.message).toContain('documents[1]');
    const failed = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where endpoint = 'rerank' and status = 'failed' and input->'documents'->>1 = $1`, [long]);
    expect(failed[0]!.n).toBe(1);
  });

  it('a model registered with --truncate cuts a long document to fit instead of refusing it', async () => {
    const long = Array.from({ length: 150 }, () => 'xqzvbw').join(' ');
    const r = await post('/v1/rerank', { model: 'rr-cut', query: QUERY, documents: ['fine', long] });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const tokenizer = await AutoTokenizer.from_pretrained('tiny-rerank');
    expect(r.body.usage.prompt_tokens).toBe(tokenizer.encode(QUERY, { text_pair: 'fine' }).length + 512);
  });

  it('a key scoped to other models gets the same error as for chat', async () => {
    const rerank = await post('/v1/rerank', { model: 'rr', query: QUERY, documents: ['a'] }, scopedKey);
    const chat = await post('/v1/chat/completions', { model: 'rr', messages: [{ role: 'user', content: 'hi' }] }, scopedKey);
    expect(rerank.status).toBe(403);
    expect(rerank.body).toEqual(chat.body);
    expect(rerank.body.error.code).toBe('model_not_allowed');
  });

  it('batches concurrent requests into shared model calls', async () => {
    const docs = Array.from({ length: 40 }, (_, i) => `document number ${i} about cats and dogs`);
    const rs = await Promise.all(Array.from({ length: 12 }, (_, i) => post('/v1/rerank', { model: 'rr', query: `query ${i}`, documents: docs })));
    expect(rs.every((r) => r.status === 200)).toBe(true);
    const rows = await query<{ n: number }>(db.url, `select (output->>'batch_requests')::int as n from ai.requests where id = any($1::uuid[])`, [
      rs.map((r) => r.body.id.replace(/^rerank-/, '')),
    ]);
    expect(Math.max(...rows.map((r) => r.n))).toBeGreaterThan(1);
    // Batched or not, each request's scores are its own.
    const expected = await reference('query 3', docs);
    for (const res of rs[3]!.body.results) expect(Math.abs(res.relevance_score - expected[res.index]!)).toBeLessThan(1e-4);
  });
});

describe('ai.rerank in SQL', () => {
  it('reranks the rows a pgvector KNN found, in one statement, with the HTTP API scores', async () => {
    await query(db.url, `create table docs (id int primary key, body text not null, embedding vector(32))`);
    await query(db.url, `insert into docs select i, b, ai.embed('minilm', b) from unnest($1::text[]) with ordinality u(b, i)`, [DOCS]);
    const rows = await query<{ id: number; body: string; score: number }>(
      db.url,
      `with knn as (select id, body, row_number() over () - 1 as pos
                      from (select id, body from docs order by embedding <=> (select ai.embed('minilm', $1)) limit 4) k)
       select knn.id, knn.body, r.score
         from ai.rerank('rr', $1, (select array_agg(body order by pos) from knn)) r
         join knn on knn.pos = r.index
        order by r.score desc`,
      [QUERY],
    );
    expect(rows).toHaveLength(4);
    const http = await post('/v1/rerank', { model: 'rr', query: QUERY, documents: rows.map((r) => r.body) });
    const byText = new Map(http.body.results.map((x: { index: number; relevance_score: number }) => [rows[x.index]!.body, x.relevance_score]));
    for (const r of rows) expect(Math.abs(r.score - (byText.get(r.body) as number))).toBeLessThan(1e-6);
    expect(rows.map((r) => r.score)).toEqual(rows.map((r) => r.score).sort((a, b) => b - a));
  });

  it('raises with the param for bad input, and for a model of another task', async () => {
    const long = Array.from({ length: 600 }, () => 'cats').join(' ');
    await expect(query(db.url, `select * from ai.rerank('rr', 'q', array['ok', $1])`, [long])).rejects.toThrow(/documents\[1\]/);
    await expect(query(db.url, `select * from ai.rerank('minilm', 'q', array['ok'])`)).rejects.toThrow(/not a rerank model/);
    expect(await query(db.url, `select * from ai.rerank('rr', 'q', array[]::text[])`)).toEqual([]);
  });

  it('is for roles given ai.grant_usage only; their requests are logged as theirs', async () => {
    for (const role of [APP, NOBODY]) await query(db.url, `create role ${role} login`);
    await query(db.url, `select ai.grant_usage('${APP}')`);
    const rows = await as(APP, (c) => c.query(`select index, score from ai.rerank('rr', 'cats', array['a cat', 'a dog'])`));
    expect(rows.rows).toHaveLength(2);
    const [mine] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where endpoint = 'rerank' and db_role = $1`, [APP]);
    expect(mine!.n).toBe(1);
    await expect(as(NOBODY, (c) => c.query(`select * from ai.rerank('rr', 'cats', array['a cat'])`))).rejects.toThrow(/permission denied/);
  });
});
