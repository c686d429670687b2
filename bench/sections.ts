/**
 * The benchmark's sections. Each measures one thing through the gateway and, side by side in the
 * same run, the in-process limit, and returns rows for the table plus its raw numbers.
 * Gateway and in-process runs alternate round by round, so drift on a shared machine hits both.
 */
import type { LoadedEmbedModel } from '../src/worker/loader.js';
import { CHAT, EMBED, TINY, chatOnce, chatStream, cpuDuring, embedOne, memoryOf, resetPeak, socketsOf, type Stack, type StreamResult } from './gateway.js';
import { embedInProcess, type InProcessChat, type Message } from './inproc.js';
import { median, pct, progress, sleep, stat, type Stat } from './lib.js';

export interface Row {
  /** Stable id for tooling (and the hooks issues 8 and 9 fill in). */
  id: string;
  figure: string;
  unit: string;
  gateway: Stat | null;
  inproc: Stat | null;
  /** Gateway against in-process: a difference (same unit) or a ratio (×). */
  compare: { kind: 'minus' | 'ratio'; value: number; unit: string } | null;
  target: string | null;
  met: boolean | null;
  note?: string;
  /** A figure that could not be taken (e.g. a parameter the gateway refuses). */
  unsupported?: string;
}

export interface SectionResult {
  rows: Row[];
  raw: Record<string, unknown>;
}

export interface Ctx {
  stack: Stack;
  chat: InProcessChat;
  embed: LoadedEmbedModel;
  quick: boolean;
}

// ---------------------------------------------------------------- inputs

const WORDS = ('the of and to in is that for it as with was on be by this are from at or an have not which but they you were his her ' +
  'one all can their there been if more when will would who so light house keeper river stone winter market').split(' ');
/** Realistic short sentences of varied length (5–25 words), unique by tag. */
export const sentence = (i: number, tag: string) =>
  `${Array.from({ length: 5 + ((i * 7) % 21) }, (_, k) => WORDS[(i * 31 + k * 17) % WORDS.length]).join(' ')} ${tag}${i}`;
const sentences = (n: number, tag: string) => Array.from({ length: n }, (_, i) => sentence(i, tag));

/** A chat prompt of fixed shape (about 40 tokens with the template's system turn); `i` varies the text. */
export const prompt = (i: number): Message[] => [{ role: 'user', content: `Write a long story about lighthouse keeper number ${i} and the winter storm.` }];
/** A short prompt (about 15 tokens): the queue's overhead is measured against as little compute as possible. */
export const shortPrompt = (i: number): Message[] => [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: `Hi ${i}` }];
const chatBody = (i: number, maxTokens: number, extra: Record<string, unknown> = {}, messages = prompt(i)) => ({
  model: CHAT, messages, max_tokens: maxTokens, temperature: 0, ...extra,
});

const num = (v: number) => (Number.isFinite(v) ? v.toFixed(Math.abs(v) >= 100 ? 0 : 1) : 'n/a');
const perSec = (n: number, ms: number) => n / (ms / 1000);
const minus = (a: Stat, b: Stat, unit = 'ms') => ({ kind: 'minus' as const, value: a.median - b.median, unit });
const ratio = (a: Stat, b: Stat) => ({ kind: 'ratio' as const, value: a.median / b.median, unit: '×' });
const decodeRate = (r: StreamResult) =>
  r.firstTokenAt !== null && r.lastTokenAt !== null && r.completionTokens > 1 ? perSec(r.completionTokens - 1, r.lastTokenAt - r.firstTokenAt) : NaN;
const failed = (rs: StreamResult[]) => rs.filter((r) => r.error && r.error !== 'aborted');
function assertOk(rs: StreamResult[], what: string) {
  const bad = failed(rs);
  if (bad.length) throw new Error(`${what}: ${bad.length} failed, e.g. ${bad[0]!.error} ${bad[0]!.body ?? ''}`);
}

// ---------------------------------------------------------------- 1. queue overhead

