import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startWorker, type Proc, until } from '../helpers/stack.js';

/**
 * ai.submit_chat: work queued in the caller's transaction, its result written into the caller's
 * row by a real worker in the transaction that completes the request. Workers take one silent
 * for 2 s as dead (SWITCHYARD_WORKER_TIMEOUT), for the kill -9 case.
 */
let db: TestDatabase;
const procs: Proc[] = [];
let sql: pg.Client;
const N = 500;

const msg = (text: string) => JSON.stringify([{ role: 'user', content: text }]);

/** As `until`, with these tests' longer deadline. */
const waitFor = <T>(what: string, probe: () => Promise<T | null | undefined | false>) => until(what, probe, 90_000, 100);

beforeAll(async () => {
  process.env.SWITCHYARD_WORKER_TIMEOUT = '2';
  db = await createTestDatabase();
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url })).code).toBe(0);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  await sql.query(`
    create role submit_app; create role submit_nobody;
    select ai.grant_usage('submit_app');
    create table tickets (id integer primary key, body text not null, reply text, completion jsonb, label text);
    -- Every write of a reply, as the trigger sees it (it runs as the writing role).
    create table reply_log (ticket integer, by_role name default current_user);
    create function log_reply() returns trigger language plpgsql as $$
    begin
      if new.reply is distinct from old.reply or new.completion is distinct from old.completion then
        insert into reply_log (ticket) values (new.id);
      end if;
      return new;
    end $$;
    create trigger tickets_log after update on tickets for each row execute function log_reply();
    grant select, insert on tickets, reply_log to submit_app;
    grant update (reply, completion) on tickets to submit_app;
    insert into tickets (id, body) select i, 'ticket number ' || i from generate_series(1, ${N}) i;
  `);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await sql?.query('drop owned by submit_app; drop role if exists submit_app; drop owned by submit_nobody; drop role if exists submit_nobody').catch(() => {});
  await sql?.end();
  await db?.drop();
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
});

const submitAll = `select count(ai.submit_chat('tiny', jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)),
                                  '{"max_tokens": 2, "temperature": 0}', 'tickets', 'reply', 'id', id::text)) as n from tickets`;

/**
 * Requests running, once a frozen worker's statements have all ended: what it sent just before it
 * froze (a finish_request that ends requests, a claim that starts some) still runs in its backends,
 * and may reach them a moment after a look, so the count is taken when no other backend of the
 * database is active and two looks 50 ms apart agree (-1 if that does not happen within 5 s).
 * A count read at once could see 'running' before such a statement ended every request the
 * worker held, and the kill then interrupted nothing: CI saw no request retried (stop 30).
 */
async function settledRunning(): Promise<number> {
  let last = -1;
  for (let i = 0; i < 100; i++) {
    const active = (await sql.query(`select count(*)::int as n from pg_stat_activity
                                      where datname = current_database() and pid <> pg_backend_pid() and state = 'active'`)).rows[0].n;
    const n = (await sql.query(`select count(*)::int as n from ai.requests where status = 'running'`)).rows[0].n as number;
    if (active === 0 && n === last) return n;
    last = active === 0 ? n : -1;
    await new Promise((r) => setTimeout(r, 50));
  }
  return -1;
}

