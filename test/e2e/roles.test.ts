import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The least-privilege deployment (SECURITY.md): `switchyard roles setup` as a superuser on an
 * existing database, then migrate, serve and worker each as its own non-superuser role, and an
 * application role using ai.embed and a vectorizer that the non-superuser worker keeps in sync.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
const prefix = `sy_${randomBytes(4).toString('hex')}`;
const APP = `${prefix}_app`;
const roles = { migrate: `${prefix}_migrate`, serve: `${prefix}_serve`, worker: `${prefix}_worker` };
const clients: pg.Client[] = [];

const urlAs = (role: string) => {
  const u = new URL(db.url);
  u.username = role;
  return u.toString();
};

async function connectAs(role: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: urlAs(role) });
  await c.connect();
  clients.push(c);
  return c;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nworker output:\n${worker.output().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  db = await createTestDatabase();
  const setup = await cli(['roles', 'setup', '--prefix', prefix], { DATABASE_URL: db.url });
  expect(setup.code, setup.stderr).toBe(0);
  expect(setup.stdout).toContain(`DATABASE_URL=${urlAs(roles.serve)}`);
  // Idempotent: a second run changes nothing and fails on nothing.
  expect((await cli(['roles', 'setup', '--prefix', prefix], { DATABASE_URL: db.url })).code).toBe(0);
  const asMigrate = { DATABASE_URL: urlAs(roles.migrate) };
  expect((await cli(['migrate'], asMigrate)).code).toBe(0);
  for (const args of [
    ['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'],
    ['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'],
  ]) {
    const r = await cli(args, asMigrate);
    expect(r.code, r.stderr).toBe(0);
  }
  [serve, worker] = await Promise.all([startServe(urlAs(roles.serve)), startWorker(urlAs(roles.worker))]);
  const su = new pg.Client({ connectionString: db.url });
  await su.connect();
  clients.push(su);
  await su.query(`create role ${APP} login`);
  await su.query(`create schema ${APP} authorization ${APP}`);
  await su.query(`select ai.grant_usage($1)`, [APP]);
});

afterAll(async () => {
  for (const c of clients) await c.end().catch(() => {});
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  for (const role of [APP, ...Object.values(roles)]) await admin.query(`drop role if exists ${role}`).catch(() => {});
  await admin.end();
});

describe('roles setup', () => {
  it('makes non-superuser roles, and the migrate role owns the schemas', async () => {
    const su = clients[0]!;
    const r = await su.query(
      `select rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles where rolname = any($1) order by rolname`,
      [Object.values(roles)],
    );
    expect(r.rows).toHaveLength(3);
    for (const row of r.rows) expect(row).toMatchObject({ rolsuper: false, rolcreaterole: false, rolcreatedb: false, rolbypassrls: false });
    const owners = await su.query(`select nspname, nspowner::regrole::text as owner from pg_namespace where nspname in ('ai', 'graphile_worker') order by 1`);
    expect(owners.rows).toEqual([
      { nspname: 'ai', owner: roles.migrate },
      { nspname: 'graphile_worker', owner: roles.migrate },
    ]);
    const strays = await su.query(
      `select count(*)::int as n from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname in ('ai', 'graphile_worker') and c.relowner <> $1::regrole`,
      [roles.migrate],
    );
    expect(strays.rows[0].n).toBe(0);
  });

  it('serve and worker roles can do their work but no DDL, and cannot put triggers on the request log', async () => {
    for (const role of [roles.serve, roles.worker]) {
      const c = await connectAs(role);
      await expect(c.query('create table ai.mine (x int)')).rejects.toThrow(/permission denied/);
      await expect(c.query(`create function ai.f() returns int language sql as 'select 1'`)).rejects.toThrow(/permission denied/);
      await expect(
        c.query(`create trigger t after insert on ai.requests for each statement execute function ai.models_notify()`),
      ).rejects.toThrow(/permission denied|must be owner/);
      await expect(c.query('truncate ai.requests')).rejects.toThrow(/permission denied/);
      // ai.settings may hold the owner's password for its side connection.
      await expect(c.query('select * from ai.settings')).rejects.toThrow(/permission denied/);
      expect((await c.query('select count(*) from ai.requests')).rowCount).toBe(1);
    }
  });
});

describe('the gateway and a worker as their roles', () => {
  it('answer chat and embeddings over HTTP', async () => {
    const key = (await cli(['keys', 'create', '--name', 'roles'], { DATABASE_URL: urlAs(roles.migrate) })).stdout.trim();
    const client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
    const chat = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
    expect(chat.choices[0]!.message.content).toBeTypeOf('string');
    expect(chat.usage!.completion_tokens).toBeGreaterThan(0);
    const emb = await client.embeddings.create({ model: 'minilm', input: 'roles', encoding_format: 'float' });
    expect(emb.data[0]!.embedding).toHaveLength(32);
  });

  it('keep an application role’s vectorizer in sync, the worker running its batches as that role', async () => {
    const app = await connectAs(APP);
    await app.query(`set search_path = ${APP}, public`);
    await until('the worker to record the dimension', async () => (await app.query(`select dimensions from ai.models where name = 'minilm'`)).rows[0].dimensions === 32);
    expect((await app.query(`select vector_dims(ai.embed('minilm', 'as an application role')) as d`)).rows[0].d).toBe(32);
    await app.query(`create table notes (id int primary key, body text)`);
    await app.query(`insert into notes select g, 'note ' || g from generate_series(1, 5) g`);
    await app.query(`select ai.create_vectorizer('notes', 'body', 'minilm')`);
    await until('the backfill', async () => Number((await app.query('select count(*) from notes_embeddings')).rows[0].count) === 5);
    await app.query(`update notes set body = 'changed' where id = 1`);
    await until('the update', async () => (await app.query(`select count(*) from ai.vectorizer_status where pending = 0`)).rows[0].count === '1');
    const su = clients[0]!;
    for (const role of [APP, ...Object.values(roles)]) {
      expect((await su.query('select rolsuper from pg_roles where rolname = $1', [role])).rows[0].rolsuper).toBe(false);
    }
  });

  it('ai.submit_embed and ai.submit_chat write into an application role’s rows, the worker running as its own non-superuser role', async () => {
    const app = await connectAs(APP);
    await app.query(`set search_path = ${APP}, public`);
    await app.query(`create table docs (id int primary key, body text, embedding vector(32), reply text, by_role name)`);
    await app.query(`create function stamp() returns trigger language plpgsql as $$ begin new.by_role := current_user; return new; end $$`);
    await app.query(`create trigger docs_stamp before update on docs for each row execute function stamp()`);
    await app.query(`insert into docs (id, body) select g, 'doc ' || g from generate_series(1, 3) g`);
    await app.query('begin');
    await app.query(`select ai.submit_embed('minilm', body, 'docs', 'embedding', 'id', id::text) from docs`);
    await app.query(`select ai.submit_chat('tiny', jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)), '{"max_tokens": 2}', 'docs', 'reply', 'id', id::text) from docs where id = 1`);
    await app.query('commit');
    await until('the vectors and the reply', async () =>
      (await app.query(`select count(*)::int as n from docs where embedding is not null`)).rows[0].n === 3 && (await app.query(`select reply from docs where id = 1`)).rows[0].reply !== null);
    expect((await app.query(`select distinct by_role from docs`)).rows).toEqual([{ by_role: APP }]);
    expect((await app.query(`select status, count(*)::int as n from ai.my_requests where params->>'target' is not null group by status`)).rows).toEqual([{ status: 'completed', n: 4 }]);
  });
});