export async function overhead(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 2 : 3;
  const n = c.quick ? 12 : 40;
  const gw: { p50: number[]; p99: number[] } = { p50: [], p99: [] };
  const ip: { p50: number[]; p99: number[] } = { p50: [], p99: [] };
  const all: { gateway: number[][]; inproc: number[][] } = { gateway: [], inproc: [] };
  for (let i = 0; i < 2; i++) {
    await chatOnce(c.stack, chatBody(1000 + i, 1, {}, shortPrompt(1000 + i)));
    await c.chat.generate(c.chat.promptIds(shortPrompt(1000 + i)), 1);
  }
  for (let r = 0; r < rounds; r++) {
    progress(`overhead round ${r + 1}/${rounds}`);
    const g: number[] = [];
    const p: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await c.chat.generate(c.chat.promptIds(shortPrompt(i)), 1);
      p.push(performance.now() - t);
      const res = await chatOnce(c.stack, chatBody(i, 1, {}, shortPrompt(i)));
      if (res.completionTokens !== 1) throw new Error(`expected 1 token, got ${res.completionTokens}`);
      g.push(res.ms);
    }
    gw.p50.push(pct(g, 50));
    gw.p99.push(pct(g, 99));
    ip.p50.push(pct(p, 50));
    ip.p99.push(pct(p, 99));
    all.gateway.push(g);
    all.inproc.push(p);
  }
  // Where the gateway's time goes, from the request rows of the last round (server clocks).
  const breakdown = await c.stack.pool.query<{ queue_ms: number; run_ms: number; total_ms: number; first_token_ms: number }>(`
    select percentile_cont(0.5) within group (order by extract(epoch from started_at - queued_at) * 1000) as queue_ms,
           percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at) * 1000) as run_ms,
           percentile_cont(0.5) within group (order by extract(epoch from finished_at - queued_at) * 1000) as total_ms,
           percentile_cont(0.5) within group (order by extract(epoch from first_token_at - started_at) * 1000) as first_token_ms
      from (select * from ai.requests where model = $1 and status = 'completed' order by queued_at desc limit $2) r`, [CHAT, n]);
  const s = { g50: stat(gw.p50), g99: stat(gw.p99), i50: stat(ip.p50), i99: stat(ip.p99) };
  const d50 = s.g50.median - s.i50.median;
  const d99 = s.g99.median - s.i99.median;
  const b = breakdown.rows[0];
  const where = b ? `server clocks, p50: queued→started ${num(b.queue_ms)} ms, started→first token ${num(b.first_token_ms)} ms, started→finished ${num(b.run_ms)} ms; prompt ${c.chat.promptIds(shortPrompt(0)).length} tokens` : undefined;
  return {
    rows: [
      { id: 'overhead.p50', figure: '1-token chat completion, p50 latency', unit: 'ms', gateway: s.g50, inproc: s.i50, compare: minus(s.g50, s.i50), target: 'overhead ≤ 5 ms', met: d50 <= 5, note: where },
      { id: 'overhead.p99', figure: '1-token chat completion, p99 latency', unit: 'ms', gateway: s.g99, inproc: s.i99, compare: minus(s.g99, s.i99), target: 'overhead ≤ 20 ms', met: d99 <= 20 },
    ],
    raw: { rounds, requests_per_round: n, latencies_ms: all, server_side_median_ms: breakdown.rows[0] },
  };
}

// ---------------------------------------------------------------- 2. streaming

