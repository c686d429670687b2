import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** The server tests run against; only its database part changes per test file. */
export const TEST_SERVER_URL = process.env.SWITCHYARD_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
/** The migrated template each test file copies (set it per checkout when several share one server). */
export const TEMPLATE_DB = process.env.SWITCHYARD_TEST_TEMPLATE ?? 'switchyard_test_template';

export function dbUrl(database: string): string {
  const u = new URL(TEST_SERVER_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

export const adminUrl = () => dbUrl('postgres');

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: adminUrl() });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

export interface TestDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

/** A fresh copy of the migrated template: each test file gets its own database. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `switchyard_test_${randomBytes(5).toString('hex')}`;
  await admin(async (c) => {
    for (let attempt = 0; ; attempt++) {
      try {
        await c.query(`create database ${name} template ${TEMPLATE_DB}`);
        return;
      } catch (err) {
        // Another file copying the template at this instant holds it briefly.
        if (attempt < 20 && /being accessed by other users/.test((err as Error).message)) {
          await new Promise((r) => setTimeout(r, 250));
          continue;
        }
        throw err;
      }
    }
  });
  return {
    name,
    url: dbUrl(name),
    // Connections a test's pool.end() is still closing get up to a second to go first: ended by
    // the forced drop, a closing client's error is an unhandled 'error' event in the test file.
    drop: () =>
      admin(async (c) => {
        for (let i = 0; i < 20; i++) {
          const { rows } = await c.query(`select count(*)::int as n from pg_stat_activity where datname = $1`, [name]);
          if (rows[0].n === 0) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        await c.query(`drop database if exists ${name} with (force)`);
      }),
  };
}
