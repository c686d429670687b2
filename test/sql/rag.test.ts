import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, startWorker, type Proc } from '../helpers/stack.js';
import { splitRecursive, splitTokens } from '../../src/worker/vectorize/chunking.js';
import { loadEmbedModel, loadTokenizer } from '../../src/worker/loader.js';
import { embed } from '../../src/worker/embedding/embed.js';
import type { ModelSpec } from '../../src/worker/models-source.js';

/**
 * Chunking vectorizers end to end (issue 21): long documents split in a real worker process,
 * embedded by the fixture model (tiny-embed: 32 dimensions, MiniLM's tokenizer, 512 positions;
 * random weights, but identical texts give identical vectors), stored as chunks, searched with
 * ai.search. 2,000 documents of 2–20 KB, as the issue asks (about 45,000 chunks: 97 s of
 * backfill on 2 shared cores); SWITCHYARD_RAG_DOCS=N runs fewer.
 */
const DOCS = Number(process.env.SWITCHYARD_RAG_DOCS ?? 2000);
const SPEC: ModelSpec = {
  name: 'minilm', task: 'embedding', source: 'tiny-embed', revision: 'main', dtype: 'fp32', device: 'cpu',
  chatTemplate: null, contextLength: null, pooling: 'mean', normalize: true, truncate: false,
};
const SIZE = 800;
const OVERLAP = 100;

let db: TestDatabase;
const workers: Proc[] = [];
let sql: pg.Client;