export async function streaming(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 2 : 5;
  const T = 128;
  const g = { ttft: [] as number[], rate: [] as number[], tokens: [] as number[], chunks: [] as number[] };
  const p = { ttft: [] as number[], rate: [] as number[], tokens: [] as number[] };
  const cpu = { worker: [] as number[], serve: [] as number[], postgres: [] as number[], inproc: [] as number[] };
  for (let r = 0; r < rounds; r++) {
    progress(`streaming round ${r + 1}/${rounds}`);
    const ids = c.chat.promptIds(prompt(r));
    const u0 = process.cpuUsage();
    const t = await c.chat.generate(ids, T);
    const u1 = process.cpuUsage(u0);
    cpu.inproc.push((u1.user + u1.system) / 1e6);
    p.ttft.push(t.firstTokenMs);
    p.rate.push(perSec(t.tokens - 1, t.totalMs - t.firstTokenMs));
    p.tokens.push(t.tokens);
    const measured = await cpuDuring(c.stack, () => chatStream(c.stack, chatBody(r, T)));
    const s = measured.result;
    cpu.worker.push(measured.workerS);
    cpu.serve.push(measured.serveS);
    cpu.postgres.push(measured.postgresS);
    assertOk([s], 'streaming');
    g.ttft.push(s.firstTokenAt! - s.sentAt);
    g.rate.push(decodeRate(s));
    g.tokens.push(s.completionTokens);
    g.chunks.push(s.textChunks);
  }
  const s = { gt: stat(g.ttft), gr: stat(g.rate), pt: stat(p.ttft), pr: stat(p.rate) };
  const tokens = `${Math.min(...g.tokens)}–${Math.max(...g.tokens)} tokens per gateway stream, ${Math.min(...p.tokens)} in-process; ` +
    `CPU s per stream (median): worker ${num(median(cpu.worker))}, serve ${num(median(cpu.serve))}, postgres ${num(median(cpu.postgres))}; in-process ${num(median(cpu.inproc))}`;
  return {
    rows: [
      { id: 'streaming.ttft', figure: `time to first token (${T}-token stream)`, unit: 'ms', gateway: s.gt, inproc: s.pt, compare: minus(s.gt, s.pt), target: 'overhead ≤ 10 ms', met: s.gt.median - s.pt.median <= 10 },
      { id: 'streaming.decode', figure: `decode tokens/s (${T}-token stream)`, unit: 'tok/s', gateway: s.gr, inproc: s.pr, compare: ratio(s.gr, s.pr), target: '≥ 0.9×', met: s.gr.median / s.pr.median >= 0.9, note: tokens },
    ],
    raw: { rounds, max_tokens: T, gateway: g, inproc: p, cpu_seconds: cpu },
  };
}

// ---------------------------------------------------------------- 3. embeddings

export async function embeddings(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 2 : 4;
  const N = 256;
  await embedInProcess(c.embed, sentences(N, 'warm-'));
  await Promise.all(sentences(32, 'warmgw-').map((s) => embedOne(c.stack, s)));
  const rows = { inprocBatch: [] as number[], inprocSingle: [] as number[], gateway: [] as number[] };
  const cpu: { wall: number; worker: number; serve: number; postgres: number }[] = [];
  const timeline: Record<string, number>[] = [];
  for (let r = 0; r < rounds; r++) {
    progress(`embeddings round ${r + 1}/${rounds}`);
    // Fresh texts every round, so the gateway's embedding cache never answers.
    let t = performance.now();
    await embedInProcess(c.embed, sentences(N, `b${r}-`));
    rows.inprocBatch.push(perSec(N, performance.now() - t));
    const single = sentences(N, `s${r}-`);
    t = performance.now();
    for (const s of single) await embedInProcess(c.embed, [s]);
    rows.inprocSingle.push(perSec(N, performance.now() - t));
    const gw = sentences(N, `g${r}-`);
    const since = new Date();
    t = performance.now();
    const measured = await cpuDuring(c.stack, () => Promise.all(gw.map((s) => embedOne(c.stack, s))));
    rows.gateway.push(perSec(N, performance.now() - t));
    cpu.push({ wall: measured.wallS, worker: measured.workerS, serve: measured.serveS, postgres: measured.postgresS });
    // Where the time went, on the server's clock: enqueueing, claiming, finishing.
    const tl = await c.stack.pool.query<{ enqueued: number; first_started: number; last_started: number; last_finished: number; n: number }>(`
      select extract(epoch from max(queued_at) - $2::timestamptz) * 1000 as enqueued,
             extract(epoch from min(started_at) - $2::timestamptz) * 1000 as first_started,
             extract(epoch from max(started_at) - $2::timestamptz) * 1000 as last_started,
             extract(epoch from max(finished_at) - $2::timestamptz) * 1000 as last_finished, count(*)::int as n
        from ai.requests where model = $1 and queued_at >= $2::timestamptz`, [EMBED, since.toISOString()]);
    timeline.push(tl.rows[0]!);
  }
  const s = { gw: stat(rows.gateway), b: stat(rows.inprocBatch), one: stat(rows.inprocSingle) };
  return {
    rows: [
      { id: 'embeddings.vs_batch', figure: `${N} concurrent single-input requests vs one in-process batch of ${N}`, unit: 'inputs/s', gateway: s.gw, inproc: s.b, compare: ratio(s.gw, s.b), target: '≥ 0.8×', met: s.gw.median / s.b.median >= 0.8, note: embedNote(cpu, timeline) },
      { id: 'embeddings.vs_single', figure: `${N} concurrent single-input requests vs ${N} in-process calls of batch 1`, unit: 'inputs/s', gateway: s.gw, inproc: s.one, compare: ratio(s.gw, s.one), target: null, met: null },
    ],
    raw: { rounds, inputs: N, per_s: rows, cpu_seconds: cpu, timeline_ms: timeline },
  };
}

