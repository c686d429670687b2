import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startWorker, type Proc } from '../helpers/stack.js';

/**
 * A vectorizer's deferred HNSW index (migration 0080, issue 21): created over a table with rows,
 * the destination gets its index once the backfill is done, built by the worker; ai.search is
 * exact meanwhile and uses the index after. Over an empty table the index is there at once.
 * A real worker process with the fixture model (tiny-embed, 32 dimensions).
 */
let db: TestDatabase;
let worker: Proc;
let sql: pg.Client;

const one = async <T = any>(text: string, values: unknown[] = []): Promise<T> => (await sql.query(text, values)).rows[0] as T;

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nworker output:\n${worker.output().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Paragraphs of words particular to each document, 2–20 KB. */
function documentText(id: number): string {
  let s = id * 2654435761;
  const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const target = 2000 + Math.floor(r() * 18000);
  const paras: string[] = [];
  for (let len = 0; len < target; ) {
    const p = Array.from({ length: 30 + Math.floor(r() * 60) }, () => `w${Math.floor(r() * 5000)}`).join(' ') + '.';
    paras.push(p);
    len += p.length + 2;
  }
  return paras.join('\n\n');
}

const DOCS = 300;

beforeAll(async () => {
  db = await createTestDatabase();
  const r = await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  worker = await startWorker(db.url, ['--models', 'minilm']);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  await until('the worker to load minilm', async () => (await one(`select dimensions from ai.models where name = 'minilm'`)).dimensions === 32);
});

afterAll(async () => {
  await sql?.end();
  await worker?.stop();
  await db?.drop();
});

const indexState = (id: number) =>
  one<{ index_pending: boolean; indexed: boolean; pending: string; done: string }>(
    `select s.index_pending, ai._vectorizer_has_index(s.destination) as indexed, s.pending, s.done from ai.vectorizer_status s where s.id = $1`, [id]);

describe('the HNSW index of a vectorizer', () => {
  it('is made at once over an empty table, and kept as rows come', async () => {
    await sql.query(`create table empty_docs (id int primary key, body text)`);
    const id = (await one(`select ai.create_vectorizer('empty_docs', 'body', 'minilm', chunking => ai.chunking_recursive(200, 20)) as id`)).id;
    expect(await indexState(id)).toMatchObject({ index_pending: false, indexed: true });
    await sql.query(`insert into empty_docs values (1, $1)`, [documentText(1)]);
    await until('the row', async () => (await indexState(id)).done === '1');
    expect(await indexState(id)).toMatchObject({ index_pending: false, indexed: true, pending: '0' });
    await sql.query(`select ai.drop_vectorizer($1)`, [id]);
  });

  it(`over a table with rows, is built once the backfill is done; ai.search is exact before and finds the same after`, { timeout: 300_000 }, async () => {
    await sql.query(`create table docs (id int primary key, title text not null, body text)`);
    await sql.query(`insert into docs select i, 'Title ' || i, b from unnest($1::text[]) with ordinality as x(b, i)`, [
      Array.from({ length: DOCS }, (_, i) => documentText(i + 1)),
    ]);
    const id = (await one(`select ai.create_vectorizer('docs', 'body', 'minilm', chunking => ai.chunking_recursive(400, 50), formatting => '$title: $chunk', batch_size => 4) as id`)).id;
    expect(await indexState(id)).toMatchObject({ index_pending: true, indexed: false });

    // Part way: some documents done, others still queued; no index yet.
    await until('a part of the backfill', async () => Number((await indexState(id)).done) >= 8);
    const during = await indexState(id);
    expect(Number(during.pending)).toBeGreaterThan(0);
    expect(during).toMatchObject({ index_pending: true, indexed: false });
    // A document that is done: its middle chunk is found, by the exact pass.
    const target = (await one(`select min(id) as id from docs_embeddings`)).id as number;
    const chunks = (await sql.query(`select chunk from docs_embeddings where id = $1 order by chunk_seq`, [target])).rows.map((r) => r.chunk as string);
    const mid = Math.floor(chunks.length / 2);
    const query = `Title ${target}: ${chunks[mid]}`;
    const before = (await sql.query(`select * from ai.search($1, $2, 3)`, [id, query])).rows;
    expect(before[0]).toMatchObject({ source_pk: { id: target }, chunk_seq: mid, chunk: chunks[mid] });
    expect(before[0].distance).toBeLessThan(1e-5);
    expect(new Set(before.map((h) => h.source_pk.id)).size).toBe(before.length);

    await until('the backfill and the index', async () => {
      const s = await indexState(id);
      return s.pending === '0' && !s.index_pending;
    }, 280_000);
    expect(await indexState(id)).toMatchObject({ index_pending: false, indexed: true, done: String(DOCS) });
    expect(worker.output()).toMatch(new RegExp(`vectorizer ${id}: built the HNSW index of its destination in \\d+ ms`));
    // After: the same best hit; the k rows are the exact k nearest documents.
    const after = (await sql.query(`select * from ai.search($1, $2, 3)`, [id, query])).rows;
    expect(after[0]).toMatchObject({ source_pk: { id: target }, chunk_seq: mid, chunk: chunks[mid] });
    const exact = (await sql.query(
      `select e.id from docs_embeddings e, (select ai.embed('minilm', $1) as q) q group by e.id order by min(e.embedding <=> q.q) limit 3`, [query])).rows.map((r) => r.id);
    expect(after.map((h) => h.source_pk.id)).toEqual(exact);
  });
});
