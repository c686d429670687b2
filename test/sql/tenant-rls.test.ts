import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';

/**
 * Tenant isolation by row-level security (migrations/0042_tenant_rls.sql, ai.grant_team): a
 * team's role reads its own team's requests, usage, responses and key names, and nothing of
 * another team's; a role that was granted nothing reads nothing; an admin usage role reads all.
 */
let db: TestDatabase;
let su: pg.Client;
const tag = randomBytes(4).toString('hex');
const A = `sy_team_a_${tag}`;
const B = `sy_team_b_${tag}`;
const MEMBER = `sy_member_${tag}`;
const NOBODY = `sy_nobody_${tag}`;
const ADMIN = `sy_admin_${tag}`;
const ROLES = [MEMBER, A, B, NOBODY, ADMIN];
const clients: pg.Client[] = [];

async function as(role: string): Promise<pg.Client> {
  const u = new URL(db.url);
  u.username = role;
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  clients.push(c);
  return c;
}

const teams: Record<string, string> = {};
const requests: Record<string, string[]> = { a: [], b: [], none: [] };
const embeddings: Record<string, string> = {};

beforeAll(async () => {
  db = await createTestDatabase();
  su = new pg.Client({ connectionString: db.url });
  await su.connect();
  for (const t of ['a', 'b']) teams[t] = (await su.query(`insert into ai.teams (name) values ($1) returning id`, [`team ${t}`])).rows[0].id;
  const keys: Record<string, string> = {};
  for (const t of ['a', 'b', 'none']) {
    keys[t] = (await su.query(`insert into ai.api_keys (name, prefix, key_hash, team_id) values ($1, 'sy-x', $2, $3) returning id`,
      [`key ${t}`, randomBytes(32), teams[t] ?? null])).rows[0].id;
    // Through the gateway's own enqueue, which records the key's team on the request.
    for (let i = 0; i < 3; i++) {
      const id = randomUUID();
      await su.query(`select ai.enqueue_request($1, 'chat.completions', 'm', 'm', '{}', '{}', false, $2, 3, null, 100, 10, '1 minute')`, [id, keys[t]]);
      await su.query(`insert into ai.responses (id, key_id, model, request, input_items) values ($1, $2, 'm', '{}', '[]')`, [id, keys[t]]);
      requests[t]!.push(id);
    }
    // And an embedding request, through the embedding queue's own enqueue.
    const e = randomUUID();
    await su.query(`select ai.enqueue_embeddings(array[$1::uuid], 'e', array['e'], '[["x"]]', array['{}'::jsonb], array[$2::uuid], 5, null, 100)`, [e, keys[t]]);
    embeddings[t] = e;
  }
  await su.query(`update ai.requests set status = 'completed', usage = '{"prompt_tokens": 2, "completion_tokens": 3}'`);
  for (const role of [A, B, NOBODY, ADMIN]) await su.query(`create role ${role} login`);
  await su.query(`create role ${MEMBER} login in role ${A}`);
  await su.query(`select ai.grant_team($1, 'team a'), ai.grant_team($2, $3)`, [A, B, teams.b]);
  await su.query(`select ai.grant_usage($1, true)`, [ADMIN]);
});

afterAll(async () => {
  for (const c of clients) await c.end().catch(() => {});
  await su?.end();
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  for (const role of ROLES) await admin.query(`drop role if exists ${role}`);
  await admin.end();
});

const ids = async (c: pg.Client, table: string) => (await c.query(`select id::text from ai.${table} order by 1`)).rows.map((r) => r.id as string).sort();

it("a team role sees only its team's requests, responses, usage and key names", async () => {
  for (const [role, t] of [[A, 'a'], [B, 'b'], [MEMBER, 'a']] as const) {
    const c = await as(role);
    expect(await ids(c, 'requests'), role).toEqual([...requests[t]!, embeddings[t]!].sort());
    expect(await ids(c, 'responses'), role).toEqual([...requests[t]!].sort());
    const usage = (await c.query(`select key_name, endpoint, requests::int, completion_tokens::int from ai.usage_daily order by endpoint`)).rows;
    expect(usage).toEqual([
      { key_name: `key ${t}`, endpoint: 'chat.completions', requests: 3, completion_tokens: 9 },
      { key_name: `key ${t}`, endpoint: 'embeddings', requests: 1, completion_tokens: 3 },
    ]);
    expect((await c.query(`select name from ai.api_keys`)).rows).toEqual([{ name: `key ${t}` }]);
    // Not what could be a key, not the stream events, not other tables.
    await expect(c.query(`select key_hash from ai.api_keys`)).rejects.toThrow(/permission denied/);
    // Every column of the log but notify_key, the secret that seals a request's events in its
    // notifications (src/engine/notice.ts): a teammate could otherwise forge or read them.
    await expect(c.query(`select notify_key from ai.requests`)).rejects.toThrow(/permission denied/);
    expect((await c.query(`select id, model, status, usage, listener, team_id from ai.requests`)).rows.length).toBeGreaterThan(0);
    await expect(c.query(`select count(*) from ai.request_events`)).rejects.toThrow(/permission denied/);
    await expect(c.query(`select count(*) from ai.spend`)).rejects.toThrow(/permission denied/);
    // Reading is all: the log cannot be changed.
    await expect(c.query(`update ai.requests set status = 'failed'`)).rejects.toThrow(/permission denied/);
  }
});

it('a role granted nothing reads nothing; an admin usage role reads every team', async () => {
  const nobody = await as(NOBODY);
  await expect(nobody.query(`select count(*) from ai.requests`)).rejects.toThrow(/permission denied/);
  const admin = await as(ADMIN);
  expect((await ids(admin, 'requests')).length).toBe(12);
  await expect(admin.query(`select notify_key from ai.requests`)).rejects.toThrow(/permission denied/);
  expect((await admin.query(`select count(*)::int as n from ai.usage_daily`)).rows[0].n).toBe(6);
});

it('revoking a team role ends its access; re-granting moves it to another team', async () => {
  await su.query(`select ai.grant_team($1, 'team b')`, [A]);
  const c = await as(A);
  expect(await ids(c, 'requests')).toEqual([...requests.b!, embeddings.b!].sort());
  await su.query(`select ai.revoke_team($1)`, [A]);
  await expect(c.query(`select count(*) from ai.requests`)).rejects.toThrow(/permission denied/);
  await expect(su.query(`select ai.grant_team($1, 'no such team')`, [A])).rejects.toThrow(/no team/);
});