function embedNote(cpu: { wall: number; worker: number; serve: number; postgres: number }[], timeline: Record<string, number>[]) {
  const last = cpu.length - 1;
  const c = cpu[last];
  const t = timeline[last];
  if (!c || !t) return undefined;
  return `last round: ${num(c.wall * 1000)} ms wall; all ${t.n} enqueued by ${num(Number(t.enqueued))} ms, last claimed at ${num(Number(t.last_started))} ms, ` +
    `last finished at ${num(Number(t.last_finished))} ms; CPU s: worker ${num(c.worker)}, serve ${num(c.serve)}, postgres ${num(c.postgres)}`;
}

// ---------------------------------------------------------------- 4. concurrency

async function concurrentStreams(s: Stack, k: number, tokens: number, offset: number) {
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: k }, (_, i) => chatStream(s, chatBody(offset + i, tokens))));
  const wall = Math.max(...rs.map((r) => r.endAt ?? performance.now())) - t0;
  assertOk(rs, `${k} concurrent streams`);
  const total = rs.reduce((n, r) => n + r.completionTokens, 0);
  return { tokPerS: perSec(total, wall), tokens: total, wallMs: wall, ttftMs: rs.map((r) => r.firstTokenAt! - r.sentAt) };
}

export async function concurrency(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 1 : 2;
  const T = c.quick ? 32 : 128;
  const levels = [1, 4, 8];
  const gw: Record<number, number[]> = { 1: [], 4: [], 8: [] };
  const detail: unknown[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const k of levels) {
      progress(`concurrency round ${r + 1}/${rounds}: ${k} streams × ${T} tokens`);
      const m = await concurrentStreams(c.stack, k, T, 100 * k + r * 10);
      gw[k]!.push(m.tokPerS);
      detail.push({ round: r, streams: k, ...m });
    }
  }
  // In-process reference: one forward-loop call with batch 8 against batch 1.
  const bT = T;
  const ids = c.chat.promptIds(prompt(7));
  const ip: Record<number, number[]> = { 1: [], 8: [] };
  const steps: Record<number, number[]> = { 1: [], 8: [] };
  for (let r = 0; r < rounds; r++) {
    for (const b of [1, 8]) {
      progress(`concurrency in-process: batch ${b} × ${bT} tokens`);
      const t = await c.chat.generate(ids, bT, b);
      ip[b]!.push(perSec(t.tokens * b, t.totalMs));
      steps[b]!.push(pct(t.stepMs, 50));
    }
  }
  const s = { g1: stat(gw[1]!), g4: stat(gw[4]!), g8: stat(gw[8]!), i1: stat(ip[1]!), i8: stat(ip[8]!) };
  const rows: Row[] = [
    { id: 'concurrency.1', figure: `1 stream × ${T} tokens, aggregate tokens/s`, unit: 'tok/s', gateway: s.g1, inproc: s.i1, compare: ratio(s.g1, s.i1), target: null, met: null },
    { id: 'concurrency.4', figure: `4 concurrent streams, aggregate tokens/s`, unit: 'tok/s', gateway: s.g4, inproc: null, compare: { kind: 'ratio', value: s.g4.median / s.g1.median, unit: '× 1 stream' }, target: null, met: null },
    { id: 'concurrency.8', figure: `8 concurrent streams, aggregate tokens/s`, unit: 'tok/s', gateway: s.g8, inproc: s.i8, compare: { kind: 'ratio', value: s.g8.median / s.g1.median, unit: '× 1 stream' }, target: '≥ 2.5× one stream (issue 8)', met: s.g8.median / s.g1.median >= 2.5, note: `in-process column: one call with batch 8 (${bT} tokens), ${(s.i8.median / s.i1.median).toFixed(2)}× batch 1` },
  ];
  return { rows, raw: { rounds, max_tokens: T, gateway_tok_per_s: gw, detail, inproc: { tokens: bT, tok_per_s: ip, step_ms_median: steps } } };
}

