import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startWorker, type Proc } from '../helpers/stack.js';

/**
 * Vectorizers end to end: triggers and queue in Postgres, a real worker process embedding with
 * the fixture model (tiny-embed: 32 dimensions, MiniLM's tokenizer, 512 positions).
 */
let db: TestDatabase;
let worker: Proc;
let sql: pg.Client;
let vectorizer: number;

const one = async <T = any>(text: string, values: unknown[] = []): Promise<T> => (await sql.query(text, values)).rows[0] as T;
const count = async (text: string, values: unknown[] = []): Promise<number> => Number((await sql.query(text, values)).rows[0].count);

/** Polls `check` until it returns true. */
async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nworker output:\n${worker.output().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function failure(text: string): Promise<pg.DatabaseError> {
  const err = await sql.query(text).then(
    () => null,
    (e: pg.DatabaseError) => e,
  );
  expect(err, `expected "${text}" to fail`).not.toBeNull();
  return err!;
}

const status = () => one(`select * from ai.vectorizer_status where id = $1`, [vectorizer]);
const idle = async () => (await status()).pending === '0';

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  for (const args of [
    ['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'],
    ['models', 'add', 'unloaded', '--task', 'embedding', '--source', 'tiny-embed'],
  ]) {
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(0);
  }
  worker = await startWorker(db.url, ['--models', 'minilm']);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  // The worker records the model's dimension when it has loaded it; create_vectorizer needs it.
  await until('the worker to load minilm', async () => (await one(`select dimensions from ai.models where name = 'minilm'`)).dimensions === 32);
  await sql.query(`create table docs (id bigint primary key, title text, body text)`);
});

afterAll(async () => {
  await sql?.end();
  await worker?.stop();
  await db?.drop();
});

