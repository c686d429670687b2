import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startWorker, type Proc } from '../helpers/stack.js';
import { migrate } from '../../src/db/migrate.js';

/**
 * Database roles as an attacker would try them (SECURITY.md): a role with no grants, an
 * application role given ai.grant_usage, and a second tenant. A real worker (as the test's
 * superuser, as `up` runs it) embeds, so every escalation path that goes through a worker is live.
 */
let db: TestDatabase;
let worker: Proc;
let su: pg.Client;
const tag = randomBytes(4).toString('hex');
const APP = `sy_app_${tag}`;
const OTHER = `sy_other_${tag}`;
const NOBODY = `sy_nobody_${tag}`;
const clients: pg.Client[] = [];

async function connectAs(role: string): Promise<pg.Client> {
  const u = new URL(db.url);
  u.username = role;
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  clients.push(c);
  return c;
}

async function failure(c: pg.Client, text: string, values: unknown[] = []): Promise<pg.DatabaseError> {
  const err = await c.query(text, values).then(
    () => null,
    (e: pg.DatabaseError) => e,
  );
  expect(err, `expected "${text}" to fail`).not.toBeNull();
  return err!;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nworker output:\n${worker.output().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const isSuperuser = async (role: string) => (await su.query(`select rolsuper from pg_roles where rolname = $1`, [role])).rows[0].rolsuper as boolean;

beforeAll(async () => {
  db = await createTestDatabase();
  const r = await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  worker = await startWorker(db.url, ['--models', 'minilm']);
  su = new pg.Client({ connectionString: db.url });
  await su.connect();
  await until('the worker to load minilm', async () => (await su.query(`select dimensions from ai.models where name = 'minilm'`)).rows[0].dimensions === 32);
  for (const role of [APP, OTHER, NOBODY]) await su.query(`create role ${role} login`);
  for (const role of [APP, OTHER]) {
    await su.query(`create schema ${role} authorization ${role}`);
    await su.query(`select ai.grant_usage($1)`, [role]);
  }
});

afterAll(async () => {
  for (const c of clients) await c.end().catch(() => {});
  await su?.end();
  await worker?.stop();
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  for (const role of [APP, OTHER, NOBODY]) await admin.query(`drop role if exists ${role}`);
  await admin.end();
});

describe('a role with no grants', () => {
  it('can call nothing in ai, read no request, and use no dblink', async () => {
    const c = await connectAs(NOBODY);
    expect((await failure(c, `select ai.embed('minilm', 'hello')`)).message).toMatch(/permission denied for schema ai/);
    expect((await failure(c, `select * from ai.requests`)).message).toMatch(/permission denied/);
    expect((await failure(c, `select ai.cancel_request(gen_random_uuid())`)).message).toMatch(/permission denied/);
    expect((await failure(c, `select dblink_get_connections()`)).message).toMatch(/permission denied for function dblink_get_connections/);
    expect((await failure(c, `select dblink_connect('x', 'dbname=postgres')`)).message).toMatch(/permission denied/);
  });

  it('PUBLIC may execute nothing in ai, and every SECURITY DEFINER function pins its search_path', async () => {
    const open = await su.query(`
      select p.oid::regprocedure::text as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'ai' and (p.proacl is null or exists (select from aclexplode(p.proacl) a where a.grantee = 0 and a.privilege_type = 'EXECUTE'))`);
    expect(open.rows.map((r) => r.f)).toEqual([]);
    const unpinned = await su.query(`
      select p.oid::regprocedure::text as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'ai' and p.prosecdef and not exists (select from unnest(p.proconfig) c where c like 'search_path=%')`);
    expect(unpinned.rows.map((r) => r.f)).toEqual([]);
    const dblink = await su.query(`
      select p.oid::regprocedure::text as f from pg_proc p join pg_depend d on d.objid = p.oid and d.deptype = 'e'
        join pg_extension e on e.oid = d.refobjid
       where e.extname = 'dblink' and (p.proacl is null or exists (select from aclexplode(p.proacl) a where a.grantee = 0))`);
    expect(dblink.rows.map((r) => r.f)).toEqual([]);
  });
});

describe('a role given ai.grant_usage', () => {
  let app: pg.Client;
  let vectorizer: number;

  beforeAll(async () => {
    app = await connectAs(APP);
    await app.query(`set search_path = ${APP}, public`);
    await app.query(`create table docs (id int primary key, body text)`);
    await app.query(`insert into docs values (1, 'one'), (2, 'two')`);
  });

  it('embeds in SQL and sees its own requests, not the log', async () => {
    expect((await app.query(`select vector_dims(ai.embed('minilm', 'only mine ${tag}')) as d`)).rows[0].d).toBe(32);
    const mine = await app.query(`select endpoint, status, input from ai.my_requests`);
    expect(mine.rows).toHaveLength(1);
    expect(mine.rows[0]).toMatchObject({ endpoint: 'embeddings', status: 'completed' });
    expect((await su.query(`select db_role from ai.requests where input->'input'->>0 = $1`, [`only mine ${tag}`])).rows[0].db_role).toBe(APP);
    expect((await failure(app, `select * from ai.requests`)).message).toMatch(/permission denied/);
    expect((await failure(app, `select * from ai.api_keys`)).message).toMatch(/permission denied/);
    expect((await failure(app, `select ai.grant_usage('${APP}', true)`)).message).toMatch(/permission denied|only the owner/);
    // Others' vectors (float32 bytes on the request rows), and the workers' batch functions.
    expect((await failure(app, `select vectors from ai.requests`)).message).toMatch(/permission denied/);
    expect((await failure(app, `select ai.finish_embeddings('w', '{}', '{}', '{}', '{}', '{}', '{}', null, '{}', '{}')`)).message).toMatch(/permission denied/);
    expect((await failure(app, `select ai.enqueue_embeddings('{}', 'minilm', '{}', '[]', '{}', '{}', 5, null, 10)`)).message).toMatch(/permission denied/);
  });

  it('creates a vectorizer on its own table, which the worker keeps in sync', async () => {
    vectorizer = (await app.query(`select ai.create_vectorizer('docs', 'body', 'minilm') as id`)).rows[0].id;
    await until('the backfill', async () => Number((await app.query(`select count(*) from docs_embeddings`)).rows[0].count) === 2);
    const status = await app.query(`select id, pending from ai.vectorizer_status`);
    expect(status.rows).toEqual([{ id: vectorizer, pending: '0' }]);
  });

  it('cannot escalate through a trigger on its destination: it runs as the application role', async () => {
    await app.query(`create table attempts (who name, outcome text)`);
    await app.query(`create function escalate() returns trigger language plpgsql as $$
      begin
        begin
          execute format('alter role %I superuser', session_user);
          insert into ${APP}.attempts values (current_user, 'altered');
        exception when others then
          insert into ${APP}.attempts values (current_user, sqlerrm);
        end;
        return null;
      end $$`);
    await app.query(`create trigger escalate after insert or update or delete on docs_embeddings for each row execute function escalate()`);
    await app.query(`create trigger escalate_truncate after truncate on docs_embeddings for each statement execute function escalate()`);
    // Worker writes (insert, update), the source trigger's deletes, and a truncate.
    await app.query(`insert into docs values (3, 'three')`);
    await app.query(`update docs set body = 'uno' where id = 1`);
    await until('the worker to write', async () => Number((await app.query(`select count(*) from attempts`)).rows[0].count) >= 2);
    await app.query(`delete from docs where id = 2`);
    await app.query(`truncate docs`);
    const attempts = (await app.query(`select who, outcome from attempts`)).rows;
    expect(attempts.length).toBeGreaterThanOrEqual(4);
    for (const a of attempts) {
      expect(a.who).toBe(APP);
      expect(a.outcome).toMatch(/permission denied|must be superuser/);
    }
    expect(await isSuperuser(APP)).toBe(false);
    await app.query(`drop trigger escalate on docs_embeddings; drop trigger escalate_truncate on docs_embeddings`);
  });

  it("another tenant cannot see, drop, attach or drive the vectorizer's trigger", async () => {
    const other = await connectAs(OTHER);
    await other.query(`set search_path = ${OTHER}, public`);
    await other.query(`create table mine (id int primary key, body text)`);
    expect((await other.query(`select * from ai.vectorizers`)).rows).toEqual([]);
    expect((await other.query(`select * from ai.vectorizer_status`)).rows).toEqual([]);
    expect((await other.query(`delete from ai.vectorizer_queue`)).rowCount).toBe(0);
    expect((await failure(other, `select ai.drop_vectorizer(${vectorizer})`)).message).toBe(`ai.drop_vectorizer: no vectorizer ${vectorizer}`);
    expect((await failure(other, `select ai._vectorizer_forget_jobs(${vectorizer})`)).message).toMatch(/still exists/);
    const attach = await failure(
      other,
      `create trigger steal after insert on mine referencing new table as ai_vz_new for each statement execute function ${APP}.ai_vectorizer_${vectorizer}_sync()`,
    );
    expect(attach.message).toMatch(/permission denied/);
    const shared = await failure(other, `create trigger steal after truncate on mine for each statement execute function ai._vectorizer_trigger('${vectorizer}')`);
    expect(shared.message).toMatch(/permission denied/);
    // Its own vectorizer works side by side.
    await other.query(`insert into mine values (1, 'theirs')`);
    await other.query(`select ai.create_vectorizer('mine', 'body', 'minilm')`);
    await until("the other tenant's backfill", async () => Number((await other.query(`select count(*) from mine_embeddings`)).rows[0].count) === 1);
    expect((await other.query(`select count(*) from ai.vectorizer_status`)).rows[0].count).toBe('1');
    expect((await app.query(`select count(*) from ai.vectorizer_status`)).rows[0].count).toBe('1');
    expect(await isSuperuser(OTHER)).toBe(false);
  });

  it("a role that a session SET ROLE to cannot use a privileged caller's side connection", async () => {
    const s = new pg.Client({ connectionString: db.url });
    await s.connect();
    clients.push(s);
    await s.query(`select ai.embed('minilm', 'superuser side connection ${tag}')`);
    const [conn] = (await s.query(`select unnest(dblink_get_connections()) as c`)).rows.map((r) => r.c as string);
    expect(conn).toMatch(/^switchyard_/);
    await s.query(`set role ${APP}`);
    expect((await failure(s, `select dblink_get_connections()`)).message).toMatch(/permission denied/);
    expect((await failure(s, `select dblink_exec('${conn}', 'alter role ${APP} superuser')`)).message).toMatch(/permission denied/);
    expect((await failure(s, `select * from dblink('${conn}', 'select 1') as t(x int)`)).message).toMatch(/permission denied/);
    // ai.embed still works for it, on a connection of its own, and the request is its own.
    await s.query(`select ai.embed('minilm', 'set role side connection ${tag}')`);
    expect((await s.query(`select count(*) from ai.my_requests where input->'input'->>0 = $1`, [`set role side connection ${tag}`])).rows[0].count).toBe('1');
    await s.query('reset role');
    expect((await s.query(`select cardinality(dblink_get_connections()) as n`)).rows[0].n).toBe(2);
    expect(await isSuperuser(APP)).toBe(false);
  });

  it('a vectorizer made before per-owner trigger functions refuses to run as the owner, and moves to its own on migrate', async () => {
    await app.query(`create table legacy (id int primary key, body text)`);
    const id = (await app.query(`select ai.create_vectorizer('legacy', 'body', 'minilm') as id`)).rows[0].id as number;
    // What an older version left: the shared SECURITY DEFINER trigger, no function of its own.
    for (const op of ['insert', 'update', 'delete', 'truncate']) await su.query(`drop trigger ai_vectorizer_${id}_${op} on ${APP}.legacy`);
    await su.query(`drop function ${APP}.ai_vectorizer_${id}_sync()`);
    await su.query(`update ai.vectorizers set fn_schema = null, owner = 'postgres' where id = $1`, [id]);
    await su.query(
      `create trigger ai_vectorizer_${id}_delete after delete on ${APP}.legacy referencing old table as ai_vz_old for each statement execute function ai._vectorizer_trigger('${id}')`,
    );
    await app.query(`insert into legacy values (1, 'old')`);
    // Its destination belongs to the application role: the shared trigger will not write it as the owner.
    expect((await failure(app, `delete from legacy where id = 1`)).message).toMatch(/predates per-owner functions/);
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    try {
      await migrate(pool);
    } finally {
      await pool.end();
    }
    const moved = (await su.query(`select fn_schema, owner from ai.vectorizers where id = $1`, [id])).rows[0];
    expect(moved).toEqual({ fn_schema: APP, owner: APP });
    const fn = await su.query(`select proowner::regrole::text as owner, prosecdef from pg_proc where oid = to_regprocedure($1)`, [`${APP}.ai_vectorizer_${id}_sync()`]);
    expect(fn.rows).toEqual([{ owner: APP, prosecdef: true }]);
    await app.query(`delete from legacy where id = 1`);
    await app.query(`select ai.drop_vectorizer(${id})`);
  });

  it('drops its own vectorizer, trigger function included', async () => {
    await app.query(`select ai.drop_vectorizer(${vectorizer})`);
    expect((await app.query(`select to_regprocedure('ai_vectorizer_${vectorizer}_sync()') as f`)).rows[0].f).toBeNull();
    expect((await app.query(`select to_regclass('docs_embeddings') as t`)).rows[0].t).toBeNull();
    await app.query(`insert into docs values (9, 'after drop')`);
  });
});
