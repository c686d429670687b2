import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * Restarting PostgreSQL under traffic. Needs the local Debian cluster and root (as on the
 * machines this project runs on); skipped elsewhere.
 */
const version = existsSync('/etc/postgresql') ? readdirSync('/etc/postgresql')[0] : undefined;
const canRestart = process.getuid?.() === 0 && !!version && existsSync('/usr/bin/pg_ctlcluster');
const pgctl = (action: string) => execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', version!, 'main', action, ...(action === 'stop' ? ['-m', 'fast'] : [])]);

let db: TestDatabase;
const procs: Proc[] = [];
let key: string;

beforeAll(async () => {
  if (!canRestart) return;
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'outage'], env)).stdout.trim();
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  if (canRestart) {
    try {
      pgctl('start');
    } catch {
      /* already running */
    }
  }
  await db?.drop();
});

it.skipIf(!canRestart)('gives 503s during a restart, recovers without restarting anything, and finishes every accepted request', async () => {
  const [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  procs.push(serve, worker);
  const send = (i: number) =>
    fetch(`${serve.url}/v1/${i % 2 ? 'chat/completions' : 'embeddings'}`, {
      method: 'POST',
      signal: AbortSignal.timeout(60_000),
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify(
        i % 2
          ? { model: 'tiny', messages: [{ role: 'user', content: `request ${i}` }], max_tokens: 60 }
          : { model: 'minilm', input: `request ${i}` },
      ),
    })
      .then(async (r) => ({ i, status: r.status, body: await r.text() }))
      .catch((err) => ({ i, status: -1, body: String(err) }));

  const results: Promise<{ i: number; status: number; body: string }>[] = [];
  let i = 0;
  const traffic = setInterval(() => results.push(send(i++)), 40);
  await new Promise((r) => setTimeout(r, 1500));
  pgctl('stop');
  await new Promise((r) => setTimeout(r, 1500));
  pgctl('start');
  await new Promise((r) => setTimeout(r, 8000));
  clearInterval(traffic);
  const done = await Promise.all(results);

  const statuses = new Set(done.map((d) => d.status));
  const hung = done.filter((d) => d.status === -1);
  if (hung.length) {
    console.log(JSON.stringify(await query(db.url, `select id, endpoint, status, worker, attempts, queued_at, started_at, finished_at, input->'input'->>0 as input from ai.requests where status <> 'completed' or input->'input'->>0 like 'request _'`), null, 1));
    console.log(serve.output().split('\n').filter((l) => !l.startsWith('{')).join('\n'));
    console.log(worker.output());
  }
  for (const d of done) {
    expect([200, 503], `request ${d.i}: ${d.status} ${d.body.slice(0, 200)}`).toContain(d.status);
    if (d.status === 503) expect(JSON.parse(d.body).error.type).toBeTypeOf('string');
  }
  expect(statuses.has(503)).toBe(true);
  // The last second of traffic, well after the restart, all succeeded.
  const tail = done.filter((d) => d.i >= i - 25);
  expect(tail.every((d) => d.status === 200), JSON.stringify(tail.map((d) => d.status))).toBe(true);
  expect(serve.exited()).toBe(false);
  expect(worker.exited()).toBe(false);
  // Every accepted request reaches a final status.
  let open: { n: number }[] = [];
  for (let k = 0; k < 120; k++) {
    open = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where status in ('queued', 'running')`);
    if (open[0]!.n === 0) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  expect(open[0]!.n).toBe(0);
}, 180_000);