// ---------------------------------------------------------------- 5. ai.embed from SQL

export async function sql(c: Ctx): Promise<SectionResult> {
  const n = c.quick ? 12 : 40;
  const rowsN = c.quick ? 200 : 1000;
  const db = c.stack.pool;
  await db.query(`select ai.embed($1, 'warm up the side connection')`, [EMBED]);
  const one: number[] = [];
  const ip: number[] = [];
  progress(`sql: ${n} single ai.embed calls`);
  for (let i = 0; i < n; i++) {
    const text = sentence(i, 'sql-one-');
    let t = performance.now();
    await db.query(`select ai.embed($1, $2)::text`, [EMBED, text]);
    one.push(performance.now() - t);
    t = performance.now();
    await embedInProcess(c.embed, [sentence(i, 'ip-one-')]);
    ip.push(performance.now() - t);
  }
  await db.query(`create table bench_docs (id int primary key, body text not null, e vector(384))`);
  await db.query(`create table bench_docs2 (id int primary key, body text not null, e vector(384))`);
  await db.query(`insert into bench_docs select i, $1 || i || ' ' || repeat('word ', 5 + i % 20) from generate_series(1, $2) i`, ['row-a-', rowsN]);
  await db.query(`insert into bench_docs2 select i, $1 || i || ' ' || repeat('word ', 5 + i % 20) from generate_series(1, $2) i`, ['row-b-', rowsN]);
  progress(`sql: update of ${rowsN} rows, one ai.embed call per row`);
  let t = performance.now();
  await db.query(`update bench_docs set e = ai.embed($1, body)`, [EMBED]);
  const perRowMs = performance.now() - t;
  progress(`sql: update of ${rowsN} rows, one ai.embed(text[]) call`);
  t = performance.now();
  await db.query(`
    with src as (select array_agg(id order by id) ids, array_agg(body order by id) bodies from bench_docs2),
         vec as (select v.id, v.e from src, unnest(src.ids, ai.embed($1, src.bodies)) as v(id, e))
    update bench_docs2 d set e = vec.e from vec where d.id = vec.id`, [EMBED]);
  const arrayMs = performance.now() - t;
  const filled = await db.query<{ n: number }>(`select (select count(e) from bench_docs) + (select count(e) from bench_docs2) as n`);
  if (Number(filled.rows[0]!.n) !== 2 * rowsN) throw new Error(`sql: ${filled.rows[0]!.n} of ${2 * rowsN} rows embedded`);
  const texts = (await db.query<{ body: string }>(`select body || ' ip' as body from bench_docs order by id`)).rows.map((r) => r.body);
  t = performance.now();
  await embedInProcess(c.embed, texts);
  const ipBatchMs = performance.now() - t;
  await db.query('drop table bench_docs, bench_docs2');
  const s = { one: stat(one), ip: stat(ip) };
  const perRowRate = perSec(rowsN, perRowMs);
  const arrayRate = perSec(rowsN, arrayMs);
  const ipRate = perSec(rowsN, ipBatchMs);
  const single = (v: number) => stat([v]);
  return {
    rows: [
      { id: 'sql.embed_one', figure: 'select ai.embed(model, text): one new text, latency', unit: 'ms', gateway: s.one, inproc: s.ip, compare: minus(s.one, s.ip), target: null, met: null },
      { id: 'sql.update_rows', figure: `update of ${rowsN} rows set e = ai.embed(model, body)`, unit: 'rows/s', gateway: single(perRowRate), inproc: single(ipRate), compare: { kind: 'ratio', value: perRowRate / ipRate, unit: '×' }, target: null, met: null, note: `${(perRowMs / 1000).toFixed(1)} s; in-process: one batch of ${rowsN}` },
      { id: 'sql.update_array', figure: `the same ${rowsN} rows with one ai.embed(model, text[]) call`, unit: 'rows/s', gateway: single(arrayRate), inproc: single(ipRate), compare: { kind: 'ratio', value: arrayRate / ipRate, unit: '×' }, target: null, met: null, note: `${(arrayMs / 1000).toFixed(1)} s` },
    ],
    raw: { single_calls: n, one_ms: one, inproc_one_ms: ip, rows: rowsN, update_per_row_ms: perRowMs, update_array_ms: arrayMs, inproc_batch_ms: ipBatchMs },
  };
}

