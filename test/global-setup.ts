import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import pg from 'pg';
import { provision } from '../src/db/provision.js';
import { ensureFixtureModels } from '../fixtures/models/index.mjs';
import { ensureBuilt } from '../scripts/build.mjs';
import { TEMPLATE_DB, adminUrl, dbUrl } from './helpers/db.js';

/** A digest of everything `migrate` applies: the template is rebuilt whenever it changes. */
function schemaVersion(): string {
  const h = createHash('sha256');
  for (const dir of ['migrations', 'sql']) {
    const url = new URL(`../${dir}/`, import.meta.url);
    for (const f of readdirSync(url).filter((f) => f.endsWith('.sql')).sort()) h.update(f).update(readFileSync(new URL(f, url)));
  }
  return h.digest('hex').slice(0, 16);
}

/**
 * Once per run: pgvector available, a migrated template database (each test file copies it),
 * and the random-weight fixture models generated into .cache/ (no network, no ../shared).
 * The template outlives the run (the machine's PostgreSQL is shared with later runs), so it
 * carries the schema version it was built from and is rebuilt when the schema files change:
 * an edited migration never leaves a stale template behind. dist/ is (re)built from src/ first:
 * the CLI the tests spawn, and the worker threads, run what ships.
 */
export default async function setup({ provide }: { provide: (key: string, value: unknown) => void }) {
  ensureBuilt();
  const version = schemaVersion();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  try {
    const r = await admin.query(`select shobj_description(oid, 'pg_database') as v from pg_database where datname = $1`, [TEMPLATE_DB]);
    if (r.rowCount && r.rows[0].v !== version) {
      process.stderr.write(`[test setup] schema changed: rebuilding ${TEMPLATE_DB}\n`);
      await admin.query(`drop database ${TEMPLATE_DB} with (force)`);
    }
  } finally {
    await admin.end();
  }
  await provision(dbUrl(TEMPLATE_DB), (m) => process.stderr.write(`[test setup] ${m}\n`));
  const c = new pg.Client({ connectionString: adminUrl() });
  await c.connect();
  await c.query(`comment on database ${TEMPLATE_DB} is '${version}'`);
  await c.end();
  const { dir } = await ensureFixtureModels();
  provide('modelsDir', dir);
}