const one = async <T = any>(text: string, values: unknown[] = []): Promise<T> => (await sql.query(text, values)).rows[0] as T;
const count = async (text: string, values: unknown[] = []): Promise<number> => Number((await sql.query(text, values)).rows[0].count);

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nworker output:\n${workers.map((w) => w.output().slice(-2000)).join('\n---\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const statusOf = (id: number) => one(`select * from ai.vectorizer_status where id = $1`, [id]);

/** A deterministic pseudo-random text: paragraphs of words, 2–20 KB. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}
const WORDS = 'alpha beta gamma delta river stone market garden window signal copper lantern harbor meadow engine silver thunder quiet orbit paper candle forest bridge winter summer mirror falcon velvet marble canyon planet rocket violet ember glacier cobalt amber prairie tunnel beacon'.split(' ');
function paragraph(r: () => number): string {
  const n = 30 + Math.floor(r() * 90);
  return Array.from({ length: n }, () => WORDS[Math.floor(r() * WORDS.length)]).join(' ') + '.';
}
function documentText(seed: number, minLen: number, maxLen: number): string {
  const r = rng(seed);
  const target = minLen + Math.floor(r() * (maxLen - minLen));
  const paras: string[] = [];
  let len = 0;
  while (len < target) {
    const p = paragraph(r);
    paras.push(p);
    len += p.length + 2;
  }
  return paras.join('\n\n');
}

/**
 * An independent check of the splitter's promises: every chunk non-empty and at most `size`
 * characters, the first at the start, each next one starting at most `overlap` characters
 * before the previous one's end, and together they spell the document.
 */
function expectCover(doc: string, chunks: string[], size: number, overlap: number): void {
  expect(chunks.length).toBeGreaterThan(0);
  for (const c of chunks) {
    expect(c.length).toBeGreaterThan(0);
    expect(c.length).toBeLessThanOrEqual(size);
  }
  // Where each chunk starts: some overlap o ≤ overlap before the previous one's end. A repetitive
  // text may fit more than one o, so every choice is tried.
  const fits = (i: number, end: number): boolean => {
    if (i === chunks.length) return end === doc.length;
    const c = chunks[i]!;
    for (let o = i === 0 ? 0 : Math.min(overlap, c.length, end); o >= 0; o--) if (doc.startsWith(c, end - o) && fits(i + 1, end - o + c.length)) return true;
    return false;
  };
  expect(fits(0, 0), 'the chunks, overlaps removed, do not spell the text').toBe(true);
}

async function chunksOf(table: string, id: number): Promise<string[]> {
  return (await sql.query(`select chunk from ${table} where id = $1 order by chunk_seq`, [id])).rows.map((r) => r.chunk as string);
}

beforeAll(async () => {
  // A worker killed with SIGKILL is declared dead after 2 s of silence (and its jobs released).
  process.env.SWITCHYARD_WORKER_TIMEOUT = '2';
  db = await createTestDatabase();
  const r = await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  workers.push(await startWorker(db.url, ['--models', 'minilm']));
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  await until('the worker to load minilm', async () => (await one(`select dimensions from ai.models where name = 'minilm'`)).dimensions === 32);
});

const tag = randomBytes(4).toString('hex');
const APP = `rag_app_${tag}`;
const ADMIN = `rag_admin_${tag}`;
const OTHER = `rag_other_${tag}`;
const NOBODY = `rag_nobody_${tag}`;

afterAll(async () => {
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
  await sql?.end();
  await Promise.all(workers.map((w) => w.stop()));
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  for (const role of [APP, ADMIN, OTHER, NOBODY]) await admin.query(`drop role if exists ${role}`);
  await admin.end();
});

describe('chunking vectorizers', () => {
  let docsId: number;
  const bodies = new Map<number, string>();

  it(`checks chunking and formatting arguments`, async () => {
    await sql.query(`create table docs (id bigint primary key, title text not null, body text)`);
    const fail = async (q: string) => (await sql.query(q).then(() => null, (e: Error) => e))?.message;
    expect(await fail(`select ai.chunking_recursive(100, 100)`)).toMatch(/chunk_overlap must be at least 0 and less than chunk_size/);
    expect(await fail(`select ai.create_vectorizer('docs', 'body', 'minilm', chunking => '{"implementation": "words"}')`)).toMatch(/implementation must be none, recursive or tokens/);
    expect(await fail(`select ai.create_vectorizer('docs', 'body', 'minilm', formatting => '$title: $chunk')`)).toMatch(/formatting needs chunking/);
    expect(await fail(`select ai.create_vectorizer('docs', 'body', 'minilm', chunking => ai.chunking_none(), formatting => '$nope $chunk')`)).toMatch(
      /formatting names nope, which is neither \$chunk nor a column of docs/,
    );
    expect(await count(`select count(*) from ai.vectorizers`)).toBe(0);
  });

  it(`embeds every chunk of ${DOCS} documents of 2–20 KB; chunks respect size and overlap; the view returns source columns`, { timeout: 900_000 }, async () => {
    for (let i = 1; i <= DOCS; i++) bodies.set(i, documentText(i, 2000, 20000));
    await sql.query(`insert into docs (id, title, body) select x.id, 'Title ' || x.id, x.body from jsonb_to_recordset($1) as x(id bigint, body text)`, [
      JSON.stringify([...bodies].map(([id, body]) => ({ id, body }))),
    ]);
    const t0 = performance.now();
    docsId = (
      await one(`select ai.create_vectorizer('docs', 'body', 'minilm', chunking => ai.chunking_recursive($1, $2), formatting => '$title: $chunk', batch_size => 8) as id`, [SIZE, OVERLAP])
    ).id;
    const expected = [...bodies.values()].reduce((n, b) => n + splitRecursive(b, SIZE, OVERLAP, ['\n\n', '\n', ' ', '']).length, 0);
    // Done: every item tried and the HNSW index built (deferred until then, migration 0080).
    await until('the backfill', async () => {
      const s = await statusOf(docsId);
      return s.pending === '0' && s.index_pending === false;
    }, 850_000);
    const ms = performance.now() - t0;
    const s = await statusOf(docsId);
    console.log(`chunked backfill: ${DOCS} documents, ${expected} chunks in ${(ms / 1000).toFixed(1)} s (${((expected / ms) * 1000).toFixed(1)} chunks/s), index built`);
    // The worker's account of its jobs: where the time went.
    for (const line of workers.flatMap((w) => w.output().split('\n')).filter((l) => l.includes(`vectorizer ${docsId}: `))) console.log(line.trim());
    expect(s).toMatchObject({ failed: '0', done: String(DOCS), chunks: String(expected), view: 'docs_embeddings_view' });
    expect(s.chunking).toEqual({ implementation: 'recursive', chunk_size: SIZE, chunk_overlap: OVERLAP, separators: ['\n\n', '\n', ' ', ''] });
    expect(await count(`select count(*) from docs_embeddings`)).toBe(expected);

    // Every document: its chunks are the splitter's (re-split here) and cover it within size and overlap.
    for (const [id, body] of bodies) {
      const stored = await chunksOf('docs_embeddings', id);
      expect(stored).toEqual(splitRecursive(body, SIZE, OVERLAP, ['\n\n', '\n', ' ', '']));
      expectCover(body, stored, SIZE, OVERLAP);
    }
    // What was embedded is the formatted chunk: the same vector as ai.embed gives for it.
    const d = await one(`select max(e.embedding <=> ai.embed('minilm', d.title || ': ' || e.chunk)) as d
                           from docs_embeddings e join docs d using (id) where d.id in (1, 2, 3)`);
    expect(d.d).toBeLessThan(1e-5);
    const columns = (await sql.query(`select column_name from information_schema.columns where table_name = 'docs_embeddings_view' order by ordinal_position`)).rows.map((r) => r.column_name);
    expect(columns).toEqual(['id', 'title', 'body', 'chunk_seq', 'chunk', 'embedding']);
    // The bench figure (issue 21 asks ≥ 0.7×): the same formatted chunks embedded in this process,
    // in calls of 256 (the worker's largest model call), against the vectorizer's rate above.
    // Printed, not asserted: on 2 shared cores either side varies by more than that margin.
    // A sample of up to 5,000 of them (rates are compared, chunks/s against chunks/s).
    const texts = (await sql.query(`select d.title || ': ' || e.chunk as t from docs_embeddings e join docs d using (id) limit 5000`)).rows.map((r) => r.t as string);
    const model = await loadEmbedModel(SPEC, modelsDir(), () => {});
    const t1 = performance.now();
    for (let i = 0; i < texts.length; i += 256) await embed(model, texts.slice(i, i + 256));
    const inproc = performance.now() - t1;
    await model.model.dispose();
    console.log(
      `in-process batched embedding of the same ${texts.length} chunks: ${(inproc / 1000).toFixed(1)} s (${((texts.length / inproc) * 1000).toFixed(1)} chunks/s); ` +
        `vectorizer / in-process = ${((expected / ms) / (texts.length / inproc)).toFixed(2)}×`,
    );
    const row = await one(`select id, title, body, chunk from docs_embeddings_view where id = 7 and chunk_seq = 0`);
    expect(row).toMatchObject({ id: '7', title: 'Title 7', body: bodies.get(7) });
    expect(bodies.get(7)!.startsWith(row.chunk)).toBe(true);
  });

  it('ai.search finds the document whose middle paragraph matches, which one vector per row misses', { timeout: 300_000 }, async () => {
    const target = Math.ceil(DOCS / 2);
    const chunks = await chunksOf('docs_embeddings', target);
    expect(chunks.length).toBeGreaterThan(2);
    const mid = Math.floor(chunks.length / 2);
    const query = `Title ${target}: ${chunks[mid]}`;
    const t0 = performance.now();
    const hits = (await sql.query(`select * from ai.search($1, $2, 5)`, [docsId, query])).rows;
    console.log(`ai.search over ${await count('select count(*) from docs_embeddings')} chunks: ${(performance.now() - t0).toFixed(0)} ms (query embedded through ai.embed)`);
    expect(hits).toHaveLength(5);
    expect(hits[0]).toMatchObject({ source_pk: { id: target }, chunk_seq: mid, chunk: chunks[mid] });
    expect(hits[0].distance).toBeLessThan(1e-5);
    // One row per document, nearest first.
    expect(new Set(hits.map((h) => h.source_pk.id)).size).toBe(5);
    for (let i = 1; i < hits.length; i++) expect(hits[i].distance).toBeGreaterThanOrEqual(hits[i - 1].distance);

    // One vector per row: documents past the model's 512 tokens are rejected, so none is found.
    const whole = (await one(`select ai.create_vectorizer('docs', 'body', 'minilm', destination => 'docs_whole', max_attempts => 1) as id`)).id;
    await until('the whole-document vectorizer', async () => (await statusOf(whole)).pending === '0', 240_000);
    const w = await statusOf(whole);
    console.log(`one vector per row: ${w.done} of ${DOCS} documents embedded, ${w.failed} failed (${w.last_error})`);
    const wholeHits = (await sql.query(`select * from ai.search($1, $2, 5)`, [whole, query])).rows;
    expect(wholeHits.filter((h) => h.source_pk.id === target && h.distance < 1e-3)).toEqual([]);
    await sql.query(`select ai.drop_vectorizer($1)`, [whole]);
  });

  it('replaces chunks on update, removes them on delete, and re-embeds on a change of a formatted column', async () => {
    const latest = (await one(`select max(updated_at)::text as t from docs_embeddings`)).t;
    await sql.query(`update docs set body = 'short now' where id = 1`);
    await sql.query(`update docs set title = 'Renamed' where id = 2`);
    await sql.query(`delete from docs where id = 3`);
    expect(await count(`select count(*) from docs_embeddings where id = 3`)).toBe(0);
    await until('the updates', async () => (await count(`select count(*) from docs_embeddings where id in (1, 2) and updated_at > $1 and chunk_seq = 0`, [latest])) === 2);
    expect(await chunksOf('docs_embeddings', 1)).toEqual(['short now']);
    const d = await one(`select max(e.embedding <=> ai.embed('minilm', 'Renamed: ' || e.chunk)) as d from docs_embeddings e where id = 2`);
    expect(d.d).toBeLessThan(1e-5);
  });

  it('splits by the model tokenizer with ai.chunking_tokens', { timeout: 120_000 }, async () => {
    await sql.query(`create table memos (id int primary key, body text)`);
    const memo = new Map<number, string>();
    for (let i = 1; i <= 10; i++) memo.set(i, documentText(1000 + i, 1000, 4000));
    for (const [id, body] of memo) await sql.query(`insert into memos values ($1, $2)`, [id, body]);
    const id = (await one(`select ai.create_vectorizer('memos', 'body', 'minilm', chunking => ai.chunking_tokens(64, 16)) as id`)).id;
    await until('the memos', async () => (await statusOf(id)).pending === '0');
    const tokenizer = await loadTokenizer(
      SPEC,
      modelsDir(),
    );
    for (const [key, body] of memo) {
      const stored = await chunksOf('memos_embeddings', key);
      const ids = tokenizer.encode(body, { add_special_tokens: false });
      expect(stored).toEqual(splitTokens(body, 64, 16, tokenizer));
      // Windows of 64 tokens, 48 apart, covering every token.
      expect(stored.length).toBe(Math.max(1, Math.ceil((ids.length - 16) / 48)));
      // Decoded windows re-encode to about 64 tokens: a window cut inside a word decodes its
      // first piece as a word of its own, which may take a token or two more.
      for (const c of stored) expect(tokenizer.encode(c, { add_special_tokens: false }).length).toBeLessThanOrEqual(64 + 4);
    }
    await sql.query(`select ai.drop_vectorizer($1)`, [id]);
  });

  it('retries a failing chunk, then parks its row in the failed table with the reason', { timeout: 60_000 }, async () => {
    await sql.query(`create table bad (id int primary key, body text)`);
    await sql.query(`insert into bad values (1, repeat('word ', 2000)), (2, 'fine')`);
    const id = (await one(`select ai.create_vectorizer('bad', 'body', 'minilm', chunking => ai.chunking_recursive(4000), max_attempts => 2, retry_delay => '100 milliseconds') as id`)).id;
    await until('the failure', async () => (await statusOf(id)).failed === '1');
    const f = await one(`select pk, attempts, error from ai.vectorizer_failed where vectorizer_id = $1`, [id]);
    expect(f).toMatchObject({ pk: { id: 1 }, attempts: 2, error: { code: 'context_length_exceeded' } });
    expect(f.error.message).toMatch(/^chunk 0 of 3: .*512/);
    expect(await statusOf(id)).toMatchObject({ pending: '0', failed: '1', done: '1', chunks: '1' });
    expect(await count(`select count(*) from bad_embeddings where id = 1`)).toBe(0);
    await sql.query(`select ai.drop_vectorizer($1)`, [id]);
  });

  it('keeps chunks exactly in sync under concurrent writers, across a worker killed with SIGKILL', { timeout: 300_000 }, async () => {
    await sql.query(`create table notes (id int primary key, body text)`);
    const initial = Array.from({ length: 100 }, (_, i) => ({ id: i + 1, body: documentText(5000 + i, 500, 3000) }));
    await sql.query(`insert into notes select x.id, x.body from jsonb_to_recordset($1) as x(id int, body text)`, [JSON.stringify(initial)]);
    const id = (await one(`select ai.create_vectorizer('notes', 'body', 'minilm', chunking => ai.chunking_recursive(300, 50), batch_size => 4) as id`)).id;
    const writers = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const c = new pg.Client({ connectionString: db.url });
        await c.connect();
        return c;
      }),
    );
    let ops = 0;
    try {
      const stopAt = Date.now() + 8000;
      const writing = writers.map(async (c, w) => {
        const r = rng(77 + w);
        while (Date.now() < stopAt) {
          const x = r();
          const key = 1 + Math.floor(r() * 100);
          if (x < 0.5) await c.query(`update notes set body = $2 where id = $1`, [key, documentText(Math.floor(r() * 1e9), 200, 3000)]);
          else if (x < 0.7) await c.query(`delete from notes where id = $1`, [key]);
          else await c.query(`insert into notes values ($1, $2) on conflict (id) do update set body = excluded.body`, [key, documentText(Math.floor(r() * 1e9), 200, 3000)]);
          ops++;
          await new Promise((res) => setTimeout(res, 5));
        }
      });
      // A second worker, then the first one killed mid-batch.
      await new Promise((res) => setTimeout(res, 1500));
      workers.push(await startWorker(db.url, ['--models', 'minilm']));
      workers[0]!.child.kill('SIGKILL');
      await Promise.all(writing);
    } finally {
      await Promise.all(writers.map((c) => c.end()));
    }
    expect(workers[0]!.exited()).toBe(true);
    await until('the notes to settle', async () => (await statusOf(id)).pending === '0', 200_000);
    // The deferred HNSW index is built, whichever worker ran the job that ended the backfill.
    await until('the notes index', async () => (await statusOf(id)).index_pending === false);
    expect((await one(`select ai._vectorizer_has_index('notes_embeddings'::regclass) as x`)).x).toBe(true);
    const rows = (await sql.query(`select id, body from notes order by id`)).rows as { id: number; body: string }[];
    const expected = rows.reduce((n, r) => n + splitRecursive(r.body, 300, 50, ['\n\n', '\n', ' ', '']).length, 0);
    console.log(`${ops} concurrent writes across a SIGKILL: ${rows.length} rows, ${expected} chunks`);
    expect(await count(`select count(*) from notes_embeddings e where not exists (select from notes n where n.id = e.id)`)).toBe(0);
    expect(await count(`select count(*) from notes_embeddings`)).toBe(expected);
    for (const r of rows) expect(await chunksOf('notes_embeddings', r.id)).toEqual(splitRecursive(r.body, 300, 50, ['\n\n', '\n', ' ', '']));
    const dist = await one(`select max(e.embedding <=> ai.embed('minilm', e.chunk)) as d from notes_embeddings e where e.id <= 10`);
    expect(dist.d).toBeLessThan(1e-5);
    expect(await statusOf(id)).toMatchObject({ failed: '0', done: String(rows.length), chunks: String(expected) });
  });

  it('ai.search is for usage roles, over vectorizers they may see, returning only rows they may read', { timeout: 120_000 }, async () => {
    for (const role of [APP, ADMIN, OTHER, NOBODY]) await sql.query(`create role ${role}`);
    await sql.query(`create schema ${APP} authorization ${APP}`);
    await sql.query(`select ai.grant_usage($1)`, [APP]);
    await sql.query(`select ai.grant_usage($1)`, [OTHER]);
    await sql.query(`select ai.grant_usage($1, admin => true)`, [ADMIN]);
    const as = async <T = any>(role: string, q: string, values: unknown[] = []): Promise<T[]> => {
      await sql.query(`set role ${role}`);
      try {
        return (await sql.query(q, values)).rows as T[];
      } finally {
        await sql.query(`reset role`);
      }
    };
    const failAs = async (role: string, q: string, values: unknown[] = []) => (await as(role, q, values).then(() => null, (e: Error) => e))?.message;
    await as(APP, `create table ${APP}.kb (id int primary key, secret boolean not null, body text)`);
    await as(APP, `insert into ${APP}.kb select g, g = 3, 'entry ' || g || ' ' || repeat(md5(g::text) || ' ', 20) from generate_series(1, 6) g`);
    const [{ id }] = await as(APP, `select ai.create_vectorizer('${APP}.kb', 'body', 'minilm', chunking => ai.chunking_recursive(200, 20)) as id`);
    await until('the kb', async () => (await statusOf(id)).pending === '0' && (await statusOf(id)).done === '6');
    // Its HNSW index, deferred while the backfill ran, built by the worker as the owner.
    await until('the kb index', async () => (await statusOf(id)).index_pending === false);
    expect((await as(APP, `select ai._vectorizer_has_index('${APP}.kb_embeddings') as x`))[0].x).toBe(true);
    // Readers other than the owner see only rows that are not secret.
    await as(APP, `alter table ${APP}.kb enable row level security`);
    await as(APP, `create policy open on ${APP}.kb for select using (not secret)`);
    await as(APP, `grant usage on schema ${APP} to ${ADMIN}`);
    await as(APP, `grant select on ${APP}.kb, ${APP}.kb_embeddings to ${ADMIN}`);
    const secretChunk = (await as(APP, `select chunk from ${APP}.kb_embeddings where id = 3 and chunk_seq = 1`))[0].chunk;
    const openChunk = (await as(APP, `select chunk from ${APP}.kb_embeddings where id = 4 and chunk_seq = 1`))[0].chunk;

    const own = await as(APP, `select * from ai.search($1, $2, 3)`, [id, secretChunk]);
    expect(own[0]).toMatchObject({ source_pk: { id: 3 }, chunk_seq: 1 });
    // A filter on source columns: the nearest row is left out, and k rows still come back when k pass it.
    const open = await as(APP, `select * from ai.search($1, $2, 10, filter => '{"secret": false}')`, [id, secretChunk]);
    expect(open.map((h) => h.source_pk.id).sort()).toEqual([1, 2, 4, 5, 6]);
    const onlySecret = await as(APP, `select * from ai.search($1, $2, 3, filter => $3)`, [id, openChunk, { secret: true }]);
    expect(onlySecret.map((h) => h.source_pk.id)).toEqual([3]);
    expect(await failAs(APP, `select * from ai.search($1, 'x', 3, '[1]')`, [id])).toMatch(/filter must be a jsonb object/);
    const admin = await as(ADMIN, `select * from ai.search($1, $2, 10)`, [id, secretChunk]);
    expect(admin.map((h) => h.source_pk.id).sort()).toEqual([1, 2, 4, 5, 6]);
    expect((await as(ADMIN, `select * from ai.search($1, $2, 1)`, [id, openChunk]))[0]).toMatchObject({ source_pk: { id: 4 }, chunk_seq: 1 });
    expect(await failAs(OTHER, `select * from ai.search($1, 'x')`, [id])).toBe(`ai.search: no vectorizer ${id}`);
    expect(await failAs(NOBODY, `select * from ai.search($1, 'x')`, [id])).toMatch(/permission denied/);
    await as(APP, `select ai.drop_vectorizer($1)`, [id]);
    await sql.query(`drop schema ${APP} cascade`);
    await sql.query(`drop owned by ${APP}, ${ADMIN}, ${OTHER}, ${NOBODY}`);
  });
});