// ---------------------------------------------------------------- 6. scale-out

export async function scaleout(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 1 : 2;
  const N = 256;
  const K = 8;
  const T = c.quick ? 16 : 64;
  const res: Record<string, { embed: number[]; chat: number[] }> = { one: { embed: [], chat: [] }, two: { embed: [], chat: [] } };
  const measure = async (label: 'one' | 'two') => {
    for (let r = 0; r < rounds; r++) {
      progress(`scale-out (${label} worker${label === 'two' ? 's' : ''}) round ${r + 1}/${rounds}`);
      const texts = sentences(N, `so-${label}${r}-`);
      const t = performance.now();
      await Promise.all(texts.map((s) => embedOne(c.stack, s)));
      res[label]!.embed.push(perSec(N, performance.now() - t));
      res[label]!.chat.push((await concurrentStreams(c.stack, K, T, 500 + r * 10)).tokPerS);
    }
  };
  await measure('one');
  progress('scale-out: starting a second worker');
  const second = await c.stack.addWorker();
  try {
    await sleep(1000);
    await measure('two');
  } finally {
    await c.stack.stopWorker(second);
  }
  const s = { e1: stat(res.one!.embed), e2: stat(res.two!.embed), c1: stat(res.one!.chat), c2: stat(res.two!.chat) };
  return {
    rows: [
      { id: 'scaleout.embeddings', figure: `${N} concurrent embedding requests, two workers vs one`, unit: 'inputs/s', gateway: s.e2, inproc: null, compare: { kind: 'ratio', value: s.e2.median / s.e1.median, unit: `× one worker (${s.e1.median.toFixed(0)}/s)` }, target: null, met: null },
      { id: 'scaleout.chat', figure: `${K} concurrent streams × ${T} tokens, two workers vs one`, unit: 'tok/s', gateway: s.c2, inproc: null, compare: { kind: 'ratio', value: s.c2.median / s.c1.median, unit: `× one worker (${s.c1.median.toFixed(1)} tok/s)` }, target: null, met: null },
    ],
    raw: { rounds, ...res },
  };
}

// ---------------------------------------------------------------- 7. capacity

