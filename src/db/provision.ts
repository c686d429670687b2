import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { migrate } from './migrate.js';
import type { LogFn } from '../log.js';

const ENSURE_PGVECTOR = fileURLToPath(new URL('../../scripts/ensure-pgvector.sh', import.meta.url));

export class ProvisionError extends Error {}

/** The same server, database `postgres`: where CREATE DATABASE is issued from. */
function maintenanceUrl(databaseUrl: string): { url: string; database: string } {
  const u = new URL(databaseUrl);
  const database = decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres';
  u.pathname = '/postgres';
  return { url: u.toString(), database };
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
  } catch (err) {
    throw new ProvisionError(
      `cannot connect to PostgreSQL at ${redact(url)}: ${(err as Error).message}\n` +
        `Start PostgreSQL (e.g. \`docker compose up -d db\`) or set DATABASE_URL.`,
    );
  }
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<invalid DATABASE_URL>';
  }
}

function runScript(path: string, args: string[], log: LogFn): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [path, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const forward = (buf: Buffer) => {
      for (const line of buf.toString().split('\n')) if (line.trim()) log(line);
    };
    child.stdout.on('data', forward);
    child.stderr.on('data', forward);
    child.on('error', reject);
    child.on('close', (code) => resolve(code ?? 1));
  });
}

/**
 * Makes DATABASE_URL usable: pgvector available on the server (built from Debian's source
 * package when missing and we may), the database created, migrations applied. Idempotent and
 * safe to run concurrently (the pgvector script holds a file lock, CREATE DATABASE races are
 * tolerated, migrations hold an advisory lock).
 */
export async function provision(databaseUrl: string, log: LogFn = () => {}): Promise<void> {
  await prepareServer(databaseUrl, log);
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 3 });
  try {
    const { applied } = await migrate(pool, log);
    if (applied.length === 0) log('schema is up to date');
  } finally {
    await pool.end();
  }
}

/** pgvector available on the server and the database created (provision without migrating). */
export async function prepareServer(databaseUrl: string, log: LogFn = () => {}): Promise<void> {
  const { url, database } = maintenanceUrl(databaseUrl);
  await withClient(url, async (c) => {
    const has = await c.query(`select 1 from pg_available_extensions where name = 'vector'`);
    if (has.rowCount === 0) {
      const major = String(Math.floor(Number((await c.query('show server_version_num')).rows[0].server_version_num) / 10000));
      log(`pgvector is not installed on this PostgreSQL ${major} server; trying to build it`);
      const code = await runScript(ENSURE_PGVECTOR, [major], log);
      if (code !== 0) {
        throw new ProvisionError(
          `the pgvector extension is not available on ${redact(url)} and could not be installed here.\n` +
            `Use a PostgreSQL with pgvector (the pgvector/pgvector image, as docker-compose.yml runs it), ` +
            `or install pgvector (https://github.com/pgvector/pgvector#installation), or run scripts/ensure-pgvector.sh as root on Debian.`,
        );
      }
    }
    const exists = await c.query('select 1 from pg_database where datname = $1', [database]);
    if (exists.rowCount === 0) {
      try {
        await c.query(`create database ${pg.escapeIdentifier(database)}`);
        log(`created database ${database}`);
      } catch (err) {
        // 42P04 duplicate_database, 23505: a concurrent provisioner won the race.
        const code = (err as { code?: string }).code;
        if (code !== '42P04' && code !== '23505') throw err;
      }
    }
  });
}
