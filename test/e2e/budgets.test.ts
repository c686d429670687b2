import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, until, type Proc } from '../helpers/stack.js';

/**
 * Token budgets, exact under concurrency (sql/074_admission.sql): 200 requests race for a budget
 * that holds 50 reservations, on the real serve, with no worker yet (so every admitted request
 * keeps its reservation while the rest arrive); then a cancellation is refunded, and once a
 * worker has run the rest, what was spent is their actual usage, within the budget.
 */
let db: TestDatabase;
const procs: Proc[] = [];
let serve: Proc & { url: string };
let probeKey: string;
let key: string;

const body = { model: 'tiny', messages: [{ role: 'user', content: 'spend a little' }], max_tokens: 3 };
const post = (auth: string, signal?: AbortSignal) =>
  fetch(`${serve.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${auth}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
const spend = async (keyName: string) =>
  (await query<{ reserved: number; spent: number }>(db.url,
    `select s.reserved::int, s.spent::int from ai.spend s join ai.api_keys k on k.id = s.subject where k.name = $1`, [keyName]))[0]!;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  probeKey = (await cli(['keys', 'create', '--name', 'probe'], env)).stdout.trim();
  key = (await cli(['keys', 'create', '--name', 'budgeted'], env)).stdout.trim();
  await query(db.url, `update ai.api_keys set budget_tokens = 1000000000, budget_period = 'total' where name = 'probe'`);
  serve = await startServe(db.url);
  procs.push(serve);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
});

it('admits exactly the requests that fit, refunds a cancellation, and settles to actual usage', async () => {
  // What one such request reserves (prompt + max_tokens, as the gateway estimates it).
  const probe = new AbortController();
  const probing = post(probeKey, probe.signal).catch(() => null);
  const { tokens: r } = await until('the probe to be queued', async () =>
    (await query<{ tokens: number }>(db.url, `select (reservation->>'tokens')::int as tokens from ai.requests where reservation is not null`)).at(0));
  probe.abort();
  await probing;
  expect(r).toBeGreaterThan(body.max_tokens);
  const budget = 50 * r + r - 1; // 50 fit, a 51st does not
  await query(db.url, `update ai.api_keys set budget_tokens = $1, budget_period = 'total' where name = 'budgeted'`, [budget]);

  const aborts = Array.from({ length: 200 }, () => new AbortController());
  const pending = aborts.map((a, i) => post(key, a.signal).then(
    async (res) => ({ i, status: res.status, body: res.status === 429 ? await res.json() : await res.text(), headers: res.headers }),
    () => ({ i, status: 0, body: null, headers: null }),
  ));
  const refused: number[] = [];
  for (const p of pending) void p.then((x) => x.status === 429 && refused.push(x.i));
  await until('150 refusals', async () => refused.length === 150, 60_000);
  const queued = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests r join ai.api_keys k on k.id = r.key_id where k.name = 'budgeted'`);
  expect(queued[0]!.n).toBe(50);
  expect(await spend('budgeted')).toEqual({ reserved: 50 * r, spent: 0 });
  const one = await pending[refused[0]!]!;
  expect(one.body).toMatchObject({ error: { type: 'insufficient_quota', code: 'budget_exceeded', param: null } });
  expect(one.headers!.get('x-should-retry')).toBe('false');

  // A cancelled request's reservation goes back at once.
  const victim = aborts.findIndex((_, i) => !refused.includes(i));
  aborts[victim]!.abort();
  await until('the refund', async () => (await spend('budgeted')).reserved === 49 * r);
  // ... so exactly one more of two fits (the other is refused at once; the admitted one waits for a worker).
  const extra = [post(key), post(key)].map((p) => p.then(async (res) => (await res.text(), res.status)));
  let extraRefused = 0;
  for (const p of extra) void p.then((st) => st === 429 && extraRefused++);
  await until('one of the two to be refused', async () => extraRefused === 1);

  procs.push(await startWorker(db.url));
  const statuses = [...(await Promise.all(pending)).filter((_, i) => i !== victim).map((x) => x.status), ...(await Promise.all(extra))];
  expect(statuses.filter((st) => st === 200)).toHaveLength(50);
  expect(statuses.filter((st) => st === 429)).toHaveLength(151);
  await until('every admitted request to settle', async () => (await spend('budgeted')).reserved === 0, 60_000);
  const [used] = await query<{ tokens: number; n: number }>(db.url,
    `select sum((usage->>'prompt_tokens')::int + (usage->>'completion_tokens')::int)::int as tokens, count(*)::int as n
       from ai.requests r join ai.api_keys k on k.id = r.key_id where k.name = 'budgeted' and status = 'completed'`);
  const s = await spend('budgeted');
  expect(used!.n).toBe(50); // 49 + the one admitted in the refund's place
  expect(s.spent).toBe(used!.tokens);
  expect(s.spent).toBeLessThanOrEqual(budget);
}, 180_000);