export async function capacity(c: Ctx): Promise<SectionResult> {
  const N = 1000;
  const T = c.quick ? 2 : 16;
  const deadlineMs = c.quick ? 60_000 : 300_000;
  const pid = c.stack.serve.child.pid!;
  await chatStream(c.stack, { model: TINY, messages: prompt(0), max_tokens: 2, temperature: 0 });
  const before = await memoryOf(pid);
  const peakReset = await resetPeak(pid);
  progress(`capacity: ${N} streams (model ${TINY}, ${T} tokens each); serve RSS ${before.rss.toFixed(0)} MiB`);
  const abort = new AbortController();
  let open = 0;
  let peakOpen = 0;
  let peakHeaders = 0;
  let withHeaders = 0;
  let peakSockets = 0;
  let peakRss = before.rss;
  let peakUnfinished = 0;
  const health: number[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const [m, sockets, unfinished] = await Promise.all([
        memoryOf(pid),
        socketsOf(pid),
        c.stack.pool.query<{ n: number }>(`select count(*)::int as n from ai.requests where model = $1 and status in ('queued', 'running')`, [TINY]),
      ]);
      peakRss = Math.max(peakRss, m.rss);
      peakSockets = Math.max(peakSockets, sockets);
      peakUnfinished = Math.max(peakUnfinished, unfinished.rows[0]!.n);
      const t = performance.now();
      const h = await fetch(`${c.stack.base}/health`).catch(() => null);
      if (h) {
        await h.text();
        health.push(performance.now() - t);
      }
      await sleep(250);
    }
  })();
  const t0 = performance.now();
  const timer = setTimeout(() => abort.abort(), deadlineMs);
  const results = await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      open++;
      peakOpen = Math.max(peakOpen, open);
      const r = await chatStream(
        c.stack,
        { model: TINY, messages: prompt(i), max_tokens: T, temperature: 0 },
        { signal: abort.signal, onHeaders: () => (peakHeaders = Math.max(peakHeaders, ++withHeaders)) },
      );
      open--;
      if (r.headersAt !== null) withHeaders--;
      return r;
    }),
  );
  clearTimeout(timer);
  const wallMs = performance.now() - t0;
  sampling = false;
  await sampler;
  const after = await memoryOf(pid);
  const errors = failed(results);
  const aborted = results.filter((r) => r.error === 'aborted').length;
  const completed = results.filter((r) => r.done && !r.error).length;
  const byError = new Map<string, number>();
  for (const e of errors) byError.set(`${e.error} ${e.body?.slice(0, 120) ?? ''}`.trim(), (byError.get(`${e.error} ${e.body?.slice(0, 120) ?? ''}`.trim()) ?? 0) + 1);
  // Leftovers (aborted at the deadline) must not block later sections.
  for (let i = 0; i < 60; i++) {
    const q = await c.stack.pool.query<{ n: number }>(`select count(*)::int as n from ai.requests where status in ('queued', 'running')`);
    if (q.rows[0]!.n === 0) break;
    await sleep(1000);
  }
  const peakMiB = peakReset ? Math.max(after.hwm, peakRss) : peakRss;
  return {
    rows: [
      { id: 'capacity.errors', figure: `${N} concurrent streams: errors`, unit: 'errors', gateway: stat([errors.length]), inproc: null, compare: null, target: '0', met: errors.length === 0, note: `${completed} completed with [DONE]${aborted ? `, ${aborted} still open at the ${deadlineMs / 1000} s deadline (aborted)` : ''} in ${(wallMs / 1000).toFixed(1)} s; peak ${peakOpen} open client-side, ${peakSockets} sockets in serve, ${peakUnfinished} unfinished requests` },
      { id: 'capacity.rss', figure: `${N} concurrent streams: gateway peak RSS`, unit: 'MiB', gateway: stat([peakMiB]), inproc: null, compare: { kind: 'minus', value: peakMiB - before.rss, unit: 'MiB over idle' }, target: null, met: null, note: `/health p50 ${pct(health, 50)?.toFixed(1)} ms, max ${Math.max(...health).toFixed(1)} ms under load` },
    ],
    raw: {
      streams: N, max_tokens: T, model: TINY, wall_ms: wallMs, completed, aborted, errors: errors.length, error_kinds: Object.fromEntries(byError),
      peak_open_client: peakOpen, peak_with_headers: peakHeaders, peak_serve_sockets: peakSockets, peak_unfinished_requests: peakUnfinished,
      serve_rss_idle_mib: before.rss, serve_peak_rss_mib: peakMiB, vmhwm_reset: peakReset, serve_vmhwm_after_mib: after.hwm, health_ms: health,
    },
  };
}

// ---------------------------------------------------------------- issue 8 hook: joining a decoding batch

export async function join(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 1 : 3;
  const T = c.quick ? 48 : 128;
  const ids = c.chat.promptIds(prompt(77));
  const b1 = await c.chat.generate(ids, 4, 1);
  const b8 = await c.chat.generate(ids, 4, 8);
  const prefill = b1.prefillMs;
  const step8 = pct(b8.stepMs, 50);
  const reference = prefill + 2 * step8;
  const ttft: number[] = [];
  const decodingAtJoin: number[] = [];
  for (let r = 0; r < rounds; r++) {
    progress(`join round ${r + 1}/${rounds}: 7 streams decoding, then an 8th`);
    const abort = new AbortController();
    let started = 0;
    const seven = Array.from({ length: 7 }, (_, i) => chatStream(c.stack, chatBody(700 + r * 10 + i, T), { signal: abort.signal, onFirstToken: () => started++ }));
    // Wait until the decoding set is stable: every stream the worker took has its first token.
    let stableSince = performance.now();
    let last = -1;
    for (const t0 = performance.now(); performance.now() - t0 < 60_000; ) {
      const q = await c.stack.pool.query<{ n: number }>(`select count(*)::int as n from ai.requests where model = $1 and status = 'running'`, [CHAT]);
      const running = q.rows[0]!.n;
      if (running !== last || started < running) {
        last = running;
        stableSince = performance.now();
      }
      if (started === 7 || (running > 0 && started >= running && performance.now() - stableSince > 1000)) break;
      await sleep(100);
    }
    decodingAtJoin.push(started);
    const eighth = await chatStream(c.stack, chatBody(799 + r, T), { signal: abort.signal, onFirstToken: () => abort.abort() });
    ttft.push((eighth.firstTokenAt ?? performance.now()) - eighth.sentAt);
    abort.abort();
    const rest = await Promise.all(seven);
    assertOk([...rest, eighth], 'join');
    await waitIdle(c.stack);
  }
  const s = stat(ttft);
  return {
    rows: [
      { id: 'join.ttft', figure: 'first token of a request joining 7 decoding streams', unit: 'ms', gateway: s, inproc: stat([reference]), compare: { kind: 'ratio', value: s.median / reference, unit: '× reference' }, target: '≤ prefill + 2 decode steps (issue 8)', met: s.median <= reference, note: `reference: in-process prefill ${prefill.toFixed(0)} ms + 2 × batch-8 step ${step8.toFixed(0)} ms; streams decoding when it joined: ${decodingAtJoin.join(', ')}` },
    ],
    raw: { rounds, max_tokens: T, ttft_ms: ttft, decoding_at_join: decodingAtJoin, inproc_prefill_ms: prefill, inproc_step_b1_ms: pct(b1.stepMs, 50), inproc_step_b8_ms: step8 },
  };
}

