/**
 * The benchmark's sections. Each measures one thing through the gateway and, side by side in the
 * same run, the in-process limit, and returns rows for the table plus its raw numbers.
 * Gateway and in-process runs alternate round by round, so drift on a shared machine hits both.
 * Sections 1–2 live in latency.ts, the data-plane cost in dataplane.ts; shared pieces in kit.ts.
 */
import { availableParallelism } from 'node:os';
import { dataplane } from './dataplane.js';
import { CHAT, EMBED, TINY, chatOnce, chatStream, cpuDuring, embedOne, memoryOf, resetPeak, socketsOf, type Stack } from './gateway.js';
import { embedInProcess } from './inproc.js';
import { assertOk, bothSides, chatBody, decodeRate, failed, minus, num, perSec, prompt, roundRatio, seeded, sentence, sentences, SETTLE_GAP_MS, shortPrompt, type Ctx, type Row, type SectionResult } from './kit.js';
import { overhead, streaming } from './latency.js';
import { context, int8, prefix, sampling } from './compute.js';
import { vectorizer } from './vectorizer.js';
import { pct, progress, sleep, stat } from './lib.js';

export type { Ctx, Row, SectionResult } from './kit.js';

// ---------------------------------------------------------------- 3. embeddings

export async function embeddings(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 2 : 4;
  const N = 256;
  await embedInProcess(c.embed, sentences(N, 'warm-'));
  await Promise.all(sentences(32, 'warmgw-').map((s) => embedOne(c.stack, s)));
  const rows = { inprocBatch: [] as number[], inprocSingle: [] as number[], gateway: [] as number[] };
  const cpu: EmbedCpu[] = [];
  const timeline: Record<string, number>[] = [];
  const rand = seeded(5);
  let clientS = 0;
  let batch = { wall: 0, cpu: 0 };
  for (let r = 0; r < rounds; r++) {
    progress(`embeddings round ${r + 1}/${rounds}`);
    // Fresh texts every round, so the gateway's embedding cache never answers; sides in a random order.
    const gw = sentences(N, `g${r}-`);
    let since = new Date();
    const { g: measured } = await bothSides(
      rand,
      async () => {
        since = new Date();
        const t = performance.now();
        // The bench's own CPU (the HTTP client) while the gateway side runs: on 2 cores it competes too.
        const c0 = process.cpuUsage();
        const m = await cpuDuring(c.stack, () => Promise.all(gw.map((s) => embedOne(c.stack, s))));
        const c1 = process.cpuUsage(c0);
        clientS = (c1.user + c1.system) / 1e6;
        rows.gateway.push(perSec(N, performance.now() - t));
        return m;
      },
      async () => {
        let t = performance.now();
        const c0 = process.cpuUsage();
        await embedInProcess(c.embed, sentences(N, `b${r}-`));
        const c1 = process.cpuUsage(c0);
        batch = { wall: (performance.now() - t) / 1000, cpu: (c1.user + c1.system) / 1e6 };
        rows.inprocBatch.push(perSec(N, performance.now() - t));
        const single = sentences(N, `s${r}-`);
        t = performance.now();
        for (const s of single) await embedInProcess(c.embed, [s]);
        rows.inprocSingle.push(perSec(N, performance.now() - t));
      },
    );
    await sleep(SETTLE_GAP_MS);
    cpu.push({ wall: measured.wallS, worker: measured.workerS, serve: measured.serveS, postgres: measured.postgresS, client: clientS, batchWall: batch.wall, batchCpu: batch.cpu });
    // Where the time went, on the server's clock: enqueueing, claiming, finishing.
    const tl = await c.stack.pool.query<{ enqueued: number; first_started: number; last_started: number; last_finished: number; n: number }>(`
      select extract(epoch from max(queued_at) - $2::timestamptz) * 1000 as enqueued,
             extract(epoch from min(started_at) - $2::timestamptz) * 1000 as first_started,
             extract(epoch from max(started_at) - $2::timestamptz) * 1000 as last_started,
             extract(epoch from max(finished_at) - $2::timestamptz) * 1000 as last_finished, count(*)::int as n,
             (select count(distinct c)::int from ai.requests q, jsonb_array_elements_text(q.output->'model_calls') c
               where q.model = $1 and q.queued_at >= $2::timestamptz) as calls
        from ai.requests where model = $1 and queued_at >= $2::timestamptz`, [EMBED, since.toISOString()]);
    timeline.push(tl.rows[0]!);
  }
  const s = { gw: stat(rows.gateway), b: stat(rows.inprocBatch), one: stat(rows.inprocSingle) };
  return {
    rows: [
      { id: 'embeddings.vs_batch', figure: `${N} concurrent single-input requests vs one in-process batch of ${N}`, unit: 'inputs/s', gateway: s.gw, inproc: s.b, compare: roundRatio(rows.gateway, rows.inprocBatch), target: '≥ 0.8×', met: roundRatio(rows.gateway, rows.inprocBatch).value >= 0.8, note: embedNote(cpu, timeline) },
      { id: 'embeddings.vs_single', figure: `${N} concurrent single-input requests vs ${N} in-process calls of batch 1`, unit: 'inputs/s', gateway: s.gw, inproc: s.one, compare: roundRatio(rows.gateway, rows.inprocSingle), target: null, met: null },
    ],
    raw: { rounds, inputs: N, per_s: rows, cpu_seconds: cpu, ceiling: cpu.map(ceiling), cores: availableParallelism(), timeline_ms: timeline },
  };
}