describe('ai.create_vectorizer', () => {
  it('checks its arguments', async () => {
    await sql.query(`create table nokey (body text)`);
    expect((await failure(`select ai.create_vectorizer('nokey', 'body', 'minilm')`)).message).toBe('ai.create_vectorizer: table nokey has no primary key');
    expect((await failure(`select ai.create_vectorizer('docs', 'nope', 'minilm')`)).message).toBe('ai.create_vectorizer: table docs has no column "nope"');
    expect((await failure(`select ai.create_vectorizer('docs', 'body', 'nope')`)).message).toBe('ai.create_vectorizer: unknown model "nope"');
    const dims = await failure(`select ai.create_vectorizer('docs', 'body', 'unloaded')`);
    expect(dims.message).toBe('ai.create_vectorizer: the dimension of model "unloaded" is not known yet');
    expect(dims.hint).toMatch(/switchyard worker --models unloaded\), or pass dimensions => N/);
    expect((await failure(`select ai.create_vectorizer('docs', 'body', 'minilm', dimensions => 16)`)).message).toBe(
      'ai.create_vectorizer: model "minilm" has 32 dimensions, not 16',
    );
    expect((await failure(`select ai.create_vectorizer('docs', 'body', 'minilm', batch_size => 0)`)).message).toMatch(/batch_size/);
    // Nothing was left behind by the failed calls.
    expect(await count(`select count(*) from ai.vectorizers`)).toBe(0);
    expect(await one(`select to_regclass('docs_embeddings') as t`)).toEqual({ t: null });
  });

  it('embeds a 10,000-row table in batches; a row the model rejects ends in the failed table while the rest complete', { timeout: 240_000 }, async () => {
    await sql.query(`insert into docs (id, title, body)
                     select g, 'title ' || g, 'document ' || g || ' about ' || md5(g::text) from generate_series(1, 10000) g`);
    await sql.query(`insert into docs (id, body) values (10001, ''), (10002, repeat('word ', 600)), (10003, null)`);
    const t0 = performance.now();
    vectorizer = (await one(`select ai.create_vectorizer('docs', 'body', 'minilm', retry_delay => '100 milliseconds') as id`)).id;
    const created = performance.now() - t0;
    expect(await count(`select count(*) from ai.vectorizer_queue`)).toBe(10003);

    // The HNSW index is built when the backfill is done (migration 0080), not before.
    expect(await one(`select index_pending, ai._vectorizer_has_index(destination) as indexed from ai.vectorizers where id = $1`, [vectorizer])).toEqual({ index_pending: true, indexed: false });
    await until('the backfill', async () => {
      const s = await status();
      return s.pending === '0' && s.failed === '2' && s.index_pending === false;
    }, 200_000);
    const ms = performance.now() - t0;
    console.log(`vectorizer backfill: 10,003 rows queued in ${created.toFixed(0)} ms; 10,000 embedded + 2 failed after ${(ms / 1000).toFixed(1)} s (${((10_000 / ms) * 1000).toFixed(0)} rows/s)`);

    expect(await count(`select count(*) from docs_embeddings`)).toBe(10_000);
    expect(await count(`select count(*) from docs_embeddings where id > 10000`)).toBe(0);
    // One batch is one transaction: its rows share updated_at.
    const batches = await one(`select count(*)::int as batches, max(n)::int as largest
                                 from (select count(*) as n from docs_embeddings group by updated_at) b`);
    expect(batches.largest).toBeLessThanOrEqual(64);
    expect(batches.batches).toBeGreaterThanOrEqual(Math.ceil(10_000 / 64));
    console.log(`vectorizer backfill: ${batches.batches} batches of at most ${batches.largest} rows`);

    const columns = (await sql.query(`select column_name, format_type(atttypid, atttypmod) as type
                                        from information_schema.columns c join pg_attribute a
                                          on a.attrelid = 'docs_embeddings'::regclass and a.attname = c.column_name
                                       where c.table_name = 'docs_embeddings' order by c.ordinal_position`)).rows;
    expect(columns).toEqual([
      { column_name: 'id', type: 'bigint' },
      { column_name: 'embedding', type: 'vector(32)' },
      { column_name: 'model', type: 'text' },
      { column_name: 'updated_at', type: 'timestamp with time zone' },
    ]);
    expect((await one(`select indexdef from pg_indexes where tablename = 'docs_embeddings' and indexdef like '%hnsw%'`)).indexdef).toMatch(
      /USING hnsw \(embedding vector_cosine_ops\)/,
    );

    const failed = (await sql.query(`select pk, attempts, error from ai.vectorizer_failed order by pk`)).rows;
    expect(failed).toEqual([
      { pk: { id: 10001 }, attempts: 3, error: expect.objectContaining({ code: 'empty_input', message: 'Invalid text: it is an empty string.' }) },
      { pk: { id: 10002 }, attempts: 3, error: expect.objectContaining({ code: 'context_length_exceeded', message: expect.stringMatching(/(602|more than 512) tokens long; this model takes at most 512/) }) },
    ]);
    const s = await status();
    expect(s).toMatchObject({ source: 'docs', source_column: 'body', destination: 'docs_embeddings', model: 'minilm', dimensions: 32, pending: '0', retrying: '0', failed: '2' });
    expect(s.last_error).toMatch(/^Invalid text: /);

    // The vectors are the model's: the same as ai.embed gives, and a KNN query finds the row.
    await sql.query(`set hnsw.ef_search = 200`);
    const knn = await one(`select e.id, e.embedding <=> ai.embed('minilm', d.body) as distance
                             from docs_embeddings e join docs d using (id) where d.id = 1234`);
    expect(knn.distance).toBeLessThan(1e-5);
    const text = (await one(`select body from docs where id = 1234`)).body;
    const nearest = await one(`select id from docs_embeddings order by embedding <=> ai.embed('minilm', $1) limit 1`, [text]);
    expect(nearest.id).toBe('1234');
  });

  it('re-embeds updated text, and ignores updates of other columns', async () => {
    // Timestamps as text: a JS Date would drop the microseconds.
    const before = (await sql.query(`select id, embedding::text as v, updated_at::text from docs_embeddings where id <= 4 order by id`)).rows;
    const latest = (await one(`select max(updated_at)::text as t from docs_embeddings`)).t;
    await sql.query(`update docs set body = 'rewritten text of ' || id where id <= 3`);
    await sql.query(`update docs set title = 'a new title' where id = 4`);
    await sql.query(`update docs set body = body where id = 7`);
    expect(await count(`select count(*) from ai.vectorizer_queue where pk in ('{"id": 4}', '{"id": 7}')`)).toBe(0);
    await until('the updates to be embedded', async () =>
      (await count(`select count(*) from docs_embeddings where id <= 3 and updated_at > $1`, [latest])) === 3,
    );
    const after = (await sql.query(`select id, embedding::text as v, updated_at::text from docs_embeddings where id <= 4 order by id`)).rows;
    for (let i = 0; i < 3; i++) expect(after[i].v).not.toBe(before[i].v);
    expect(after[3]).toEqual(before[3]);
    const d = await one(`select max(e.embedding <=> ai.embed('minilm', d.body)) as d from docs_embeddings e join docs d using (id) where id <= 3`);
    expect(d.d).toBeLessThan(1e-5);
  });

  it('propagates deletes at once, and a key update', async () => {
    await sql.query(`delete from docs where id between 100 and 199`);
    expect(await count(`select count(*) from docs_embeddings where id between 100 and 199`)).toBe(0);
    await sql.query(`update docs set id = 20000 where id = 5`);
    expect(await count(`select count(*) from docs_embeddings where id = 5`)).toBe(0);
    await until('the moved row', async () => (await count(`select count(*) from docs_embeddings where id = 20000`)) === 1);
    expect(await count(`select count(*) from docs_embeddings`)).toBe(10_000 - 100);
  });

  it('removes the destination row of a row whose text becomes null', async () => {
    await sql.query(`update docs set body = null where id = 6`);
    await until('the null row to be removed', async () => (await count(`select count(*) from docs_embeddings where id = 6`)) === 0);
    await until('the queue to drain', idle);
  });

  it('embeds a failed row once its text is fixed, and clears its failure', async () => {
    await sql.query(`update docs set body = 'now a fine text' where id = 10001`);
    await until('the fixed row', async () => (await count(`select count(*) from docs_embeddings where id = 10001`)) === 1);
    expect((await sql.query(`select pk from ai.vectorizer_failed`)).rows).toEqual([{ pk: { id: 10002 } }]);
    expect((await status()).failed).toBe('1');
  });

  it('keeps up with concurrent writers without a job per statement, and with REPEATABLE READ writers', async () => {
    const seq = (await one(`select pg_get_serial_sequence('graphile_worker._private_jobs', 'id') as s`)).s;
    const jobsBefore = Number((await one(`select last_value from ${seq}`)).last_value);
    const writers = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const c = new pg.Client({ connectionString: db.url });
        await c.connect();
        return c;
      }),
    );
    try {
      const t0 = performance.now();
      await Promise.all(
        writers.map(async (c, w) => {
          for (let i = 0; i < 100; i++) await c.query(`insert into docs (id, body) values ($1, $2)`, [30_000 + w * 1000 + i, `written by ${w}, row ${i}`]);
        }),
      );
      await writers[0]!.query('begin isolation level repeatable read');
      await writers[0]!.query(`insert into docs (id, body) values (40000, 'repeatable read writer')`);
      await writers[0]!.query('commit');
      await until('the concurrent rows', async () => (await count(`select count(*) from docs_embeddings where id >= 30000`)) === 401);
      const jobs = Number((await one(`select last_value from ${seq}`)).last_value) - jobsBefore;
      console.log(`401 single-row inserts from 4 connections: embedded within ${(performance.now() - t0).toFixed(0)} ms, ${jobs} vectorize jobs`);
      expect(jobs).toBeLessThan(50);
    } finally {
      await Promise.all(writers.map((c) => c.end()));
    }
  });

  it('empties the destination and the queue on truncate', async () => {
    await sql.query(`truncate docs`);
    expect(await count(`select count(*) from docs_embeddings`)).toBe(0);
    expect(await count(`select count(*) from ai.vectorizer_queue`)).toBe(0);
    expect(await status()).toMatchObject({ pending: '0', failed: '0', last_error: null });
    await sql.query(`insert into docs (id, body) values (1, 'after truncate')`);
    await until('the row after truncate', async () => (await count(`select count(*) from docs_embeddings`)) === 1);
  });

  it('handles a composite text key and a named destination', async () => {
    await sql.query(`create table notes (tenant int, slug text, note varchar(200), primary key (tenant, slug))`);
    await sql.query(`insert into notes select t, 'note-' || g, 'note ' || g || ' of tenant ' || t from generate_series(1, 3) t, generate_series(1, 40) g`);
    const id = (await one(`select ai.create_vectorizer('notes', 'note', 'minilm', destination => 'note_vectors', batch_size => 16) as id`)).id;
    await until('the notes', async () => (await count(`select count(*) from note_vectors`)) === 120);
    await sql.query(`delete from notes where tenant = 2 and slug = 'note-7'`);
    expect(await count(`select count(*) from note_vectors where tenant = 2 and slug = 'note-7'`)).toBe(0);
    expect(await count(`select count(*) from note_vectors where slug = 'note-7'`)).toBe(2);
    const largest = await one(`select max(n)::int as n from (select count(*) as n from note_vectors group by updated_at) b`);
    expect(largest.n).toBeLessThanOrEqual(16);
    await sql.query(`select ai.drop_vectorizer($1)`, [id]);
  });

  it('drops a vectorizer: triggers, destination, queue and jobs', async () => {
    await sql.query(`select ai.drop_vectorizer($1)`, [vectorizer]);
    expect(await one(`select to_regclass('docs_embeddings') as t, to_regclass('note_vectors') as n`)).toEqual({ t: null, n: null });
    expect(await count(`select count(*) from pg_trigger where tgname like 'ai_vectorizer_%'`)).toBe(0);
    expect(await count(`select count(*) from ai.vectorizers`)).toBe(0);
    await sql.query(`insert into docs (id, body) values (2, 'no vectorizer any more')`);
    expect(await count(`select count(*) from ai.vectorizer_queue`)).toBe(0);
    await until('its jobs to end', async () => (await count(`select count(*) from graphile_worker.jobs where task_identifier like 'vectorize:%'`)) === 0);
    expect((await failure(`select ai.drop_vectorizer(${vectorizer})`)).message).toBe(`ai.drop_vectorizer: no vectorizer ${vectorizer}`);
  });
});
