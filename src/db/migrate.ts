import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { runMigrations as runWorkerMigrations } from 'graphile-worker';
import { graphileLogger } from '../log.js';

const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));
const SQL_DIR = fileURLToPath(new URL('../../sql/', import.meta.url));
/** Arbitrary constant shared by every Switchyard migrator, so concurrent runs queue up. */
const MIGRATION_LOCK = 7_306_117_411;

interface MigrationFile {
  id: number;
  name: string;
  path: string;
}

async function listSqlFiles(dir: string): Promise<MigrationFile[]> {
  const files = (await readdir(dir)).filter((f) => /^\d+_?[-\w]*\.sql$/.test(f)).sort();
  return files.map((name) => ({ id: Number.parseInt(name, 10), name, path: `${dir}${name}` }));
}

export interface MigrateResult {
  applied: string[];
}

/**
 * Applies pending numbered migrations (each in its own transaction, recorded in
 * ai.migrations), then graphile-worker's own migrations, then re-applies the idempotent files
 * in sql/ (functions, views). A session advisory lock makes concurrent runs safe:
 * the second waits and then finds nothing to do.
 */
export async function migrate(pool: pg.Pool, log: (msg: string) => void = () => {}): Promise<MigrateResult> {
  const client = await pool.connect();
  const applied: string[] = [];
  try {
    await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK]);
    await client.query(`create schema if not exists ai;
      create table if not exists ai.migrations (
        id integer primary key, name text not null, applied_at timestamptz not null default now())`);
    const done = new Set((await client.query<{ id: number }>('select id from ai.migrations')).rows.map((r) => r.id));
    for (const m of await listSqlFiles(MIGRATIONS_DIR)) {
      if (done.has(m.id)) continue;
      const text = await readFile(m.path, 'utf8');
      await client.query('begin');
      try {
        await client.query(text);
        await client.query('insert into ai.migrations (id, name) values ($1, $2)', [m.id, m.name]);
        await client.query('commit');
      } catch (err) {
        await client.query('rollback');
        throw new Error(`migration ${m.name} failed: ${(err as Error).message}`, { cause: err });
      }
      applied.push(m.name);
      log(`applied ${m.name}`);
    }
    // graphile-worker's schema before sql/: its functions may call graphile_worker.add_job
    // (a LANGUAGE sql body is checked when it is created).
    await runWorkerMigrations({ pgPool: pool, logger: graphileLogger });
    await client.query('begin');
    try {
      for (const f of await listSqlFiles(SQL_DIR)) await client.query(await readFile(f.path, 'utf8'));
      await client.query('commit');
    } catch (err) {
      await client.query('rollback');
      throw err;
    }
    return { applied };
  } finally {
    await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {});
    client.release();
  }
}
