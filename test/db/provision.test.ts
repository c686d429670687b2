import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';
import { provision } from '../../src/db/provision.js';
import { adminUrl, dbUrl } from '../helpers/db.js';

const name = `switchyard_prov_${randomBytes(4).toString('hex')}`;
const MIGRATIONS = readdirSync(new URL('../../migrations/', import.meta.url)).filter((f) => f.endsWith('.sql')).sort();

afterAll(async () => {
  const c = new pg.Client({ connectionString: adminUrl() });
  await c.connect();
  await c.query(`drop database if exists ${name} with (force)`);
  await c.end();
});

it('creates the database, pgvector and the schema; twice at once is safe, and again is a no-op', async () => {
  const logs: string[][] = [[], [], []];
  await Promise.all([provision(dbUrl(name), (m) => logs[0]!.push(m)), provision(dbUrl(name), (m) => logs[1]!.push(m))]);
  // Exactly one of the two applied each migration; the other waited and found nothing to do.
  const applied = logs.flat().filter((l) => l.startsWith('applied '));
  expect(applied).toEqual(MIGRATIONS.map((m) => `applied ${m}`));
  expect(MIGRATIONS.length).toBeGreaterThanOrEqual(2);

  await provision(dbUrl(name), (m) => logs[2]!.push(m));
  expect(logs[2]).toEqual(['schema is up to date']);

  const c = new pg.Client({ connectionString: dbUrl(name) });
  await c.connect();
  try {
    const ext = await c.query(`select extname from pg_extension where extname in ('vector', 'pgcrypto') order by 1`);
    expect(ext.rows.map((r) => r.extname)).toEqual(['pgcrypto', 'vector']);
    expect((await c.query(`select '[1,2,3]'::vector <-> '[1,2,4]'::vector as d`)).rows[0].d).toBe(1);
    const migrations = await c.query('select name from ai.migrations order by id');
    expect(migrations.rows.map((r) => r.name)).toEqual(MIGRATIONS);
    const schemas = await c.query(`select nspname from pg_namespace where nspname in ('ai', 'graphile_worker') order by 1`);
    expect(schemas.rows.map((r) => r.nspname)).toEqual(['ai', 'graphile_worker']);
  } finally {
    await c.end();
  }
});
