import pg from 'pg';
import { migrate } from './migrate.js';
import { prepareServer } from './provision.js';
import type { LogFn } from '../log.js';

export interface RoleNames {
  /** Owns schemas ai and graphile_worker: runs `migrate`, `models`, `keys`. */
  migrate: string;
  /** The HTTP gateway: reads and writes requests and the queue, no DDL. */
  serve: string;
  /** Workers: the same rights as serve, plus the vectorizers it is let run (ai.grant_usage). */
  worker: string;
}

export interface SetupRolesOptions {
  /** Role names are PREFIX_migrate, PREFIX_serve, PREFIX_worker (default `switchyard`). */
  prefix?: string;
  /** Passwords to set (for servers that ask for one); a role keeps its password when absent. */
  passwords?: Partial<Record<keyof RoleNames, string>>;
}

export const roleNames = (prefix = 'switchyard'): RoleNames => ({ migrate: `${prefix}_migrate`, serve: `${prefix}_serve`, worker: `${prefix}_worker` });

const id = pg.escapeIdentifier;

/**
 * The least-privilege setup (SECURITY.md), run once as a superuser: three non-superuser login
 * roles; the extensions (only a superuser may create dblink and pgvector); schemas ai and
 * graphile_worker owned by the migrate role (existing objects are handed over); migrations
 * applied as that role; serve and worker granted what they need. Idempotent.
 */
export async function setupRoles(databaseUrl: string, opts: SetupRolesOptions = {}, log: LogFn = () => {}): Promise<RoleNames> {
  const names = roleNames(opts.prefix);
  for (const n of Object.values(names)) if (!/^[a-z_][a-z0-9_]{0,62}$/.test(n)) throw new Error(`invalid role name ${n}: use a prefix of lower-case letters, digits and _`);
  await prepareServer(databaseUrl, log);
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    if (!(await c.query(`select rolsuper from pg_roles where rolname = current_user`)).rows[0]?.rolsuper) {
      throw new Error('roles setup must run as a superuser (it creates roles and extensions); serve, worker and migrate then run as the roles it makes');
    }
    for (const [kind, role] of Object.entries(names) as [keyof RoleNames, string][]) {
      // NOSUPERUSER, NOCREATEROLE, NOCREATEDB, NOBYPASSRLS: the defaults, stated for an existing role too.
      const exists = (await c.query('select 1 from pg_roles where rolname = $1', [role])).rowCount! > 0;
      await c.query(`${exists ? 'alter' : 'create'} role ${id(role)} login nosuperuser nocreaterole nocreatedb nobypassrls noreplication`);
      const password = opts.passwords?.[kind];
      if (password) await c.query(`alter role ${id(role)} password ${pg.escapeLiteral(password)}`);
      log(`${exists ? 'kept' : 'created'} role ${role}`);
    }
    const database = (await c.query('select current_database() as d')).rows[0].d as string;
    await c.query(`grant connect, create on database ${id(database)} to ${id(names.migrate)}`);
    for (const ext of ['vector', 'pgcrypto', 'dblink']) await c.query(`create extension if not exists ${ext}`);
    for (const schema of ['ai', 'graphile_worker']) {
      await c.query(`create schema if not exists ${schema} authorization ${id(names.migrate)}`);
      await handOver(c, schema, names.migrate);
    }
    // The owner's side connection for ai.embed (sql/030_embed.sql): a non-superuser may only
    // connect password-less (trust, peer) through dblink_connect_u, included here.
    // The owner uses dblink (nobody else may: sql/099_security.sql revokes it from PUBLIC).
    const dblink = await c.query<{ f: string }>(
      `select p.oid::regprocedure::text as f from pg_proc p join pg_depend d on d.objid = p.oid and d.deptype = 'e'
         join pg_extension e on e.oid = d.refobjid where e.extname = 'dblink'`,
    );
    for (const { f } of dblink.rows) await c.query(`grant execute on function ${f} to ${id(names.migrate)}`);
  } finally {
    await c.end();
  }
  // Migrations as the owner (objects it creates are its own), then once more as the superuser:
  // idempotent, it only adds what needs a superuser (revoking dblink from PUBLIC, moving old
  // vectorizers to their owners' functions).
  for (const asRole of [names.migrate, null]) {
    const pool = new pg.Pool({ connectionString: databaseUrl, max: 3, ...(asRole ? { options: `-c role=${asRole}` } : {}) });
    try {
      await migrate(pool, log);
    } finally {
      await pool.end();
    }
  }
  const c2 = new pg.Client({ connectionString: databaseUrl });
  await c2.connect();
  try {
    // Where the server asks for passwords, the owner's side connection for ai.embed needs its own.
    if (opts.passwords?.migrate) {
      await c2.query(`insert into ai.settings (name, value) values ('dblink_password', $1) on conflict (name) do update set value = excluded.value`, [
        opts.passwords.migrate,
      ]);
    }
    await c2.query(`select ai.grant_service($1, 'serve'), ai.grant_service($2, 'worker')`, [names.serve, names.worker]);
    // Application roles granted before: their vectorizers need the worker role as a member.
    await c2.query('select ai.grant_usage(role, admin) from ai.usage_roles');
  } finally {
    await c2.end();
  }
  return names;
}

/** Gives a schema and everything in it to `owner` (tables bring their sequences, indexes and row types). */
async function handOver(c: pg.Client, schema: string, owner: string): Promise<void> {
  const objects = await c.query<{ kind: string; name: string }>(
    `select case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence' else 'table' end as kind,
            format('%I.%I', n.nspname, c.relname) as name
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'S')
        and not exists (select from pg_depend d where d.objid = c.oid and d.classid = 'pg_class'::regclass and d.deptype in ('a', 'i'))
     union all
     select 'routine', p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = $1
     union all
     select case t.typtype when 'd' then 'domain' else 'type' end, format('%I.%I', n.nspname, t.typname)
       from pg_type t join pg_namespace n on n.oid = t.typnamespace
      where n.nspname = $1 and t.typtype in ('c', 'e', 'd') and (t.typrelid = 0 or (select relkind from pg_class where oid = t.typrelid) = 'c')`,
    [schema],
  );
  for (const o of objects.rows) await c.query(`alter ${o.kind} ${o.name} owner to ${id(owner)}`);
  await c.query(`alter schema ${id(schema)} owner to ${id(owner)}`);
}