describe('ai.submit_chat', () => {
  it('rolled back: no request exists and nothing is written, even with a worker running', async () => {
    const w = await startWorker(db.url, ['--models', 'tiny']);
    procs.push(w);
    await sql.query('begin');
    await sql.query('set local role submit_app');
    expect((await sql.query(submitAll)).rows[0].n).toBe(String(N));
    // Inside the transaction the requests exist (and nobody else sees them).
    expect((await query<{ n: string }>(db.url, `select count(*) as n from ai.requests`))[0]!.n).toBe('0');
    await sql.query('rollback');
    await new Promise((r) => setTimeout(r, 1500));
    expect((await sql.query(`select count(*)::int as n from ai.requests`)).rows[0].n).toBe(0);
    expect((await sql.query(`select count(*)::int as n from tickets where reply is not null`)).rows[0].n).toBe(0);
    await w.stop();
  });

  it('committed: every target row is written exactly once, across a worker killed with kill -9 midway', async () => {
    const a = await startWorker(db.url, ['--models', 'tiny']);
    procs.push(a);
    await sql.query('begin');
    await sql.query('set local role submit_app');
    await sql.query(submitAll);
    await sql.query('commit');
    const started = Date.now();
    // Midway: some written, not all.
    await waitFor('a tenth of the replies', async () => (await sql.query(`select count(*)::int as n from tickets where reply is not null`)).rows[0].n >= N / 10);
    // And while it runs some: the replies of a batch land together, and the moment after they do
    // (before the next claim) the worker holds nothing that a kill could interrupt. Seen running
    // and then killed, a 2-token request could finish in between: the worker is frozen (SIGSTOP)
    // while it is looked at, and let go again until one is running while it is frozen.
    await waitFor('a request running while the worker is stopped', async () => {
      a.child.kill('SIGSTOP');
      if ((await settledRunning()) > 0) return true;
      a.child.kill('SIGCONT');
      await new Promise((r) => setTimeout(r, 10));
      return false;
    });
    a.child.kill('SIGKILL');
    const killedAt = (await sql.query(`select count(*)::int as n from tickets where reply is not null`)).rows[0].n;
    expect(killedAt).toBeLessThan(N);
    const b = await startWorker(db.url, ['--models', 'tiny']);
    procs.push(b);
    await waitFor('every request to end', async () => (await sql.query(`select count(*)::int as n from ai.requests where status in ('queued', 'running')`)).rows[0].n === 0);
    const statuses = (await sql.query(`select status, count(*)::int as n from ai.requests group by status`)).rows;
    expect(statuses).toEqual([{ status: 'completed', n: N }]);
    expect((await sql.query(`select count(*)::int as n from tickets where reply is null`)).rows[0].n).toBe(0);
    // Exactly once, and as the submitting role.
    const log = (await sql.query(`select ticket, count(*)::int as n, min(by_role) as by_role from reply_log group by ticket`)).rows;
    expect(log).toHaveLength(N);
    expect(log.every((r) => r.n === 1 && r.by_role === 'submit_app')).toBe(true);
    // The reply is the request's text: the completion's content.
    const mismatch = await sql.query(`select count(*)::int as n from tickets t join ai.requests r on r.input->'messages'->0->>'content' = t.body
                                      where t.reply is distinct from r.output#>>'{completion,choices,0,message,content}'`);
    expect(mismatch.rows[0].n).toBe(0);
    expect((await sql.query(`select count(*)::int as n from ai.requests where attempts > 1`)).rows[0].n).toBeGreaterThan(0);
    expect(Date.now() - started).toBeLessThan(90_000);
    await b.stop();
  });

  it('a jsonb target gets the whole chat.completion; status and errors are on the request', async () => {
    const w = await startWorker(db.url, ['--models', 'tiny']);
    procs.push(w);
    await sql.query('set role submit_app');
    try {
      const ok = (await sql.query(`select ai.submit_chat('tiny', $1::jsonb, '{"max_tokens": 3}', 'tickets'::regclass, 'completion', 'id', '7') as id`, [msg('hi')])).rows[0].id;
      const bad = (await sql.query(`select ai.submit_chat('tiny', $1::jsonb, '{"max_tokens": 0}', 'tickets', 'completion', 'id', '8') as id`, [msg('hi')])).rows[0].id;
      const gone = (await sql.query(`select ai.submit_chat('tiny', $1::jsonb, '{"max_tokens": 2}', 'tickets', 'reply', 'id', '100000') as id`, [msg('hi')])).rows[0].id;
      const rows = await waitFor('three requests to end', async () => {
        const r = (await sql.query(`select id, status, error from ai.my_requests where id = any($1::uuid[]) and status not in ('queued', 'running')`, [[ok, bad, gone]])).rows;
        return r.length === 3 && r;
      });
      const by = new Map(rows.map((r) => [r.id, r]));
      expect(by.get(ok).status).toBe('completed');
      expect(by.get(bad)).toMatchObject({ status: 'failed', error: { type: 'invalid_request_error', param: 'max_tokens' } });
      expect(by.get(gone)).toMatchObject({ status: 'failed', error: { code: 'target_row_not_found' } });
      const t = (await sql.query(`select id, completion from tickets where id in (7, 8) order by id`)).rows;
      expect(t[0].completion).toMatchObject({ object: 'chat.completion', model: 'tiny', usage: { completion_tokens: 3 } });
      expect(t[0].completion.id).toBe(`chatcmpl-${ok.replaceAll('-', '')}`);
      expect(t[1].completion).toBeNull();
    } finally {
      await sql.query('reset role');
      await w.stop();
    }
  });

  it('refuses at submit a target the caller may not write, and a role without usage', async () => {
    await sql.query('set role submit_app');
    try {
      // body: SELECT only. label: no UPDATE grant.
      for (const [col, code] of [['body', '42501'], ['label', '42501']] as const) {
        const err = await sql.query(`select ai.submit_chat('tiny', $1::jsonb, '{}', 'tickets', $2, 'id', '1')`, [msg('x'), col]).then(() => null, (e: pg.DatabaseError) => e);
        expect(err?.code, col).toBe(code);
      }
      const other = await sql.query(`select ai.submit_chat('tiny', $1::jsonb, '{}', 'ai.models', 'name', 'name', 'tiny')`, [msg('x')]).then(() => null, (e: pg.DatabaseError) => e);
      expect(other?.code).toBe('42501');
      const type = await sql.query(`select ai.submit_chat('tiny', $1::jsonb, '{}', 'tickets', 'id', 'id', '1')`, [msg('x')]).then(() => null, (e: pg.DatabaseError) => e);
      expect(type?.code).toBe('42804');
    } finally {
      await sql.query('reset role');
    }
    await sql.query('set role submit_nobody');
    try {
      const err = await sql.query(`select ai.submit_chat('tiny', $1::jsonb)`, [msg('x')]).then(() => null, (e: pg.DatabaseError) => e);
      expect(err?.code).toBe('42501');
    } finally {
      await sql.query('reset role');
    }
    expect((await sql.query(`select count(*)::int as n from ai.requests where input->'messages'->0->>'content' = 'x'`)).rows[0].n).toBe(0);
  });
});
