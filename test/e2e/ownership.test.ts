import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc, until } from '../helpers/stack.js';

/**
 * A worker that is paused (SIGSTOP: as a long GC pause, a frozen VM or a network partition
 * looks to the others) for longer than SWITCHYARD_WORKER_TIMEOUT is reaped, and another worker
 * runs its request again. When it wakes up it must not write to that request any more, and it
 * goes on serving under a new id.
 */
let db: TestDatabase;
const procs: Proc[] = [];
const paused = new Set<Proc>();
let key: string;

beforeAll(async () => {
  process.env.SWITCHYARD_WORKER_TIMEOUT = '2';
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'own'], env)).stdout.trim();
});

afterAll(async () => {
  // A stopped process does not act on SIGTERM: wake it first.
  for (const p of paused) p.child.kill('SIGCONT');
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
});

type Event = { type: string; attempt?: number; choices?: { text: string }[] };

it('a reaped worker writes nothing more to the request another worker took over, then serves under a new id', async () => {
  const serve = await startServe(db.url);
  const a = await startWorker(db.url);
  procs.push(serve, a);
  const client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
  const pending = client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'a long story please' }], max_tokens: 1500, temperature: 0 });

  // A is generating: pause it mid-generation. (The request does not stream: its events are
  // written with its outcome, so the log shows only B's restart, start, text and done.)
  const { id } = await until('worker A to start', async () =>
    (await query<{ id: string }>(db.url, `select id from ai.requests where worker = $1 and status = 'running' limit 1`, [a.workerId]))[0],
  );
  await new Promise((r) => setTimeout(r, 300));
  a.child.kill('SIGSTOP');
  paused.add(a);
  const b = await startWorker(db.url);
  procs.push(b);
  // Reaped (its row gone), and B runs the request again.
  await until('worker B to take the request over', async () => {
    const [r] = await query<{ worker: string; attempts: number }>(db.url, 'select worker, attempts from ai.requests where id = $1', [id]);
    return r?.worker === b.workerId && r.attempts === 2;
  });
  await new Promise((r) => setTimeout(r, 300));
  expect(await query(db.url, 'select 1 from ai.workers where id = $1', [a.workerId])).toEqual([]);
  // A wakes up while B is still generating, with its own generation of the request in flight.
  a.child.kill('SIGCONT');
  paused.delete(a);

  const result = await pending;
  expect(result.choices[0]!.finish_reason).toBe('length');
  expect(result.usage!.completion_tokens).toBe(1500);
  const [row] = await query<{ status: string; worker: string; attempts: number; output: { choices: { text: string }[] } }>(
    db.url,
    'select status, worker, attempts, output from ai.requests where id = $1',
    [id],
  );
  expect(row).toMatchObject({ status: 'completed', worker: b.workerId, attempts: 2 });
  expect(result.choices[0]!.message.content).toBe(row!.output.choices[0]!.text);

  // A noticed, and gave up what it ran.
  await until('worker A to notice it was reaped', async () => /was taken for dead/.test(a.output()));
  // Give a stale writer every chance to write, then read the log: attempt 1's events, one
  // restart, then B's events alone: their text is exactly the stored output, and one `done`.
  await new Promise((r) => setTimeout(r, 1500));
  const events = (await query<{ seq: number; data: Event }>(db.url, 'select seq, data from ai.request_events where request_id = $1 order by seq', [id])).map((e) => e.data);
  const restart = events.findIndex((e) => e.type === 'restart');
  expect(restart).toBeGreaterThanOrEqual(0);
  expect(events.filter((e) => e.type === 'restart')).toEqual([{ type: 'restart', attempt: 2 }]);
  const after = events.slice(restart + 1);
  expect(after.filter((e) => e.type === 'done')).toHaveLength(1);
  expect(after.at(-1)!.type).toBe('done');
  expect(after.map((e) => e.choices?.[0]?.text ?? '').join('')).toBe(row!.output.choices[0]!.text);
  expect(events.slice(0, restart).every((e) => e.type === 'start' || e.type === 'delta')).toBe(true);

  // A is alive, registered again under a new id, and serves once B is gone.
  expect(a.exited()).toBe(false);
  const [again] = await until('worker A to register again', async () => {
    const rows = await query<{ id: string }>(db.url, 'select id from ai.workers where pid = $1', [a.child.pid]);
    return rows.length ? rows : undefined;
  });
  expect(again!.id).not.toBe(a.workerId);
  await b.stop();
  const next = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
  expect(next.choices[0]!.finish_reason).toBe('length');
  const [nextRow] = await query<{ worker: string }>(db.url, 'select worker from ai.requests order by queued_at desc limit 1');
  expect(nextRow!.worker).toBe(again!.id);
  await a.stop();
  expect([a.child.exitCode, a.child.signalCode]).toEqual([0, null]);
}, 150_000);
