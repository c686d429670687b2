/**
 * A standalone probe: the floor of the gateway's architecture on this machine, with none of the
 * gateway in it. A client (fetch, as the bench's) posts to an HTTP server (node:http, no
 * framework) in one process; that server queues the request in one statement (insert and
 * notify, committed asynchronously); a worker process, woken by the notification, claims it in
 * one statement, hands it to a worker thread and back (where the model would run), and finishes
 * it in one statement that notifies the server's own channel; the server answers. That is the
 * least issue 13 asks of a request: one round trip in serve, a claim at pickup, one finish, a
 * channel per serve. No model, no auth, no validation, no request log, no events.
 *
 * Whatever this takes is overhead the gateway cannot get under with Postgres as the only
 * coordination point between separate serve and worker processes: it is the floor of the
 * `overhead` section's figure (gateway − in-process), measured the same way (one request after
 * another, 20 ms between them), and back to back for comparison, rounds alternating.
 *
 *   npx tsx bench/floor.ts [--rounds 4] [--n 300]
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import pg from 'pg';
import { benchDatabase, pct, sleep } from './lib.js';

const [role, url] = process.argv.slice(2);

async function connect(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query('set synchronous_commit = off');
  return c;
}

if (role === 'worker') {
  const listen = await connect();
  const db = await connect();
  // Where the model would run: a thread the request goes to and comes back from.
  const thread = new Worker(`require('node:worker_threads').parentPort.on('message', (m) => require('node:worker_threads').parentPort.postMessage(m))`, { eval: true });
  const back = new Map<string, () => void>();
  thread.on('message', (id: string) => back.get(id)?.());
  listen.on('notification', async (n) => {
    const claimed = await db.query(`update floor.requests set status = 'running', started_at = clock_timestamp() where id = $1 and status = 'queued' returning id::text, listener`, [n.payload]);
    const row = claimed.rows[0] as { id: string; listener: string } | undefined;
    if (!row) return;
    await new Promise<void>((resolve) => (back.set(row.id, resolve), thread.postMessage(row.id)));
    back.delete(row.id);
    await db.query(`with u as (update floor.requests set status = 'completed', output = '{"text": "x"}', finished_at = clock_timestamp() where id = $1 returning id) select pg_notify($2, id::text) from u`, [row.id, row.listener]);
  });
  await listen.query('listen floor_work');
  process.send!('ready');
} else if (role === 'serve') {
  const listen = await connect();
  const db = await connect();
  const channel = `floor_serve_${process.pid}`;
  const waiting = new Map<string, () => void>();
  const early = new Set<string>();
  listen.on('notification', (n) => {
    const done = waiting.get(n.payload!);
    if (done) done();
    else early.add(n.payload!);
  });
  await listen.query(`listen ${channel}`);
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', async () => {
      const body = Buffer.concat(chunks).toString();
      const { rows } = await db.query(`with i as (insert into floor.requests (input, listener) values ($1, $2) returning id) select id::text, pg_notify('floor_work', id::text) from i`, [body, channel]);
      const id = (rows[0] as { id: string }).id;
      if (!early.delete(id)) await new Promise<void>((resolve) => waiting.set(id, resolve));
      waiting.delete(id);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ id, choices: [{ message: { role: 'assistant', content: 'x' } }] }));
    });
  });
  server.listen(0, '127.0.0.1', () => process.send!((server.address() as { port: number }).port));
} else {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '4' }, n: { type: 'string', default: '300' } } });
  const db = await benchDatabase();
  const setup = new pg.Client({ connectionString: db.url });
  await setup.connect();
  await setup.query(`create schema floor; create table floor.requests (id bigint generated always as identity primary key, status text not null default 'queued',
    input text, output jsonb, listener text, queued_at timestamptz default now(), started_at timestamptz, finished_at timestamptz)`);
  await setup.end();
  const self = fileURLToPath(import.meta.url);
  const worker = fork(self, ['worker', db.url]);
  const serve = fork(self, ['serve', db.url]);
  try {
    await once(worker, 'message');
    const [port] = (await once(serve, 'message')) as [number];
    const body = JSON.stringify({ model: 'floor', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }], max_tokens: 1, temperature: 0 });
    const one = async () => {
      const t0 = performance.now();
      const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(10_000) });
      await res.json();
      return performance.now() - t0;
    };
    for (let i = 0; i < 50; i++) await one();
    const pooled: Record<string, number[]> = { 'after 20 ms idle (the overhead section)': [], 'back to back': [] };
    const n = Number(values.n);
    for (let r = 0; r < Number(values.rounds); r++) {
      const [mode, gap] = r % 2 === 0 ? (['after 20 ms idle (the overhead section)', 20] as const) : (['back to back', 0] as const);
      const xs: number[] = [];
      for (let i = 0; i < n; i++) {
        if (gap) await sleep(gap);
        xs.push(await one());
      }
      pooled[mode]!.push(...xs);
      console.log(`round ${r + 1}, ${mode}: p50 ${pct(xs, 50).toFixed(2)} ms, p90 ${pct(xs, 90).toFixed(2)} ms, p99 ${pct(xs, 99).toFixed(2)} ms`);
    }
    for (const [mode, xs] of Object.entries(pooled)) {
      if (xs.length) console.log(`all rounds, ${mode} (${xs.length} requests): p50 ${pct(xs, 50).toFixed(2)} ms, p99 ${pct(xs, 99).toFixed(2)} ms`);
    }
  } finally {
    worker.kill();
    serve.kill();
    await Promise.all([once(worker, 'exit'), once(serve, 'exit')]);
    await db.drop();
  }
}
