import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startWorker, type Proc } from '../helpers/stack.js';

/**
 * ai.embed() from SQL, computed by a real worker process with the fixture embedding model
 * (tiny-embed: 32 dimensions, MiniLM's tokenizer, 512 positions).
 */
let db: TestDatabase;
let worker: Proc;
/** One session throughout, as psql would be: its side connection is opened once and kept. */
let sql: pg.Client;

const parse = (v: string): number[] => JSON.parse(v) as number[];
const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
const requests = async () => Number((await sql.query(`select count(*) from ai.requests where endpoint = 'embeddings'`)).rows[0].count);

/** The error a statement fails with. */
async function failure(text: string, values: unknown[] = []): Promise<pg.DatabaseError> {
  const err = await sql.query(text, values).then(
    () => null,
    (e: pg.DatabaseError) => e,
  );
  expect(err, `expected "${text}" to fail`).not.toBeNull();
  return err!;
}

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  for (const args of [
    ['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed', '--alias', 'text-embedding-3-small'],
    // Registered but served by no worker: requests for it wait in the queue.
    ['models', 'add', 'orphan', '--task', 'embedding', '--source', 'tiny-embed'],
    ['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'],
  ]) {
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(0);
  }
  worker = await startWorker(db.url, ['--models', 'minilm']);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  // The worker records the dimension once its model is loaded: from then on it answers at once.
  for (let i = 0; !(await sql.query(`select dimensions from ai.models where name = 'minilm'`)).rows[0].dimensions; i++) {
    if (i > 300) throw new Error(`the worker did not load minilm:\n${worker.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

afterAll(async () => {
  await sql?.end();
  await worker?.stop();
  await db?.drop();
});

describe('ai.embed(model, text)', () => {
  it('returns a vector of the model dimension, normalised, and records the request', async () => {
    const before = await requests();
    const t0 = performance.now();
    const { rows } = await sql.query(`select ai.embed('minilm', 'hello') as v, vector_dims(ai.embed('minilm', 'hello')) as d`);
    const ms = performance.now() - t0;
    expect(rows[0].d).toBe(32);
    const v = parse(rows[0].v);
    expect(v).toHaveLength(32);
    expect(norm(v)).toBeCloseTo(1, 5);
    // Both calls in the statement were folded into one request (the second hit the cache).
    expect(await requests()).toBe(before + 1);
    const [row] = (await sql.query(`select model, requested_model, status, input from ai.requests where endpoint = 'embeddings' order by queued_at desc limit 1`)).rows;
    expect(row).toMatchObject({ model: 'minilm', requested_model: 'minilm', status: 'completed', input: { input: ['hello'] } });
    console.log(`ai.embed of a new text through the worker: ${ms.toFixed(0)} ms`);
  });

  it('returns the identical vector for identical text, from the cache without a new request', async () => {
    const first = (await sql.query(`select ai.embed('minilm', 'the same text')::text as v`)).rows[0].v;
    const before = await requests();
    const t0 = performance.now();
    const again = (await sql.query(`select ai.embed('minilm', 'the same text')::text as v`)).rows[0].v;
    const ms = performance.now() - t0;
    expect(again).toBe(first);
    expect(await requests()).toBe(before);
    const other = (await sql.query(`select ai.embed('minilm', 'another text')::text as v`)).rows[0].v;
    expect(other).not.toBe(first);
    console.log(`ai.embed cache hit: ${ms.toFixed(1)} ms`);
  });

  it('answers to an alias, and the cache is shared with the model name', async () => {
    const byName = (await sql.query(`select ai.embed('minilm', 'alias test')::text as v`)).rows[0].v;
    const before = await requests();
    const byAlias = (await sql.query(`select ai.embed('text-embedding-3-small', 'alias test')::text as v`)).rows[0].v;
    expect(byAlias).toBe(byName);
    expect(await requests()).toBe(before);
    await sql.query(`select ai.embed('text-embedding-3-small', 'alias only')`);
    const [row] = (await sql.query(`select model, requested_model from ai.requests where input = '{"input": ["alias only"]}'`)).rows;
    expect(row).toEqual({ model: 'minilm', requested_model: 'text-embedding-3-small' });
  });

  it('orders a KNN query by distance to ai.embed(...): the identical text comes first, with one request for the query', async () => {
    await sql.query(`create table texts (id serial primary key, body text not null, embedding vector(32))`);
    const bodies = Array.from({ length: 60 }, (_, i) => `sentence number ${i} about ${['cats', 'dogs', 'ships', 'trains', 'rain'][i % 5]} and ${i * 7}`);
    await sql.query(`insert into texts (body) select unnest($1::text[])`, [bodies]);
    // The array variant embeds every row in one request.
    await sql.query(`
      update texts t set embedding = e.v
        from unnest(ai.embed('minilm', array(select body from texts order by id))) with ordinality e(v, i)
       where t.id = e.i`);
    expect((await sql.query(`select count(*) from texts where embedding is null`)).rows[0].count).toBe('0');
    // Declared as what it is: it writes a request and waits for a worker.
    const vol = (await sql.query(`select distinct provolatile from pg_proc where oid in ('ai.embed(text, text)'::regprocedure, 'ai.embed(text, text[])'::regprocedure)`)).rows;
    expect(vol).toEqual([{ provolatile: 'v' }]);

    for (const q of [bodies[17]!, bodies[42]!]) {
      await sql.query(`delete from ai.embedding_cache where input_hash = ai.embedding_input_hash(model, to_jsonb($1::text))`, [q]);
      const before = await requests();
      // The documented way to embed a constant once per query: a scalar subquery (an InitPlan).
      const literal = (await sql.query(`select body from texts order by embedding <=> (select ai.embed('minilm', ${pg.escapeLiteral(q)})) limit 5`)).rows;
      expect(literal[0].body).toBe(q);
      expect(literal).toHaveLength(5);
      expect(await requests()).toBe(before + 1);
      // A parameter (prepared statement), as an application sends it.
      const param = (await sql.query(`select body from texts order by embedding <=> (select ai.embed('minilm', $1)) limit 5`, [q])).rows;
      expect(param.map((r) => r.body)).toEqual(literal.map((r) => r.body));
      // Called per row, it is evaluated per row, and the rows after the first find the cache.
      const perRow = (await sql.query(`select body from texts order by embedding <=> ai.embed('minilm', $1) limit 5`, [q])).rows;
      expect(perRow.map((r) => r.body)).toEqual(literal.map((r) => r.body));
      expect(await requests()).toBe(before + 1);
    }
    // With an HNSW index the plan is an index scan ordered by the operator.
    // Rewritten first: the update above left HOT chains whose older versions the server cannot
    // remove while any transaction in the cluster is older (other tests on a shared server), and an
    // index built over such chains is usable only by transactions newer than itself
    // (pg_index.indcheckxmin): the plan below then took a sequential scan, even with it disabled.
    await sql.query(`vacuum full texts`);
    await sql.query(`create index on texts using hnsw (embedding vector_cosine_ops)`);
    expect((await sql.query(`select indcheckxmin from pg_index where indexrelid = 'texts_embedding_idx'::regclass`)).rows[0].indcheckxmin).toBe(false);
    await sql.query(`set enable_seqscan = off`);
    try {
      const plan = (await sql.query(`explain select id from texts order by embedding <=> (select ai.embed('minilm', ${pg.escapeLiteral(bodies[3]!)})) limit 5`)).rows.map((r) => r['QUERY PLAN']).join('\n');
      expect(plan).toMatch(/Index Scan using texts_embedding_idx/);
      const rows = (await sql.query(`select body from texts order by embedding <=> (select ai.embed('minilm', $1)) limit 5`, [bodies[3]])).rows;
      expect(rows[0].body).toBe(bodies[3]);
    } finally {
      await sql.query(`reset enable_seqscan`);
    }
  });

  it('works inside REPEATABLE READ transactions, and the computed vector outlives a rollback', async () => {
    await sql.query('begin isolation level repeatable read');
    await sql.query('select 1'); // takes the snapshot: the worker's writes are after it
    const v = (await sql.query(`select ai.embed('minilm', 'repeatable read text')::text as v`)).rows[0].v;
    expect(parse(v)).toHaveLength(32);
    await sql.query('rollback');
    const before = await requests();
    expect((await sql.query(`select ai.embed('minilm', 'repeatable read text')::text as v`)).rows[0].v).toBe(v);
    expect(await requests()).toBe(before);
  });

  it("takes any text: quotes, backslashes and format() directives travel as data", async () => {
    const text = `100% o'clock %s %1$L %I \\ "x" $$ ;`;
    const v = (await sql.query(`select ai.embed('minilm', $1)::text as v`, [text])).rows[0].v;
    expect(parse(v)).toHaveLength(32);
    const [{ input }] = (await sql.query(`select input from ai.requests where input->'input'->>0 = $1`, [text])).rows;
    expect(input).toEqual({ input: [text] });
    await sql.query('begin isolation level repeatable read');
    try {
      const [w] = (await sql.query(`select ai.embed('minilm', array[$1, $1 || ' rr'])::text[] as v`, [text])).rows[0].v;
      expect(w).toBe(v);
    } finally {
      await sql.query('rollback');
    }
  });

  it('waits under READ COMMITTED by reading the row: the request names no listener, under REPEATABLE READ its side connection', async () => {
    await sql.query(`select ai.embed('minilm', 'read committed waiter')`);
    const rc = (await sql.query(`select listener from ai.requests where input->'input'->>0 = 'read committed waiter'`)).rows;
    expect(rc).toEqual([{ listener: null }]);
    await sql.query('begin isolation level repeatable read');
    await sql.query(`select ai.embed('minilm', 'repeatable read waiter')`);
    await sql.query('commit');
    const [{ listener }] = (await sql.query(`select listener from ai.requests where input->'input'->>0 = 'repeatable read waiter'`)).rows;
    expect(listener).toMatch(/^ai_events_sql_[0-9a-f]{16}_\d+$/);
  });

  it('reopens its side connection when the server ended it, under either isolation level', async () => {
    const side = async () =>
      (await sql.query<{ pid: number }>(`select pid from pg_stat_activity where application_name = 'switchyard ai.embed' and datname = current_database()`)).rows.map((r) => r.pid);
    await sql.query(`select ai.embed('minilm', 'before the side connection ends')`);
    for (const [i, isolation] of ['read committed', 'repeatable read'].entries()) {
      const before = await side();
      expect(before.length).toBeGreaterThan(0);
      const admin = new pg.Client({ connectionString: db.url });
      await admin.connect();
      await admin.query(`select pg_terminate_backend(pid) from unnest($1::int[]) pid`, [before]);
      await admin.end();
      await sql.query(`begin isolation level ${isolation}`);
      const v = (await sql.query(`select ai.embed('minilm', $1)::text as v`, [`after the side connection ended ${i}`])).rows[0].v;
      await sql.query('commit');
      expect(parse(v)).toHaveLength(32);
      const after = await side();
      expect(after.some((pid) => !before.includes(pid))).toBe(true);
    }
  });

  it('reads the cache through its primary key, however many vectors it holds (a cached generic plan included)', async () => {
    // Many cached vectors of the model: a plan that joined the cache by hashing it read them all.
    await sql.query(`insert into ai.embedding_cache (model, input_hash, embedding, tokens)
                     select 'minilm', ai.embedding_input_hash('minilm', to_jsonb('filler ' || i)), array_fill(0.1::real, array[32])::vector, 3
                       from generate_series(1, 3000) i on conflict do nothing`);
    await sql.query('analyze ai.embedding_cache');
    await sql.query(`set plan_cache_mode = force_generic_plan`);
    try {
      await sql.query(`prepare cached_probe(text, bytea, jsonb) as select * from ai._embed_cached($1, $2, $3)`);
      const plan = (await sql.query(`explain (costs off) execute cached_probe('minilm', ai.embedding_model_fingerprint('minilm'), '["filler 1", "filler 2", "nope"]')`)).rows
        .map((r) => r['QUERY PLAN'] as string)
        .join('\n');
      expect(plan).toContain('Index Scan using embedding_cache_pkey');
      expect(plan).not.toMatch(/Hash|Seq Scan/);
      const [{ hits, n }] = (await sql.query(`select c.hits, cardinality(c.result) as n from ai._embed_cached('minilm', ai.embedding_model_fingerprint('minilm'), '["filler 1", "filler 2", "nope"]') c`)).rows;
      expect([hits, n]).toEqual([2, 3]);
    } finally {
      await sql.query('deallocate all');
      await sql.query('reset plan_cache_mode');
    }
  });

  it('is null for a null input', async () => {
    expect((await sql.query(`select ai.embed('minilm', null::text) as v`)).rows[0].v).toBeNull();
  });

  it('keys a text as the worker does, and probes the cache without calling a key function (inlined)', async () => {
    // ai._embedding_text_key is ai.embedding_cache_key for a text, in a form the planner inlines.
    const [{ same }] = (await sql.query(`
      select bool_and(ai._embedding_text_key(f, t) = ai.embedding_cache_key(f, to_jsonb(t))) as same
        from (select ai.embedding_model_fingerprint('minilm') f) m,
             unnest(array['hello', '', 'naïve ☃ 𝄞', '[1, 2]', 'ids:[1, 2]', e'tab\\there']) t`)).rows;
    expect(same).toBe(true);
    expect((await sql.query(`select ai._embedding_text_key(decode('00', 'hex'), null) as k`)).rows[0].k).toBeNull();
    // A call of an SQL function that is not inlined is parsed and planned again per statement
    // (per row of an update); with track_functions it shows in the transaction's statistics.
    const v = (await sql.query(`select ai.embed('minilm', 'inlined key probe')::text as v`)).rows[0].v;
    await sql.query('begin');
    try {
      await sql.query(`set local track_functions = 'all'`);
      const [{ again, a, b }] = (await sql.query(`select ai.embed('minilm', 'inlined key probe')::text as again, ai.embed('minilm', array['inlined key probe'])::text as a, ai.embed('minilm', array['inlined key probe'])::text as b`)).rows;
      expect(again).toBe(v);
      expect(a).toBe(b);
      // The read of a completed request's vectors (and the worker's claim) key jsonb inputs.
      const [{ hits }] = (await sql.query(`select c.hits from ai._embed_cached('minilm', ai.embedding_model_fingerprint('minilm'), '["inlined key probe"]') c`)).rows;
      expect(hits).toBe(1);
      const called = (await sql.query(`select funcname from pg_stat_xact_user_functions where schemaname = 'ai' order by 1`)).rows.map((r) => r.funcname);
      expect(called).toContain('embed');
      expect(called).not.toContain('embedding_cache_key');
      expect(called).not.toContain('_embedding_text_key');
    } finally {
      await sql.query('rollback');
    }
  });
});

