/**
 * What the data plane costs Postgres per generated token: commits (pg_stat_database.xact_commit
 * of the database) and WAL bytes (the records pg_walinspect attributes to the database: those
 * touching its relations, and the commit records of their transactions), at S concurrent
 * streams × T tokens of the tiny fixture chat model through real serve and worker processes,
 * and per 1-token non-streaming request (R of them, 16 at a time); with the CPU time Postgres
 * spent on them (its backends serving this database) and the gateway's own processes. Idle
 * background work (claim polling, heartbeats, reapers) is measured over a quiet window first and
 * subtracted. Then the latency of 1-token non-streaming requests, one after another.
 *
 *   npx tsx scripts/dataplane-cost.ts [--root DIR] [--streams 16] [--tokens 128] [--requests 256]
 *                                     [--serves 1] [--workers 1] [--flush-ms N] [--unlogged]
 *
 * --root runs another checkout's serve and worker (e.g. main, for a before/after figure).
 * Needs PostgreSQL as for the tests (SWITCHYARD_TEST_DATABASE_URL, superuser: pg_walinspect)
 * and the fixture models (SWITCHYARD_MODELS_DIR, or generated into .cache/).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { ensureFixtureModels } from '../fixtures/models/index.mjs';

const { values: args } = parseArgs({
  options: {
    root: { type: 'string', default: path.resolve(new URL('..', import.meta.url).pathname) },
    streams: { type: 'string', default: '16' },
    tokens: { type: 'string', default: '128' },
    'flush-ms': { type: 'string' },
    'latency-runs': { type: 'string', default: '30' },
    requests: { type: 'string', default: '256' },
    serves: { type: 'string', default: '1' },
    workers: { type: 'string', default: '1' },
    /** Makes ai.request_events UNLOGGED after migrating (to measure what that would save). */
    unlogged: { type: 'boolean', default: false },
  },
});
const STREAMS = Number(args.streams);
const TOKENS = Number(args.tokens);
const BIN = path.join(path.resolve(args.root!), 'bin/switchyard.mjs');
const server = process.env.SWITCHYARD_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const dbName = `switchyard_dpcost_${randomBytes(4).toString('hex')}`;
const url = Object.assign(new URL(server), { pathname: `/${dbName}` }).toString();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Backends report their counters at most every second, idle ones within ten. */
const STATS_LAG_MS = 11_000;

const children: ChildProcess[] = [];

/** CPU seconds (user + system) a process has used so far; 0 once it is gone. */
function cpuOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return 0;
  }
}
function run(cmd: string[], env: Record<string, string>, ready?: RegExp): Promise<RegExpMatchArray | string> {
  const child = spawn(process.execPath, [BIN, ...cmd], { env: { ...process.env, ...env, DATABASE_URL: url } });
  children.push(child);
  let out = '';
  return new Promise((resolve, reject) => {
    const on = (d: Buffer) => {
      out += d;
      const m = ready && out.match(ready);
      if (m) resolve(m);
    };
    child.stdout!.on('data', on);
    child.stderr!.on('data', on);
    child.on('exit', (code) => (ready ? reject(new Error(`${cmd[0]} exited:\n${out}`)) : code === 0 ? resolve(out) : reject(new Error(out))));
  });
}

