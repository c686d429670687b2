/**
 * What the streaming path adds per token: a 256-token completion through serve + worker. Each
 * delta event carries `at` (when the worker produced its oldest text) and its row's created_at
 * (when the flush that wrote it began: the wait for a flush, SWITCHYARD_FLUSH_MS at most); we
 * record when the matching SSE chunk reaches the HTTP client (flush → Postgres → serve's LISTEN
 * → the row read → SSE → client). Serve sends one chunk per delta event.
 *
 *   npx tsx bench/stream-latency.ts            (needs PostgreSQL as for the tests)
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { ensureFixtureModels } from '../fixtures/models/index.mjs';
import { provision } from '../src/db/provision.js';

const server = process.env.SWITCHYARD_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const dbName = `switchyard_bench_${randomBytes(4).toString('hex')}`;
const url = Object.assign(new URL(server), { pathname: `/${dbName}` }).toString();
const BIN = new URL('../bin/switchyard.mjs', import.meta.url).pathname;
const TOKENS = 256;
const RUNS = 5;

function run(args: string[], env: Record<string, string>, ready?: RegExp) {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env, DATABASE_URL: url } });
  let out = '';
  const done = new Promise<RegExpMatchArray | string>((resolve, reject) => {
    const on = (d: Buffer) => {
      out += d;
      const m = ready && out.match(ready);
      if (m) resolve(m);
    };
    child.stdout.on('data', on);
    child.stderr.on('data', on);
    child.on('exit', (code) => (ready ? reject(new Error(out)) : code === 0 ? resolve(out) : reject(new Error(out))));
  });
  return { child, done };
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

await provision(url);
const { dir } = await ensureFixtureModels();
await run(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], {}).done;
const key = String(await run(['keys', 'create', '--name', 'bench'], {}).done).trim().split('\n').pop()!;
const serve = run(['serve'], { PORT: '0' }, /listening on (http:\/\/\S+)/);
const worker = run(['worker'], { SWITCHYARD_MODELS_DIR: dir }, /ready in/);
const base = ((await serve.done) as RegExpMatchArray)[1]!;
await worker.done;

const db = new pg.Client({ connectionString: url });
await db.connect();

const flushWait: number[] = [];
const afterFlush: number[] = [];
const fullPath: number[] = [];
const tokensPerEvent: number[] = [];
for (let r = 0; r < RUNS + 1; r++) {
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: `run ${r}` }], max_tokens: TOKENS, temperature: 0, stream: true }),
  });
  const id = res.headers.get('x-request-id')!;
  const arrivals: number[] = [];
  const decoder = new TextDecoder();
  let buf = '';
  for await (const part of res.body!) {
    buf += decoder.decode(part as Uint8Array, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) !== -1) {
      // An event's data line, wherever it is among its fields (chat frames lead with `id:`).
      const line = buf.slice(0, i).split('\n').find((l) => l.startsWith('data: {'));
      buf = buf.slice(i + 2);
      if (line === undefined) continue;
      const chunk = JSON.parse(line.slice(6));
      if (chunk.choices?.[0]?.delta?.content) arrivals.push(Date.now());
    }
  }
  const events = (
    await db.query<{ at: string; flushed: number }>(
      `select data->>'at' as at, extract(epoch from created_at) * 1000 as flushed from ai.request_events
        where request_id = $1 and data->>'type' = 'delta' and exists (select from jsonb_array_elements(data->'choices') c where c->>'text' <> '')
        order by seq`,
      [id],
    )
  ).rows.map((e) => ({ at: Number(e.at), flushed: Number(e.flushed) }));
  if (r === 0) continue; // warm-up
  events.forEach((e, k) => {
    flushWait.push(Math.round(e.flushed - e.at));
    if (arrivals[k] === undefined) return;
    afterFlush.push(Math.round(arrivals[k]! - e.flushed));
    fullPath.push(arrivals[k]! - e.at);
  });
  tokensPerEvent.push(TOKENS / Math.max(1, events.length));
}
const fmt = (xs: number[]) => `p50 ${pct(xs, 50)} ms, p99 ${pct(xs, 99)} ms, max ${Math.max(...xs)} ms (n=${xs.length})`;
console.log(`delta events per ${TOKENS}-token stream: tokens per event median ${pct(tokensPerEvent, 50).toFixed(2)}`);
console.log(`text produced → its flush begins:   ${fmt(flushWait)}`);
console.log(`flush begins → SSE client:          ${fmt(afterFlush)}`);
console.log(`text produced → SSE client:         ${fmt(fullPath)}`);
await db.end();
serve.child.kill('SIGTERM');
worker.child.kill('SIGTERM');
await new Promise((r) => setTimeout(r, 1000));
const admin = new pg.Client({ connectionString: server });
await admin.connect();
await admin.query(`drop database if exists ${dbName} with (force)`);
await admin.end();
