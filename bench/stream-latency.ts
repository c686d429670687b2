/**
 * What the streaming path adds per token: a 256-token completion through serve + worker, with a
 * LISTEN connection beside the gateway's. Each delta event carries `at` (when the worker
 * produced its text); we record when its notification arrives here (worker → Postgres →
 * listener) and when the matching SSE chunk reaches the HTTP client (→ serve → client).
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

const listener = new pg.Client({ connectionString: url });
await listener.connect();
await listener.query('listen ai_events');
const notified = new Map<string, { at: number; recv: number; chars: number }[]>();
listener.on('notification', (m) => {
  const recv = Date.now();
  const p = JSON.parse(m.payload!);
  if (p.d?.type !== 'delta') return;
  const list = notified.get(p.r) ?? [];
  list.push({ at: p.d.at, recv, chars: p.d.choices.reduce((s: number, c: { text: string }) => s + c.text.length, 0) });
  notified.set(p.r, list);
});

const dbHop: number[] = [];
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
      const line = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!line.startsWith('data: {')) continue;
      const chunk = JSON.parse(line.slice(6));
      if (chunk.choices?.[0]?.delta?.content) arrivals.push(Date.now());
    }
  }
  await new Promise((res) => setTimeout(res, 100));
  const events = (notified.get(id) ?? []).filter((e) => e.chars > 0);
  if (r === 0) continue; // warm-up
  events.forEach((e, k) => {
    dbHop.push(e.recv - e.at);
    if (arrivals[k] !== undefined) fullPath.push(arrivals[k]! - e.at);
  });
  tokensPerEvent.push(TOKENS / Math.max(1, events.length));
}
const fmt = (xs: number[]) => `p50 ${pct(xs, 50)} ms, p99 ${pct(xs, 99)} ms, max ${Math.max(...xs)} ms (n=${xs.length})`;
console.log(`delta events per ${TOKENS}-token stream: tokens per event median ${pct(tokensPerEvent, 50).toFixed(2)}`);
console.log(`worker → Postgres → LISTEN:        ${fmt(dbHop)}`);
console.log(`worker → … → serve → SSE client:   ${fmt(fullPath)}`);
await listener.end();
serve.child.kill('SIGTERM');
worker.child.kill('SIGTERM');
await new Promise((r) => setTimeout(r, 1000));
const admin = new pg.Client({ connectionString: server });
await admin.connect();
await admin.query(`drop database if exists ${dbName} with (force)`);
await admin.end();