const admin = new pg.Client({ connectionString: server });
await admin.connect();
const probe = new pg.Client({ connectionString: url });
try {
  const modelsDir = process.env.SWITCHYARD_MODELS_DIR ?? (await ensureFixtureModels()).dir;
  await run(['migrate'], {});
  if (args.unlogged) {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('alter table ai.request_events set unlogged');
    await c.end();
  }
  await run(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], {});
  const key = String(await run(['keys', 'create', '--name', 'cost'], {})).trim().split('\n').pop()!;
  const flushEnv: Record<string, string> = args['flush-ms'] ? { SWITCHYARD_FLUSH_MS: args['flush-ms'] } : {};
  const bases = await Promise.all(
    Array.from({ length: Number(args.serves) }, async () => ((await run(['serve'], { PORT: '0', HOST: '127.0.0.1', ...flushEnv }, /listening on (http:\/\/\S+)/)) as RegExpMatchArray)[1]!),
  );
  const serves = children.slice(-bases.length);
  for (let w = 0; w < Number(args.workers); w++) await run(['worker'], { SWITCHYARD_MODELS_DIR: modelsDir, ...flushEnv }, /worker \S+ serving/);
  let turn = 0;
  await probe.connect();
  await probe.query('create extension if not exists pg_walinspect');
  // Keeps the WAL we read from being recycled meanwhile (the server is shared); gone with the session.
  await probe.query(`select pg_create_physical_replication_slot($1, true, true)`, [dbName]);
  const oid = (await probe.query<{ oid: number }>('select oid from pg_database where datname = current_database()')).rows[0]!.oid;

  const chat = async (content: string, maxTokens: number, stream: boolean): Promise<number> => {
    const base = bases[turn++ % bases.length]!;
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 0, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) }),
    });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`${res.status}: ${text}`);
    if (!stream) return JSON.parse(text).usage.completion_tokens;
    // The last event's data line (chat frames lead with an `id:` line).
    const last = text.split('\n').filter((l) => l.startsWith('data: {')).pop()!;
    return JSON.parse(last.slice(6)).usage.completion_tokens;
  };
  /** Postgres backends serving this database (pools keep theirs open), this probe's excepted. */
  const backends = async () =>
    (await probe.query<{ pid: number }>('select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()')).rows.map((r) => r.pid);
  const snapshot = async () => {
    const r = await probe.query<{ commits: string; lsn: string }>(
      'select xact_commit::text as commits, pg_current_wal_flush_lsn()::text as lsn from pg_stat_database where datname = current_database()',
    );
    const pids = await backends();
    return {
      at: Date.now(), commits: Number(r.rows[0]!.commits), lsn: r.rows[0]!.lsn,
      pg: new Map(pids.map((p) => [p, cpuOf(p)])),
      serve: serves.reduce((sum, c) => sum + (c.exitCode === null ? cpuOf(c.pid!) : 0), 0),
      gateway: children.reduce((sum, c) => sum + (c.exitCode === null ? cpuOf(c.pid!) : 0), 0),
    };
  };
  type Snap = Awaited<ReturnType<typeof snapshot>>;
  /**
   * CPU seconds of the backends present at the later reading since the earlier one (all of it for
   * those that started meanwhile). Read it right after the load: pools close idle connections.
   */
  const pgCpu = (from: Snap, to: Snap) => [...to.pg].reduce((sum, [pid, t]) => sum + t - (from.pg.get(pid) ?? 0), 0);
  const wal = async (from: string, to: string) => {
    const r = await probe.query<{ bytes: string; fpi: string; records: string }>(
      `with w as (select * from pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)),
            ours as (select distinct xid from w where xid <> 0 and block_ref ~ ('rel \\d+/' || $3 || '/'))
       select coalesce(sum(record_length), 0)::text as bytes, coalesce(sum(fpi_length), 0)::text as fpi, count(*)::text as records
         from w where block_ref ~ ('rel \\d+/' || $3 || '/') or xid in (select xid from ours)`,
      [from, to, oid],
    );
    const kinds = await probe.query<{ kind: string; bytes: string; n: string }>(
      `with w as (select * from pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)),
            ours as (select distinct xid from w where xid <> 0 and block_ref ~ ('rel \\d+/' || $3 || '/'))
       select resource_manager || '/' || split_part(record_type, ' ', 1) as kind, sum(record_length)::text as bytes, count(*)::text as n
         from w where block_ref ~ ('rel \\d+/' || $3 || '/') or xid in (select xid from ours)
        group by 1 order by sum(record_length) desc limit 8`,
      [from, to, oid],
    );
    const top = kinds.rows.map((k) => `${k.kind} ${k.bytes} B/${k.n}`).join(', ');
    return { bytes: Number(r.rows[0]!.bytes), fpi: Number(r.rows[0]!.fpi), records: Number(r.rows[0]!.records), top };
  };

  // Warm-up: the model loaded, the pools and caches filled.
  await Promise.all(Array.from({ length: 2 }, (_, i) => chat(`warm ${i}`, 8, true)));
  await sleep(STATS_LAG_MS);
  const a = await snapshot();
  await sleep(STATS_LAG_MS);
  const b = await snapshot();
  const idleSec = (b.at - a.at) / 1000;
  const idleWal = await wal(a.lsn, b.lsn);
  const idle = {
    commits: (b.commits - a.commits) / idleSec, bytes: idleWal.bytes / idleSec, fpi: idleWal.fpi / idleSec,
    pg: pgCpu(a, b) / idleSec, gateway: (b.gateway - a.gateway) / idleSec,
  };

  const t0 = Date.now();
  const tokens = (await Promise.all(Array.from({ length: STREAMS }, (_, i) => chat(`stream ${i}: tell me a story`, TOKENS, true)))).reduce((s, n) => s + n, 0);
  const loadMs = Date.now() - t0;
  const streamed = await snapshot();
  await sleep(STATS_LAG_MS);
  const c = await snapshot();
  const sec = (c.at - b.at) / 1000;
  const loadWal = await wal(b.lsn, c.lsn);
  const commits = c.commits - b.commits - idle.commits * sec;
  const bytes = loadWal.bytes - idle.bytes * sec;
  const fpi = loadWal.fpi - idle.fpi * sec;
  const events = (await probe.query<{ n: string }>(`select count(*)::text as n from ai.request_events where data->>'type' = 'delta'`)).rows[0]!.n;
  const pgPerToken = (pgCpu(b, streamed) - (idle.pg * (streamed.at - b.at)) / 1000) / tokens;
  const gwPerToken = (streamed.gateway - b.gateway - (idle.gateway * (streamed.at - b.at)) / 1000) / tokens;

  // Per request: 1-token non-streaming requests, 16 at a time.
  const R = Number(args.requests);
  let next = 0;
  const r0 = Date.now();
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < R) await chat(`req ${next++}`, 1, false);
    }),
  );
  const reqMs = Date.now() - r0;
  const answered = await snapshot();
  await sleep(STATS_LAG_MS);
  const d = await snapshot();
  const rsec = (d.at - c.at) / 1000;
  const reqWal = await wal(c.lsn, d.lsn);
  const perReq = {
    commits: (d.commits - c.commits - idle.commits * rsec) / R,
    bytes: (reqWal.bytes - idle.bytes * rsec) / R,
    pg: (pgCpu(c, answered) - (idle.pg * (answered.at - c.at)) / 1000) / R,
    gateway: (answered.gateway - c.gateway - (idle.gateway * (answered.at - c.at)) / 1000) / R,
    serve: (answered.serve - c.serve) / R,
  };

  const latencies: number[] = [];
  for (let i = 0; i < Number(args['latency-runs']); i++) {
    const s = performance.now();
    await chat(`one ${i}`, 1, false);
    latencies.push(performance.now() - s);
  }
  latencies.sort((x, y) => x - y);

  const f = (n: number, d = 2) => n.toFixed(d);
  console.log(`root ${args.root}, ${bases.length} serve × ${args.workers} worker${args['flush-ms'] ? `, SWITCHYARD_FLUSH_MS=${args['flush-ms']}` : ''}${args.unlogged ? ', ai.request_events unlogged' : ''}`);
  console.log(`${STREAMS} streams × ${TOKENS} tokens: ${tokens} tokens in ${loadMs} ms, ${events} delta event rows in the database (all runs)`);
  console.log(`idle background: ${f(idle.commits)} commits/s, ${f(idle.bytes, 0)} WAL bytes/s, Postgres ${f(idle.pg * 1000, 1)} ms CPU/s, gateway ${f(idle.gateway * 1000, 1)} ms CPU/s (subtracted over the ${f(sec, 1)} s window)`);
  console.log(`commits per token: ${f(commits / tokens, 3)} (${f(commits, 0)} commits; raw ${c.commits - b.commits})`);
  console.log(`WAL bytes per token: ${f(bytes / tokens, 1)} (of which full-page images ${f(fpi / tokens, 1)}; ${f((bytes - fpi) / tokens, 1)} without them; raw ${loadWal.bytes} bytes in ${loadWal.records} records)`);
  console.log(`WAL by record kind (load window, raw): ${loadWal.top}`);
  console.log(`CPU per token: Postgres ${f(pgPerToken * 1e6, 0)} µs, serve + worker ${f(gwPerToken * 1e6, 0)} µs (the model included)`);
  console.log(`per 1-token non-streaming request (${R}, 16 at a time, ${f((R * 1000) / reqMs, 0)} requests/s): ${f(perReq.commits, 2)} commits, ${f(perReq.bytes, 0)} WAL bytes, Postgres ${f(perReq.pg * 1000, 2)} ms CPU, serve + worker ${f(perReq.gateway * 1000, 2)} ms CPU (serve ${f(perReq.serve * 1000, 2)})`);
  console.log(`1-token non-streaming latency: p50 ${f(latencies[Math.floor(latencies.length / 2)]!, 1)} ms, min ${f(latencies[0]!, 1)} ms (n=${latencies.length})`);
} finally {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  await Promise.all(children.filter((c) => c.exitCode === null).map((c) => new Promise((r) => c.once('exit', r))));
  await probe.end().catch(() => {});
  await admin.query(`drop database if exists ${dbName} with (force)`).catch(() => {});
  await admin.end();
}