describe('ai.embed(model, text[])', () => {
  it('returns one vector per input in order (null for null), in one request for the misses', async () => {
    const single = (await sql.query(`select ai.embed('minilm', 'array b')::text as v`)).rows[0].v;
    const before = await requests();
    const { rows } = await sql.query(`select u.i, u.v::text as v from unnest(ai.embed('minilm', array['array a', 'array b', null, 'array c', 'array a'])) with ordinality u(v, i)`);
    expect(rows).toHaveLength(5);
    expect(rows[1].v).toBe(single);
    expect(rows[2].v).toBeNull();
    expect(rows[4].v).toBe(rows[0].v);
    expect(new Set([rows[0].v, rows[1].v, rows[3].v]).size).toBe(3);
    expect(await requests()).toBe(before + 1);
    // All cached now: no request at all.
    const again = (await sql.query(`select ai.embed('minilm', array['array c', 'array a'])::text[] as v`)).rows[0].v;
    expect(again).toEqual([rows[3].v, rows[0].v]);
    expect(await requests()).toBe(before + 1);
  });

  it('returns an empty array for an empty array', async () => {
    expect((await sql.query(`select cardinality(ai.embed('minilm', '{}'::text[])) as n`)).rows[0].n).toBe(0);
  });
});

describe('errors', () => {
  it('names an unknown model, and a model that is not an embedding model', async () => {
    const unknown = await failure(`select ai.embed('nope', 'x')`);
    expect(unknown.message).toBe('ai.embed: unknown model "nope"');
    expect(unknown.code).toBe('42704');
    expect(unknown.hint).toMatch(/switchyard models add/);
    const chat = await failure(`select ai.embed('tiny', 'x')`);
    expect(chat.message).toBe('ai.embed: model "tiny" is a chat model, not an embedding model');
  });

  it("fails with the worker's message for an input the model rejects", async () => {
    const empty = await failure(`select ai.embed('minilm', '')`);
    expect(empty.message).toMatch(/^ai\.embed: .*empty string/);
    expect(empty.code).toBe('22023');
    expect(empty.detail).toMatch(/code empty_input/);
    const long = await failure(`select ai.embed('minilm', repeat('word ', 600))`);
    expect(long.message).toMatch(/tokens long; this model takes at most 512/);
    expect(long.detail).toMatch(/code context_length_exceeded/);
    const inArray = await failure(`select ai.embed('minilm', array['fine', ''])`);
    expect(inArray.message).toMatch(/input\[1\].*empty string/);
  });

  it("announces its request by id; a forged announcement claims nothing that is not the worker's to claim", async () => {
    const heard: string[] = [];
    const ear = new pg.Client({ connectionString: db.url });
    await ear.connect();
    try {
      ear.on('notification', (m) => m.channel === 'ai_embed' && heard.push(m.payload ?? ''));
      await ear.query('listen ai_embed');
      await sql.query(`select ai.embed('minilm', 'announced by id')`);
      const [{ id }] = (await sql.query(`select id::text from ai.requests where input->'input'->>0 = 'announced by id'`)).rows;
      for (let i = 0; i < 100 && !heard.includes(`minilm ${id}`); i++) await new Promise((r) => setTimeout(r, 20));
      expect(heard).toContain(`minilm ${id}`);
      // A queued request that minilm's worker must not take, announced as if it were minilm's
      // (any role may NOTIFY): another model's.
      const other = '00000000-0000-4000-8000-00000000000a';
      await sql.query(`select ai.enqueue_embedding($1::uuid, 'orphan', 'orphan', '["not for minilm"]'::jsonb)`, [other]);
      await ear.query(`select pg_notify('ai_embed', 'minilm ' || $1)`, [other]);
      await ear.query(`select pg_notify('ai_embed', 'minilm not-a-uuid')`);
      await new Promise((r) => setTimeout(r, 500));
      expect((await sql.query(`select status from ai.requests where id = $1`, [other])).rows[0].status).toBe('queued');
      await sql.query(`select ai.cancel_request($1::uuid)`, [other]);
    } finally {
      await ear.end();
    }
  });

  it('waits for a running request on its wait lock, which the worker releases after its finish; another holder of the key only delays it', async () => {
    const lockHolders = async () =>
      Number((await sql.query(`select count(*)::int as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
                                where l.locktype = 'advisory' and a.application_name = 'switchyard-worker' and a.datname = current_database()`)).rows[0].n);
    // The caller's backend waits on the lock (wait event Lock/advisory) while the worker runs the
    // request: sampled from another connection during a run of calls.
    const probe = new pg.Client({ connectionString: db.url });
    await probe.connect();
    try {
      const pid = (await sql.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const events = new Map<string, number>();
      let running = true;
      const sampling = (async () => {
        while (running) {
          const r = (await probe.query(`select wait_event_type || ':' || wait_event as w from pg_stat_activity where pid = $1`, [pid])).rows[0];
          if (r?.w) events.set(r.w, (events.get(r.w) ?? 0) + 1);
        }
      })();
      await sql.query(`select count(ai.embed('minilm', 'wait lock ' || i)) from generate_series(1, 40) i`);
      running = false;
      await sampling;
      expect(events.get('Lock:advisory') ?? 0, JSON.stringify([...events])).toBeGreaterThan(0);
      // Released once each finish committed: the worker's connections hold none.
      expect(await lockHolders()).toBe(0);

      // Someone else takes the key of a request as soon as it is announced: the worker's try
      // fails or the holder waits behind it; either way the caller looks at its row between
      // slices of its wait and returns, long before ai.embed_timeout.
      const ear = new pg.Client({ connectionString: db.url });
      await ear.connect();
      try {
        let grabbed = '';
        ear.on('notification', (m) => {
          const id = (m.payload ?? '').split(' ')[1];
          if (id && !grabbed) {
            grabbed = id;
            void ear.query(`select pg_advisory_lock(hashtextextended($1, 7014))`, [id]).catch(() => {});
          }
        });
        await ear.query('listen ai_embed');
        const t0 = performance.now();
        const v = (await sql.query(`select ai.embed('minilm', 'key held by another session')::text as v`)).rows[0].v;
        expect(parse(v)).toHaveLength(32);
        expect(grabbed).not.toBe('');
        expect(performance.now() - t0).toBeLessThan(5000);
        const [{ held }] = (await probe.query(`select count(*)::int as held from pg_locks l join pg_stat_activity a on a.pid = l.pid
                                                where l.locktype = 'advisory' and a.pid = $1`, [(ear as unknown as { processID: number }).processID])).rows;
        expect(held).toBe(1);
      } finally {
        await ear.end();
      }
      expect(await lockHolders()).toBe(0);
    } finally {
      await probe.end();
    }
  });

  it('hands a claim’s wait locks to the finishing transaction: held until it commits (or rolls back), then free', async () => {
    const ids = ['00000000-0000-4000-8000-0000000000b1', '00000000-0000-4000-8000-0000000000b2'];
    const holder = new pg.Client({ connectionString: db.url });
    const other = new pg.Client({ connectionString: db.url });
    await holder.connect();
    await other.connect();
    const free = async (id: string) => {
      const { rows } = await other.query(`select pg_try_advisory_lock_shared(ai._embed_wait_key($1::uuid)) as ok`, [id]);
      if (rows[0].ok) await other.query(`select pg_advisory_unlock_shared(ai._embed_wait_key($1::uuid))`, [id]);
      return rows[0].ok as boolean;
    };
    try {
      for (const end of ['commit', 'rollback']) {
        for (const id of ids) expect((await holder.query(`select pg_try_advisory_lock(ai._embed_wait_key($1::uuid)) as ok`, [id])).rows[0].ok).toBe(true);
        await holder.query('begin');
        expect((await holder.query(`select ai._embed_hand_over($1::uuid[]) as n`, [ids])).rows[0].n).toBe(2);
        for (const id of ids) expect(await free(id)).toBe(false);
        await holder.query(end);
        for (const id of ids) expect(await free(id), end).toBe(true);
      }
    } finally {
      await holder.end();
      await other.end();
    }
  });

  it('times out with a clear error when no worker serves the model, and cancels the request', async () => {
    await sql.query(`set ai.embed_timeout = '300ms'`);
    try {
      const t0 = performance.now();
      const err = await failure(`select ai.embed('orphan', 'nobody computes this')`);
      const ms = performance.now() - t0;
      expect(err.message).toBe('ai.embed: no embedding from model "orphan" after 00:00:00.3');
      expect(err.code).toBe('57014');
      expect(err.detail).toMatch(/not taken by any worker/);
      expect(err.hint).toBe('Start a worker that serves it: switchyard worker --models orphan');
      expect(ms).toBeGreaterThanOrEqual(300);
      expect(ms).toBeLessThan(3000);
      const [row] = (await sql.query(`select status from ai.requests where model = 'orphan' order by queued_at desc limit 1`)).rows;
      expect(row.status).toBe('cancelled');
    } finally {
      await sql.query('reset ai.embed_timeout');
    }
  });

  it('rejects an invalid ai.embed_timeout', async () => {
    await sql.query(`set ai.embed_timeout = 'soon'`);
    try {
      const err = await failure(`select ai.embed('minilm', 'needs the worker')`);
      expect(err.message).toBe('invalid ai.embed_timeout "soon"');
    } finally {
      await sql.query('reset ai.embed_timeout');
    }
  });

  it('says what to do when the side connection cannot connect, without echoing its password', async () => {
    await sql.query(`insert into ai.settings values ('dblink_connstr', 'host=127.0.0.1 port=1 connect_timeout=2 password=''s3cr3t pw''')`);
    try {
      const err = await failure(`select ai.embed('minilm', 'no side connection')`);
      expect(err.message).toMatch(/^ai\.embed: cannot open its side connection to the database/);
      expect(err.code).toBe('08001');
      expect(err.hint).toMatch(/ai\.settings/);
      expect(JSON.stringify(err)).not.toMatch(/s3cr3t/);
    } finally {
      await sql.query(`delete from ai.settings where name = 'dblink_connstr'`);
    }
    // A session's own GUC is not honoured: the owner's side connection never goes where a caller says.
    await sql.query(`set ai.dblink_connstr = 'host=127.0.0.1 port=1 connect_timeout=2'`);
    expect((await sql.query(`select vector_dims(ai.embed('minilm', 'guc ignored')) as d`)).rows[0].d).toBe(32);
    await sql.query('reset ai.dblink_connstr');
    // The default works again (and a cached text never needed the side connection).
    expect((await sql.query(`select vector_dims(ai.embed('minilm', 'side connection back')) as d`)).rows[0].d).toBe(32);
  });
});