async function waitIdle(s: Stack) {
  for (let i = 0; i < 120; i++) {
    const q = await s.pool.query<{ n: number }>(`select count(*)::int as n from ai.requests where status in ('queued', 'running')`);
    if (q.rows[0]!.n === 0) return;
    await sleep(250);
  }
}

// ---------------------------------------------------------------- issue 9 hook: constrained decoding

export const JSON_SCHEMA_FORMAT = {
  type: 'json_schema',
  json_schema: {
    name: 'story',
    strict: true,
    schema: {
      type: 'object',
      properties: { title: { type: 'string' }, chapters: { type: 'array', items: { type: 'string' } } },
      required: ['title', 'chapters'],
      additionalProperties: false,
    },
  },
};

export async function constrained(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 1 : 3;
  const T = c.quick ? 48 : 128;
  const probe = await chatStream(c.stack, chatBody(900, 4, { response_format: JSON_SCHEMA_FORMAT }));
  if (probe.status === 400) {
    const why = `400 from the gateway: ${probe.body?.slice(0, 200) ?? ''}`;
    return {
      rows: [{ id: 'constrained.decode', figure: 'decode tokens/s with a json_schema response_format vs without', unit: 'tok/s', gateway: null, inproc: null, compare: null, target: '(issue 9)', met: null, unsupported: 'unsupported (response_format json_schema is a 400)' }],
      raw: { supported: false, response: why },
    };
  }
  assertOk([probe], 'constrained probe');
  const free: number[] = [];
  const schema: number[] = [];
  const tokens: { free: number[]; schema: number[] } = { free: [], schema: [] };
  for (let r = 0; r < rounds; r++) {
    progress(`constrained round ${r + 1}/${rounds}`);
    const a = await chatStream(c.stack, chatBody(910 + r, T));
    const b = await chatStream(c.stack, chatBody(910 + r, T, { response_format: JSON_SCHEMA_FORMAT }));
    assertOk([a, b], 'constrained');
    free.push(decodeRate(a));
    schema.push(decodeRate(b));
    tokens.free.push(a.completionTokens);
    tokens.schema.push(b.completionTokens);
  }
  const s = { f: stat(free), j: stat(schema.filter((x) => Number.isFinite(x))) };
  return {
    rows: [{ id: 'constrained.decode', figure: 'decode tokens/s with a json_schema response_format vs without', unit: 'tok/s', gateway: s.j, inproc: null, compare: { kind: 'ratio', value: s.j.median / s.f.median, unit: `× unconstrained (${s.f.median.toFixed(1)} tok/s)` }, target: '(issue 9)', met: null, note: `tokens per stream: constrained ${tokens.schema.join(', ')}; unconstrained ${tokens.free.join(', ')}` }],
    raw: { supported: true, rounds, max_tokens: T, free_tok_per_s: free, schema_tok_per_s: schema, tokens },
  };
}

export const SECTIONS = { overhead, streaming, embeddings, concurrency, sql, scaleout, capacity, join, constrained } as const;
export type SectionName = keyof typeof SECTIONS;
