import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startWorker, type Proc, until } from '../helpers/stack.js';

/**
 * ai.submit_embed: an embedding request queued in the caller's transaction, its vector written
 * into the caller's row by a real worker in the statement that finishes the batch
 * (ai.finish_embeddings). Workers take one silent for 2 s as dead (SWITCHYARD_WORKER_TIMEOUT),
 * for the kill -9 case. tiny-embed has 32 dimensions.
 */
let db: TestDatabase;
const procs: Proc[] = [];
let sql: pg.Client;
const N = 500;

/** As `until`, with these tests' longer deadline. */
const waitFor = <T>(what: string, probe: () => Promise<T | null | undefined | false>) => until(what, probe, 90_000, 100);

const count = async (text: string): Promise<number> => (await sql.query(text)).rows[0].n;

beforeAll(async () => {
  process.env.SWITCHYARD_WORKER_TIMEOUT = '2';
  db = await createTestDatabase();
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], { DATABASE_URL: db.url })).code).toBe(0);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  await sql.query(`
    create role embed_app; create role embed_nobody;
    select ai.grant_usage('embed_app');
    create table secret (id integer primary key, v vector(32));
    create table docs (id integer primary key, body text not null, embedding vector(32), other vector(32));
    -- Every write of a vector, as the trigger sees it (it runs as the writing role).
    create table embed_log (doc integer, by_role name default current_user);
    create function log_embedding() returns trigger language plpgsql as $$
    begin
      if new.embedding is distinct from old.embedding then
        insert into embed_log (doc) values (new.id);
      end if;
      return new;
    end $$;
    create trigger docs_log after update on docs for each row execute function log_embedding();
    grant select, insert, delete on docs, embed_log to embed_app;
    grant update (embedding) on docs to embed_app;
    insert into docs (id, body) select i, 'document number ' || i || ' about ' || md5(i::text) from generate_series(1, ${N}) i;
  `);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await sql?.query('drop owned by embed_app; drop role if exists embed_app; drop owned by embed_nobody; drop role if exists embed_nobody').catch(() => {});
  await sql?.end();
  await db?.drop();
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
});

const submitAll = `select count(ai.submit_embed('minilm', body, 'docs', 'embedding', 'id', id::text))::int as n from docs`;

