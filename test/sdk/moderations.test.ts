import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { NotFoundError, OpenSourceAI } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startWorker, until, type Proc } from '../helpers/stack.js';

/**
 * `client.moderations.create` over DATABASE_URL (no serve): the same serving code as
 * POST /v1/moderations, answered by a worker, and equal to ai.moderate for the same text.
 */
let db: TestDatabase;
let worker: Proc;
let client: OpenSourceAI;

beforeAll(async () => {
  db = await createTestDatabase();
  const r = await cli(['models', 'add', 'guard', '--task', 'moderation', '--source', 'tiny-moderation'], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  worker = await startWorker(db.url);
  await until('the worker to load guard', async () => worker.output().includes('moderation model guard ready'), 60_000);
  client = new OpenSourceAI(db.url);
});

afterAll(async () => {
  await client?.close();
  await worker?.stop();
  await db?.drop();
});

it('moderates a list, each result equal to ai.moderate of its text', async () => {
  const input = ['the first comment', 'the second comment'];
  const res = await client.moderations.create({ model: 'guard', input });
  expect(res.id).toMatch(/^modr-/);
  expect(res.model).toBe('guard');
  const sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  try {
    for (let i = 0; i < input.length; i++) {
      const { rows } = await sql.query('select ai.moderate($1, $2) as r', ['guard', input[i]]);
      expect(res.results[i]).toEqual(rows[0].r);
    }
  } finally {
    await sql.end();
  }
});

it('refuses an unknown model as the HTTP API does', async () => {
  await expect(client.moderations.create({ model: 'nope', input: 'x' })).rejects.toBeInstanceOf(NotFoundError);
});