/** One round's CPU seconds: the gateway side's processes and the bench's HTTP client, and the in-process batch's wall and CPU. */
interface EmbedCpu {
  wall: number;
  worker: number;
  serve: number;
  postgres: number;
  client: number;
  batchWall: number;
  batchCpu: number;
}

/**
 * The most the gateway's burst can reach against the in-process batch on this machine, whatever
 * it does: the model's work costs at least the CPU the one in-process batch of the same inputs
 * took (the most efficient way to run it), serve, Postgres and the client add theirs, and all of
 * it shares the machine's cores, so its wall time is at least the sum over the cores.
 */
const ceiling = (c: EmbedCpu) => c.batchWall / ((c.batchCpu + c.serve + c.postgres + c.client) / availableParallelism());

function embedNote(cpu: EmbedCpu[], timeline: Record<string, number>[]) {
  const last = cpu.length - 1;
  const c = cpu[last];
  const t = timeline[last];
  if (!c || !t) return undefined;
  return `last round: ${num(c.wall * 1000)} ms wall; all ${t.n} enqueued by ${num(Number(t.enqueued))} ms, last claimed at ${num(Number(t.last_started))} ms, ` +
    `last finished at ${num(Number(t.last_finished))} ms; ${t.calls} model calls; CPU s: worker ${num(c.worker)}, serve ${num(c.serve)}, postgres ${num(c.postgres)}, client ${num(c.client)}; ` +
    `in-process batch ${num(c.batchWall * 1000)} ms wall, ${num(c.batchCpu)} CPU s; ceiling here, (that CPU + serve + postgres + client) over ${availableParallelism()} cores: ` +
    `${cpu.map((x) => ceiling(x).toFixed(2)).join(', ')}× by round; ` +
    `threads per model ${process.env.SWITCHYARD_THREADS || 'onnxruntime default'} on both sides`;
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
  // In-process reference: one forward-loop call with batch 8 against batch 1, in the same rounds
  // as the gateway's streams (the two sides in a random order).
  const bT = T;
  const ids = c.chat.promptIds(prompt(7));
  const ip: Record<number, number[]> = { 1: [], 8: [] };
  const steps: Record<number, number[]> = { 1: [], 8: [] };
  const rand = seeded(6);
  for (let r = 0; r < rounds; r++) {
    await bothSides(
      rand,
      async () => {
        for (const k of levels) {
          progress(`concurrency round ${r + 1}/${rounds}: ${k} streams × ${T} tokens`);
          const m = await concurrentStreams(c.stack, k, T, 100 * k + r * 10);
          gw[k]!.push(m.tokPerS);
          detail.push({ round: r, streams: k, ...m });
        }
      },
      async () => {
        for (const b of [1, 8]) {
          progress(`concurrency round ${r + 1}/${rounds}: in-process batch ${b} × ${bT} tokens`);
          const t = await c.chat.generate(ids, bT, b);
          ip[b]!.push(perSec(t.tokens * b, t.totalMs));
          steps[b]!.push(pct(t.stepMs, 50));
        }
      },
    );
    await sleep(SETTLE_GAP_MS);
  }
  const s = { g1: stat(gw[1]!), g4: stat(gw[4]!), g8: stat(gw[8]!), i1: stat(ip[1]!), i8: stat(ip[8]!) };
  // Ratios: the median over rounds of each round's ratio (both levels measured in the same round).
  const x4 = roundRatio(gw[4]!, gw[1]!, '× 1 stream');
  const x8 = roundRatio(gw[8]!, gw[1]!, '× 1 stream');
  const rows: Row[] = [
    { id: 'concurrency.1', figure: `1 stream × ${T} tokens, aggregate tokens/s`, unit: 'tok/s', gateway: s.g1, inproc: s.i1, compare: roundRatio(gw[1]!, ip[1]!), target: null, met: null },
    { id: 'concurrency.4', figure: `4 concurrent streams, aggregate tokens/s`, unit: 'tok/s', gateway: s.g4, inproc: null, compare: x4, target: null, met: null },
    { id: 'concurrency.8', figure: `8 concurrent streams, aggregate tokens/s`, unit: 'tok/s', gateway: s.g8, inproc: s.i8, compare: x8, target: '≥ 2.5× one stream (issue 8)', met: x8.value >= 2.5, note: `in-process column: one call with batch 8 (${bT} tokens), ${roundRatio(ip[8]!, ip[1]!).value.toFixed(2)}× batch 1` },
  ];
  return { rows, raw: { rounds, max_tokens: T, gateway_tok_per_s: gw, detail, inproc: { tokens: bT, tok_per_s: ip, step_ms_median: steps } } };
}

