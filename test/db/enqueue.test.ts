import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { openDatabase, type Database } from '../../src/db/pool.js';
import { enqueueEmbedding, enqueueRequest } from '../../src/db/requests-repo.js';

/** Serve's enqueue is one statement that also checks the queue bound: a full queue writes nothing. */
let tdb: TestDatabase;
let database: Database;

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = openDatabase(tdb.url, { max: 2, applicationName: 'enqueue-test' });
});

afterAll(async () => {
  await database?.close();
  await tdb?.drop();
});

const count = async (text: string) => Number((await database.pool.query(text)).rows[0].n);

it('queues chat requests up to the bound, then refuses without a row or a job', async () => {
  const chat = (id: string) =>
    enqueueRequest(database.db, {
      id, endpoint: 'chat.completions', model: 'm', requestedModel: 'm', input: { messages: [] }, params: {},
      stream: false, keyId: null, task: 'chat:m', maxAttempts: 3, listener: null, queueBound: 2,
    });
  expect(await chat(randomUUID())).toBe(true);
  expect(await chat(randomUUID())).toBe(true);
  const refused = randomUUID();
  expect(await chat(refused)).toBe(false);
  expect(await count(`select count(*) as n from ai.requests where id = '${refused}'`)).toBe(0);
  expect(await count(`select count(*) as n from graphile_worker.jobs`)).toBe(2);
});

it('queues embedding requests up to the bound, per model', async () => {
  const embed = (model: string) =>
    enqueueEmbedding(database.db, { id: randomUUID(), model, requestedModel: model, inputs: ['x'], meta: {}, keyId: null, maxAttempts: 5, listener: null, queueBound: 1 });
  expect(await embed('e1')).toBe(true);
  expect(await embed('e1')).toBe(false);
  expect(await embed('e2')).toBe(true);
  expect(await count(`select count(*) as n from ai.requests where endpoint = 'embeddings'`)).toBe(2);
});