describe('ai.submit_embed', () => {
  it('rolled back: no request exists and nothing is written, even with a worker running', async () => {
    const w = await startWorker(db.url, ['--models', 'minilm']);
    procs.push(w);
    await sql.query('begin');
    await sql.query('set local role embed_app');
    expect((await sql.query(submitAll)).rows[0].n).toBe(N);
    expect((await query<{ n: string }>(db.url, `select count(*) as n from ai.requests`))[0]!.n).toBe('0');
    await sql.query('rollback');
    await new Promise((r) => setTimeout(r, 1500));
    expect(await count(`select count(*)::int as n from ai.requests`)).toBe(0);
    expect(await count(`select count(*)::int as n from docs where embedding is not null`)).toBe(0);
    await w.stop();
  });

  it('committed: every row gets its vector exactly once, across a worker killed with kill -9 midway', async () => {
    // The server notices a dead client within 100 ms even while its statement waits for a lock
    // (otherwise the killed worker's last statement would still commit once the lock is free).
    await sql.query(`alter database ${db.name} set client_connection_check_interval = '100ms'`);
    await sql.query('begin');
    await sql.query('set local role embed_app');
    await sql.query(submitAll);
    await sql.query('commit');
    // Midway, deterministically: one target row is locked, so the batch holding it cannot finish.
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    try {
      await locker.query('begin');
      await locker.query('select 1 from docs where id = 250 for update');
      const a = await startWorker(db.url, ['--models', 'minilm']);
      procs.push(a);
      await waitFor('one batch written and the other waiting on the locked row', async () => {
        const written = await count(`select count(*)::int as n from docs where embedding is not null`);
        const waiting = await count(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`);
        return written > 0 && waiting > 0;
      });
      a.child.kill('SIGKILL');
      // The killed worker's waiting statement is ended by the server, rolled back, and writes nothing.
      await waitFor('the dead worker\'s statement to end', async () =>
        (await count(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)) === 0);
      await locker.query('commit');
    } finally {
      await locker.end();
    }
    const killedAt = await count(`select count(*)::int as n from docs where embedding is not null`);
    expect(killedAt).toBeGreaterThan(0);
    expect(killedAt).toBeLessThan(N);
    const b = await startWorker(db.url, ['--models', 'minilm']);
    procs.push(b);
    await waitFor('every request to end', async () => (await count(`select count(*)::int as n from ai.requests where status in ('queued', 'running')`)) === 0);
    expect((await sql.query(`select status, count(*)::int as n from ai.requests group by status`)).rows).toEqual([{ status: 'completed', n: N }]);
    expect(await count(`select count(*)::int as n from docs where embedding is null`)).toBe(0);
    expect(await count(`select count(*)::int as n from ai.requests where attempts > 1`)).toBeGreaterThan(0);
    // Exactly once, and as the submitting role.
    const log = (await sql.query(`select doc, count(*)::int as n, min(by_role) as by_role from embed_log group by doc`)).rows;
    expect(log).toHaveLength(N);
    expect(log.every((r) => r.n === 1 && r.by_role === 'embed_app')).toBe(true);
    // The vector written is the request's own (its float32 bytes decoded)...
    expect(await count(`select count(*)::int as n from docs d join ai.requests r on r.input->'input'->>0 = d.body
                         where d.embedding is distinct from ai._float32_vector(r.vectors, 0, octet_length(r.vectors))`)).toBe(0);
    // ...and what ai.embed computes afresh for the same text (the cache emptied first, so the
    // model runs again, in batches of another composition).
    await sql.query('delete from ai.embedding_cache');
    const far = await sql.query(`
      with fresh as (select u.v, u.i from unnest(ai.embed('minilm', (select array_agg(body order by id) from docs))) with ordinality u(v, i))
      select count(*) filter (where d.embedding <-> f.v > 1e-5)::int as n, max(d.embedding <-> f.v) as worst, count(*)::int as total
        from docs d join fresh f on f.i = d.id`);
    expect(far.rows[0]).toMatchObject({ n: 0, total: N });
    await b.stop();
    await sql.query(`alter database ${db.name} reset client_connection_check_interval`);
  }, 150_000);

  it('a row gone by the time the vector is ready fails the request; nothing else is written', async () => {
    const w = await startWorker(db.url, ['--models', 'minilm']);
    procs.push(w);
    await sql.query('set role embed_app');
    try {
      await sql.query('begin');
      const id = (await sql.query(`select ai.submit_embed('minilm', 'nobody home', 'docs', 'embedding', 'id', '100000') as id`)).rows[0].id;
      await sql.query('commit');
      const row = await waitFor('the request to end', async () => (await sql.query(`select status, error from ai.my_requests where id = $1 and status not in ('queued', 'running')`, [id])).rows[0]);
      expect(row).toMatchObject({ status: 'failed', error: { code: 'target_row_not_found' } });
      // Without a target: just a request, its vector in the log.
      const plain = (await sql.query(`select ai.submit_embed('minilm', 'no target') as id`)).rows[0].id;
      const done = await waitFor('the plain request', async () => (await sql.query(`select status, usage from ai.my_requests where id = $1 and status = 'completed'`, [plain])).rows[0]);
      expect(done.usage.prompt_tokens).toBeGreaterThan(0);
    } finally {
      await sql.query('reset role');
      await w.stop();
    }
  });

  it('refuses at submit a target the caller may not write or that is not a vector, and a role without usage', async () => {
    await sql.query('set role embed_app');
    try {
      // other: a vector column without an UPDATE grant; body: not a vector; secret: no grants at all.
      const refused = async (q: string) => sql.query(q).then(() => null, (e: pg.DatabaseError) => e.code);
      expect(await refused(`select ai.submit_embed('minilm', 'x', 'docs', 'other', 'id', '1')`)).toBe('42501');
      expect(await refused(`select ai.submit_embed('minilm', 'x', 'docs', 'body', 'id', '1')`)).toBe('42804');
      expect(await refused(`select ai.submit_embed('minilm', 'x', 'secret', 'v', 'id', '1')`)).toBe('42501');
      expect(await refused(`select ai.submit_embed('minilm', 'x', 'docs', 'embedding')`)).toBe('22023');
      expect(await refused(`select ai.submit_embed('nope', 'x')`)).toBe('42704');
      expect(await refused(`select ai.submit_embed('minilm', null)`)).toBe('22004');
    } finally {
      await sql.query('reset role');
    }
    await sql.query('set role embed_nobody');
    try {
      const err = await sql.query(`select ai.submit_embed('minilm', 'x')`).then(() => null, (e: pg.DatabaseError) => e);
      expect(err?.code).toBe('42501');
    } finally {
      await sql.query('reset role');
    }
    expect(await count(`select count(*)::int as n from ai.requests where input->'input'->>0 = 'x'`)).toBe(0);
  });
});
