import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startWorker, until, type Proc } from '../helpers/stack.js';

/**
 * ai.moderate(model, input) from SQL (issue 22), answered by a real worker with the tiny-moderation
 * fixture: who may call it (a role with no grants may not; one given ai.grant_usage may, and its
 * requests are its own), and what a caller sees when no worker serves the model.
 */
let db: TestDatabase;
let worker: Proc;
let su: pg.Client;
const tag = randomBytes(4).toString('hex');
const APP = `sy_modapp_${tag}`;
const NOBODY = `sy_modnobody_${tag}`;
const clients: pg.Client[] = [];

async function connectAs(role: string): Promise<pg.Client> {
  const u = new URL(db.url);
  u.username = role;
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  clients.push(c);
  return c;
}

const failure = (c: pg.Client, text: string) =>
  c.query(text).then(
    () => {
      throw new Error(`expected "${text}" to fail`);
    },
    (e: pg.DatabaseError) => e,
  );

beforeAll(async () => {
  db = await createTestDatabase();
  for (const args of [
    ['models', 'add', 'guard', '--task', 'moderation', '--source', 'tiny-moderation'],
    // Registered, served by no worker.
    ['models', 'add', 'orphan', '--task', 'moderation', '--source', 'tiny-moderation'],
  ]) {
    const r = await cli(args, { DATABASE_URL: db.url });
    expect(r.code, r.stderr).toBe(0);
  }
  worker = await startWorker(db.url, ['--models', 'guard']);
  await until('the worker to load guard', async () => worker.output().includes('moderation model guard ready'), 60_000);
  su = new pg.Client({ connectionString: db.url });
  await su.connect();
  for (const role of [APP, NOBODY]) await su.query(`create role ${role} login`);
  await su.query('select ai.grant_usage($1)', [APP]);
});

afterAll(async () => {
  for (const c of clients) await c.end().catch(() => {});
  await su?.end();
  await worker?.stop();
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  for (const role of [APP, NOBODY]) await admin.query(`drop role if exists ${role}`);
  await admin.end();
});

describe('ai.moderate', () => {
  it('is refused to a role with no grants', async () => {
    const c = await connectAs(NOBODY);
    expect((await failure(c, "select ai.moderate('guard', 'hello')")).message).toMatch(/permission denied for schema ai/);
  });

  it('answers a role given ai.grant_usage with one OpenAI result, its request recorded as that role', async () => {
    const c = await connectAs(APP);
    const { rows } = await c.query<{ r: { flagged: boolean; categories: Record<string, boolean>; category_scores: Record<string, number> } }>(
      `select ai.moderate('guard', 'a text from the application ${tag}') as r`,
    );
    const r = rows[0]!.r;
    expect(typeof r.flagged).toBe('boolean');
    expect(Object.keys(r.categories)).toHaveLength(13);
    for (const s of Object.values(r.category_scores)) expect(s).toBeGreaterThanOrEqual(0);
    const logged = await su.query(`select db_role, endpoint, status, output->'results'->0 as result from ai.requests where input->'input'->>0 = $1`, [`a text from the application ${tag}`]);
    expect(logged.rows).toEqual([{ db_role: APP, endpoint: 'moderations', status: 'completed', result: r }]);
    // Its own requests only: it cannot read the log directly.
    expect((await failure(c, 'select * from ai.requests')).message).toMatch(/permission denied/);
  });

  it("bounds a model's queue: past p_bound queued requests, enqueueing refuses (the gateway's 429)", async () => {
    const enqueue = async () =>
      (await su.query<{ q: boolean }>(`select ai.enqueue_moderation(gen_random_uuid(), 'orphan', 'orphan', '["x"]', '{}', null, null, 2) as q`)).rows[0]!.q;
    expect([await enqueue(), await enqueue(), await enqueue()]).toEqual([true, true, false]);
    await su.query("update ai.requests set status = 'cancelled' where model = 'orphan'");
  });

  it('cancels a request no worker takes, after ai.moderate_timeout, saying which worker to start', async () => {
    await su.query("set ai.moderate_timeout = '300ms'");
    try {
      const err = await failure(su, "select ai.moderate('orphan', 'anyone there?')");
      expect(err.code).toBe('57014');
      expect(err.hint).toMatch(/switchyard worker --models orphan/);
      const st = await su.query("select status from ai.requests where model = 'orphan' and input->'input'->>0 = 'anyone there?'");
      expect(st.rows).toEqual([{ status: 'cancelled' }]);
    } finally {
      await su.query('reset ai.moderate_timeout');
    }
  });
});