// ---------------------------------------------------------------- 5. ai.embed from SQL

/** Medians of an ai.embed run's requests on the server's clocks, since `since`. */
async function sqlClocks(db: Ctx['stack']['pool'], since: Date): Promise<{ wait: number; run: number; gap: number; model: number }> {
  return (await db.query<{ wait: number; run: number; gap: number; model: number }>(`
    select percentile_cont(0.5) within group (order by extract(epoch from started_at - queued_at) * 1000) as wait,
           percentile_cont(0.5) within group (order by model_ms) as model,
           percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at) * 1000) as run,
           percentile_cont(0.5) within group (order by gap) as gap
      from (select queued_at, started_at, finished_at, (output->>'model_ms')::float8 as model_ms,
                   extract(epoch from queued_at - lag(finished_at) over (order by queued_at)) * 1000 as gap
              from ai.requests where model = $1 and queued_at >= $2::timestamptz and params->>'source' = 'sql') r`, [EMBED, since.toISOString()])).rows[0]!;
}

export async function sql(c: Ctx): Promise<SectionResult> {
  const n = c.quick ? 12 : 40;
  const rowsN = c.quick ? 200 : 1000;
  const db = c.stack.pool;
  // Both sides warmed with a few new texts before timing: a session's first calls compile the
  // PL/pgSQL functions and open the side connection, and the worker's and the in-process model's
  // first calls run cold code; 12 timed calls put the median among those otherwise.
  for (let i = 0; i < 5; i++) {
    await db.query(`select ai.embed($1, $2)`, [EMBED, sentence(i, 'sql-warm-')]);
    await embedInProcess(c.embed, [sentence(i, 'ip-warm-')]);
  }
  const one: number[] = [];
  const ip: number[] = [];
  progress(`sql: ${n} single ai.embed calls`);
  const oneSince = new Date();
  // Client clock at each call's start and end (epoch ms, sub-ms): the server's clocks are the same
  // host's, so the hops before the request is queued and after it finished show too.
  const edges: { text: string; start: number; end: number }[] = [];
  for (let i = 0; i < n; i++) {
    const text = sentence(i, 'sql-one-');
    let t = performance.now();
    await db.query(`select ai.embed($1, $2)::text`, [EMBED, text]);
    one.push(performance.now() - t);
    edges.push({ text, start: performance.timeOrigin + t, end: performance.timeOrigin + performance.now() });
    t = performance.now();
    await embedInProcess(c.embed, [sentence(i, 'ip-one-')]);
    ip.push(performance.now() - t);
  }
  const oneTl = await sqlClocks(db, oneSince);
  const hops = (await db.query<{ before: number; after: number }>(`
    select percentile_cont(0.5) within group (order by extract(epoch from r.queued_at) * 1000 - e.start) as before,
           percentile_cont(0.5) within group (order by e.finish - extract(epoch from r.finished_at) * 1000) as after
      from unnest($2::text[], $3::float8[], $4::float8[]) e(text, start, finish)
      join ai.requests r on r.model = $1 and r.params->>'source' = 'sql' and r.input->'input'->>0 = e.text`,
    [EMBED, edges.map((e) => e.text), edges.map((e) => e.start), edges.map((e) => e.end)])).rows[0]!;
  await db.query(`create table bench_docs (id int primary key, body text not null, e vector(384))`);
  await db.query(`create table bench_docs2 (id int primary key, body text not null, e vector(384))`);
  await db.query(`insert into bench_docs select i, $1 || i || ' ' || repeat('word ', 5 + i % 20) from generate_series(1, $2) i`, ['row-a-', rowsN]);
  await db.query(`insert into bench_docs2 select i, $1 || i || ' ' || repeat('word ', 5 + i % 20) from generate_series(1, $2) i`, ['row-b-', rowsN]);
  progress(`sql: update of ${rowsN} rows, one ai.embed call per row`);
  const perRowSince = new Date();
  let t = performance.now();
  await db.query(`update bench_docs set e = ai.embed($1, body)`, [EMBED]);
  const perRowMs = performance.now() - t;
  // Where a row's time goes, on the server's clocks (medians over the update's requests).
  const perRowTl = await sqlClocks(db, perRowSince);
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
  // Three in-process runs, the median: one sample on a shared machine moved by 2× between runs.
  const ipRuns: number[] = [];
  for (let k = 0; k < 3; k++) {
    t = performance.now();
    await embedInProcess(c.embed, texts.map((x) => `${x} ${k}`));
    ipRuns.push(performance.now() - t);
  }
  const ipBatchMs = ipRuns.sort((a, b) => a - b)[1]!;
  await db.query('drop table bench_docs, bench_docs2');
  const s = { one: stat(one), ip: stat(ip) };
  const perRowRate = perSec(rowsN, perRowMs);
  const arrayRate = perSec(rowsN, arrayMs);
  const ipRate = perSec(rowsN, ipBatchMs);
  const single = (v: number) => stat([v]);
  return {
    rows: [
      { id: 'sql.embed_one', figure: 'select ai.embed(model, text): one new text, latency', unit: 'ms', gateway: s.one, inproc: s.ip, compare: minus(s.one, s.ip), target: 'p50 ≤ in-process + 5 ms', met: minus(s.one, s.ip).value <= 5,
        note: `medians: call→queued ${num(Number(hops.before))} ms, queued→claimed ${num(Number(oneTl.wait))} ms, claimed→finished ${num(Number(oneTl.run))} ms (of which the model call ${num(Number(oneTl.model))} ms), finished→returned ${num(Number(hops.after))} ms` },
      { id: 'sql.update_rows', figure: `update of ${rowsN} rows set e = ai.embed(model, body)`, unit: 'rows/s', gateway: single(perRowRate), inproc: single(ipRate), compare: { kind: 'ratio', value: perRowRate / ipRate, unit: '×' }, target: '≥ 100 rows/s', met: perRowRate >= 100, note: `${(perRowMs / 1000).toFixed(1)} s; in-process: one batch of ${rowsN} (median of 3); server clocks, medians per row: queued→claimed ${num(Number(perRowTl.wait))} ms, claimed→finished ${num(Number(perRowTl.run))} ms (of which the model call ${num(Number(perRowTl.model))} ms), finished→next queued ${num(Number(perRowTl.gap))} ms` },
      { id: 'sql.update_array', figure: `the same ${rowsN} rows with one ai.embed(model, text[]) call`, unit: 'rows/s', gateway: single(arrayRate), inproc: single(ipRate), compare: { kind: 'ratio', value: arrayRate / ipRate, unit: '×' }, target: '≥ 0.8× in-process batch', met: arrayRate / ipRate >= 0.8, note: `${(arrayMs / 1000).toFixed(1)} s` },
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
  const deadlineAt = t0 + deadlineMs;
  const results = await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      open++;
      peakOpen = Math.max(peakOpen, open);
      const r = await chatStream(
        c.stack,
        { model: TINY, messages: prompt(i), max_tokens: T, temperature: 0 },
        // A stream still open at the deadline, or silent for a minute, is an error (never dropped).
        { deadlineAt, stallMs: 60_000, onHeaders: () => (peakHeaders = Math.max(peakHeaders, ++withHeaders)) },
      );
      open--;
      if (r.headersAt !== null) withHeaders--;
      return r;
    }),
  );
  const wallMs = performance.now() - t0;
  sampling = false;
  await sampler;
  const after = await memoryOf(pid);
  const errors = failed(results);
  const late = results.filter((r) => r.error?.startsWith('deadline') || r.error?.startsWith('stalled')).length;
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
      { id: 'capacity.errors', figure: `${N} concurrent streams: errors`, unit: 'errors', gateway: stat([errors.length]), inproc: null, compare: null, target: '0', met: errors.length === 0, note: `${completed} completed with [DONE]${late ? `, ${late} stalled or still open at the ${deadlineMs / 1000} s deadline (errors)` : ''} in ${(wallMs / 1000).toFixed(1)} s; peak ${peakOpen} open client-side, ${peakSockets} sockets in serve, ${peakUnfinished} unfinished requests` },
      { id: 'capacity.rss', figure: `${N} concurrent streams: gateway peak RSS`, unit: 'MiB', gateway: stat([peakMiB]), inproc: null, compare: { kind: 'minus', value: peakMiB - before.rss, unit: 'MiB over idle' }, target: null, met: null, note: `/health p50 ${pct(health, 50)?.toFixed(1)} ms, max ${Math.max(...health).toFixed(1)} ms under load` },
    ],
    raw: {
      streams: N, max_tokens: T, model: TINY, wall_ms: wallMs, deadline_ms: deadlineMs, completed, stalled_or_late: late, errors: errors.length, error_kinds: Object.fromEntries(byError),
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

// ---------------------------------------------------------------- issue 17: a batch beside interactive requests

/**
 * Interactive one-token chat requests (tiny model), sent one after another, with the queue idle
 * and while an OpenAI Batch API job of `lines` chat requests to the same model runs: batch work is
 * claimed after interactive work, with a quarter of the slots kept for it (ai.claim_chat), so the
 * interactive p50 should stay within 1.5× of idle. Rounds alternate idle and batch.
 */
export async function batch(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 1 : 3;
  const lines = c.quick ? 300 : 1000;
  const perSide = c.quick ? 30 : 60;
  const auth = { authorization: `Bearer ${c.stack.key}` };
  const one = async (i: number) => {
    const r = await chatOnce(c.stack, { model: TINY, messages: shortPrompt(i), max_tokens: 1, temperature: 0 });
    if (r.error) throw new Error(`interactive request: ${r.error}`);
    return r.ms;
  };
  const idle: number[] = [];
  const during: number[] = [];
  const batchSeconds: number[] = [];
  for (let r = 0; r < rounds; r++) {
    progress(`batch round ${r + 1}/${rounds}: ${perSide} interactive requests idle`);
    for (let i = 0; i < perSide; i++) idle.push(await one(5000 + r * 1000 + i));
    const jsonl = Array.from({ length: lines }, (_, i) =>
      JSON.stringify({ custom_id: `r${r}-${i}`, method: 'POST', url: '/v1/chat/completions', body: { model: TINY, messages: prompt(i), max_tokens: 16, temperature: 0 } }),
    ).join('\n');
    const form = new FormData();
    form.append('purpose', 'batch');
    form.append('file', new Blob([jsonl], { type: 'application/jsonl' }), `bench-${r}.jsonl`);
    const file = (await (await fetch(`${c.stack.base}/v1/files`, { method: 'POST', headers: auth, body: form })).json()) as { id?: string; error?: unknown };
    if (!file.id) throw new Error(`file upload: ${JSON.stringify(file)}`);
    const created = await fetch(`${c.stack.base}/v1/batches`, {
      method: 'POST', headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' }),
    });
    const b = (await created.json()) as { id?: string };
    if (!b.id) throw new Error(`batch create: ${JSON.stringify(b)}`);
    const t0 = performance.now();
    progress(`batch round ${r + 1}/${rounds}: ${perSide} interactive requests beside a batch of ${lines}`);
    // Wait for the batch to be under way, then time requests while it runs.
    for (let k = 0; k < 100; k++) {
      const q = await c.stack.pool.query<{ n: number }>(`select count(*)::int as n from ai.requests where batch_id is not null and status = 'running'`);
      if (q.rows[0]!.n > 0) break;
      await sleep(50);
    }
    let timedDuringBatch = 0;
    for (let i = 0; i < perSide; i++) {
      const ms = await one(6000 + r * 1000 + i);
      const left = await c.stack.pool.query<{ n: number }>(`select count(*)::int as n from ai.requests where batch_id is not null and status in ('queued', 'running')`);
      // Only requests that ran while batch work was still queued or running count.
      if (left.rows[0]!.n > 0) {
        during.push(ms);
        timedDuringBatch++;
      }
    }
    for (let k = 0; ; k++) {
      const st = (await (await fetch(`${c.stack.base}/v1/batches/${b.id}`, { headers: auth })).json()) as { status: string; request_counts?: { completed: number; failed: number } };
      if (['completed', 'failed', 'cancelled', 'expired'].includes(st.status)) {
        if (st.status !== 'completed' || st.request_counts?.failed) throw new Error(`batch ended ${st.status}: ${JSON.stringify(st.request_counts)}`);
        break;
      }
      if (k > 3000) throw new Error('batch did not finish within 5 minutes');
      await sleep(100);
    }
    batchSeconds.push((performance.now() - t0) / 1000);
    if (timedDuringBatch < perSide / 2) progress(`batch round ${r + 1}: only ${timedDuringBatch} interactive requests overlapped the batch`);
  }
  const s = { idle: stat(idle), during: stat(during) };
  const ratio = s.during.median / s.idle.median;
  return {
    rows: [
      {
        id: 'batch.interactive',
        figure: `1-token interactive chat p50 beside a Batch API job of ${lines} chat requests (tiny model), vs idle`,
        unit: 'ms', gateway: s.during, inproc: null,
        compare: { kind: 'ratio', value: ratio, unit: `× idle (${s.idle.median.toFixed(1)} ms)` },
        target: '≤ 1.5× idle (issue 17)', met: during.length > 0 && ratio <= 1.5,
        note: `${during.length} of ${rounds * perSide} interactive requests overlapped batch work; batches took ${batchSeconds.map((x) => x.toFixed(1)).join(', ')} s`,
      },
    ],
    raw: { rounds, lines, idle_ms: idle, during_ms: during, batch_seconds: batchSeconds },
  };
}

export const SECTIONS = { overhead, streaming, dataplane, embeddings, concurrency, sql, scaleout, capacity, join, constrained, batch, sampling, prefix, int8, context, vectorizer } as const;
export type SectionName = keyof typeof SECTIONS;
