import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import type { DB } from './types.js';

// bigint (int8) and numeric come back as strings by default; counts and sums here fit in a double.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));
pg.types.setTypeParser(pg.types.builtins.NUMERIC, (v) => Number(v));

export type Db = Kysely<DB>;

export interface Database {
  pool: pg.Pool;
  db: Db;
  close(): Promise<void>;
}

/**
 * One pool and one Kysely instance per process. `max` defaults to 10 connections.
 * `asyncCommit` skips waiting for the WAL flush at commit: for writes that may be lost in a
 * database crash without losing anything promised (see the worker), it saves an fsync each.
 */
export function openDatabase(
  connectionString: string,
  opts: { max?: number; applicationName?: string; asyncCommit?: boolean } = {},
): Database {
  const pool = new pg.Pool({
    connectionString,
    max: opts.max ?? 10,
    application_name: opts.applicationName ?? 'switchyard',
    ...(opts.asyncCommit ? { options: '-c synchronous_commit=off' } : {}),
    // A dead server must surface as an error, not a hang.
    connectionTimeoutMillis: 10_000,
  });
  // An idle client losing its connection emits 'error' on the pool; without a listener that
  // would crash the process. The next checkout reconnects.
  pool.on('error', (err) => console.error(`[db] idle connection error: ${err.message}`));
  // A checked-out client (pg-pool drops its idle listener then) whose connection dies between
  // or during queries emits 'error' too: its query already fails with it, so the event itself
  // only needs a listener, or it would crash the process in a database restart.
  pool.on('connect', (client) => client.on('error', () => {}));
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
  let closed = false;
  return {
    pool,
    db,
    async close() {
      if (closed) return;
      closed = true;
      await db.destroy(); // ends the pool too
    },
  };
}
