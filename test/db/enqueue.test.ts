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

it('queues chat requests up to the bound, announcing each to the workers, then refuses without a row or a notification', async () => {
  const listener = await database.pool.connect();
  const heard: string[] = [];
  listener.on('notification', (n) => heard.push(`${n.channel}:${n.payload}`));
  await listener.query('listen ai_chat');
  const ids: string[] = [];
  const chat = (id: string) =>
    enqueueRequest(database.db, {
      id, endpoint: 'chat.completions', model: 'm', requestedModel: 'm', input: { messages: [] }, params: {},
      stream: false, keyId: null, maxAttempts: 3, listener: null, queueBound: 2, reservedTokens: 10, rateWindowSeconds: 60,
    }).then((r) => r.queued);
  for (let i = 0; i < 2; i++) {
    ids.push(randomUUID());
    expect(await chat(ids[i]!)).toBe(true);
  }
  const refused = randomUUID();
  expect(await chat(refused)).toBe(false);
  expect(await count(`select count(*) as n from ai.requests where id = '${refused}'`)).toBe(0);
  expect(await count(`select count(*) as n from ai.requests where max_attempts = 3 and status = 'queued'`)).toBe(2);
  // No graphile-worker job: workers claim the rows themselves (ai.claim_chat).
  expect(await count(`select count(*) as n from graphile_worker.jobs`)).toBe(0);
  await new Promise((r) => setTimeout(r, 100));
  listener.release(true);
  // `<model> <id>`: a worker whose claim already took the request skips a claim of its own.
  expect(heard).toEqual(ids.map((id) => `ai_chat:m ${id}`));
});

it('queues embedding requests up to the bound, per model', async () => {
  const embed = (model: string) =>
    enqueueEmbedding(database.db, { id: randomUUID(), model, requestedModel: model, inputs: ['x'], meta: {}, keyId: null, maxAttempts: 5, listener: null, queueBound: 1 });
  expect(await embed('e1')).toBe(true);
  expect(await embed('e1')).toBe(false);
  expect(await embed('e2')).toBe(true);
  expect(await count(`select count(*) as n from ai.requests where endpoint = 'embeddings'`)).toBe(2);
});
