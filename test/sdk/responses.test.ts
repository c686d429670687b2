import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NotFoundError, OpenSourceAI, type ResponseStreamEvent } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The Responses API through the Postgres-direct SDK (only Postgres and a worker run), and the
 * stored responses in SQL (ai.my_responses), as each kind of role sees them.
 */
let db: TestDatabase;
let worker: Proc;
let client: OpenSourceAI;
const app = `sy_resp_app_${randomBytes(4).toString('hex')}`;
const stranger = `sy_resp_none_${randomBytes(4).toString('hex')}`;

beforeAll(async () => {
  db = await createTestDatabase();
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url })).code).toBe(0);
  worker = await startWorker(db.url);
  client = new OpenSourceAI(db.url);
  await query(db.url, `create role ${app}; create role ${stranger}; select ai.grant_usage('${app}')`);
});

afterAll(async () => {
  await client?.close();
  await worker?.stop();
  await db?.drop();
  // Roles are the server's, not the database's: gone with their grants once the database is.
  if (db) await query(db.url.replace(/\/[^/]+$/, '/postgres'), `drop role if exists ${app}; drop role if exists ${stranger}`).catch(() => {});
});

describe('SDK responses', () => {
  it('create, stream, retrieve, input items, previous_response_id, delete', async () => {
    const r = await client.responses.create({ model: 'tiny', input: 'Hello there', max_output_tokens: 8, temperature: 0 });
    expect(r).toMatchObject({ object: 'response', status: 'incomplete', model: 'tiny', store: true });
    expect(r.output_text.length).toBeGreaterThan(0);
    expect(await client.responses.retrieve(r.id)).toEqual(r);

    const stream = await client.responses.create({ model: 'tiny', input: 'Hello there', max_output_tokens: 8, temperature: 0, stream: true });
    const events: ResponseStreamEvent[] = [];
    for await (const e of stream) events.push(e);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    expect(events[0]!.type).toBe('response.created');
    expect(events.at(-1)!.type).toBe('response.incomplete');
    expect(events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('')).toBe(r.output_text);

    const next = await client.responses.create({ model: 'tiny', input: 'And then?', previous_response_id: r.id, max_output_tokens: 4 });
    expect(next.previous_response_id).toBe(r.id);
    const items = await client.responses.inputItems.list(next.id);
    expect(items.data).toHaveLength(1);
    expect(items.data[0]).toMatchObject({ type: 'message', role: 'user', content: [{ type: 'input_text', text: 'And then?' }] });

    expect(await client.responses.delete(next.id)).toEqual({ id: next.id, object: 'response', deleted: true });
    await expect(client.responses.retrieve(next.id)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('background: cancelled mid-generation; a stream resumed with starting_after', async () => {
    const long = await client.responses.create({ model: 'tiny', input: 'A long story', max_output_tokens: 1500, background: true });
    expect(long.status).toBe('queued');
    for (let i = 0; (await client.responses.retrieve(long.id)).output_text.length === 0; i++) {
      if (i > 600) throw new Error('no text after 30 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect((await client.responses.cancel(long.id)).status).toBe('cancelled');

    const bg = await client.responses.create({ model: 'tiny', input: 'Count', max_output_tokens: 20, background: true, stream: true, temperature: 0 });
    const head: ResponseStreamEvent[] = [];
    for await (const e of bg) {
      head.push(e);
      if (head.length === 3) break;
    }
    const tail: ResponseStreamEvent[] = [];
    for await (const e of await client.responses.retrieve(bg.responseId, { stream: true, starting_after: 2 })) tail.push(e);
    expect(tail[0]!.sequence_number).toBe(3);
    const all: ResponseStreamEvent[] = [];
    for await (const e of await client.responses.retrieve(bg.responseId, { stream: true })) all.push(e);
    expect([...head, ...tail]).toEqual(all);
  });
});

describe('stored responses in SQL', () => {
  it('ai.my_responses shows a role the responses it made, no one else’s; a role without grants reads nothing', async () => {
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      // The SDK above ran as this connection's role: its responses are this role's.
      const mine = await c.query(`select id, status, model, input_items, output, usage from ai.my_responses order by created_at`);
      expect(mine.rows.length).toBeGreaterThanOrEqual(3);
      for (const row of mine.rows) expect(row.id).toMatch(/^resp_[0-9a-f]{32}$/);
      expect(mine.rows.map((r) => r.status)).toContain('cancelled');
      await c.query(`set role ${app}`);
      expect((await c.query(`select count(*)::int as n from ai.my_responses`)).rows[0].n).toBe(0);
      await expect(c.query(`select count(*) from ai.responses`)).rejects.toThrow(/permission denied/);
      await c.query('reset role');
      await c.query(`set role ${stranger}`);
      await expect(c.query(`select count(*) from ai.my_responses`)).rejects.toThrow(/permission denied/);
      await expect(c.query(`select ai.delete_response(gen_random_uuid(), null)`)).rejects.toThrow(/permission denied/);
    } finally {
      await c.end();
    }
  });
});
