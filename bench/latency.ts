/**
 * Sections 1 and 2: what the gateway adds to one short request (queue overhead) and to a stream
 * (time to first token, decode rate), on the SmolLM2-shaped model and on the tiny fixture model
 * (where the model costs almost nothing, so the figure is nearly all gateway).
 *
 * Fairness: the two sides run in a random order (fixed seed) with a settle gap between them;
 * the in-process side is timed from the messages (chat template and tokenization included, as in
 * the gateway); tails are percentiles over pooled samples (≥ 400 per side in a full run), not the
 * max of a few dozen; gateway-vs-in-process is the median of per-round comparisons; a request or
 * stream that fails, stalls or misses its deadline is counted as an error and misses the target.
 */
import { CHAT, TINY, chatOnce, chatStream, cpuDuring, type StreamResult } from './gateway.js';
import type { InProcessChat } from './inproc.js';
import { bothSides, chatBody, decodeRate, errorsNote, num, perSec, prompt, seeded, shortPrompt, SETTLE_GAP_MS, type Ctx, type Row, type SectionResult } from './kit.js';
import { median, pct, progress, sleep, stat } from './lib.js';

/** Gap between the two sides of one 1-token pair, and after each pair. */
const PAIR_GAP_MS = 20;

interface OneTokenSamples {
  gateway: number[][];
  inproc: number[][];
  errors: string[];
  requests: number;
}

/** `rounds` × `n` pairs of a 1-token request: through the gateway and in-process, in a random order. */
async function oneTokenPairs(c: Ctx, model: string, chat: InProcessChat, rounds: number, n: number, seed: number): Promise<OneTokenSamples> {
  const rand = seeded(seed);
  const body = (i: number) => chatBody(i, 1, { model }, shortPrompt(i));
  for (let i = 0; i < 3; i++) {
    await chatOnce(c.stack, body(1000 + i));
    await chat.generateChat(shortPrompt(1000 + i), 1);
  }
  const out: OneTokenSamples = { gateway: [], inproc: [], errors: [], requests: 0 };
  for (let r = 0; r < rounds; r++) {
    progress(`overhead ${model} round ${r + 1}/${rounds} (${n} pairs)`);
    const g: number[] = [];
    const p: number[] = [];
    for (let i = 0; i < n; i++) {
      const k = r * n + i;
      const { g: res, p: t } = await bothSides(
        rand,
        () => chatOnce(c.stack, body(k)),
        async () => {
          const t0 = performance.now();
          await chat.generateChat(shortPrompt(k), 1);
          return performance.now() - t0;
        },
        PAIR_GAP_MS,
      );
      await sleep(PAIR_GAP_MS);
      out.requests++;
      p.push(t);
      if (res.error) out.errors.push(res.error);
      else if (res.completionTokens !== 1) out.errors.push(`expected 1 token, got ${res.completionTokens}`);
      else g.push(res.ms);
    }
    out.gateway.push(g);
    out.inproc.push(p);
    await sleep(SETTLE_GAP_MS);
  }
  return out;
}

/** Two rows (p50, p99) for one model's 1-token pairs. */
function overheadRows(id: string, label: string, s: OneTokenSamples, target: { p50: number; p99: number }, quick: boolean, note?: string): Row[] {
  const g50 = stat(s.gateway.map((x) => pct(x, 50)));
  const i50 = stat(s.inproc.map((x) => pct(x, 50)));
  const d50 = median(s.gateway.map((x, r) => pct(x, 50) - pct(s.inproc[r]!, 50)));
  const gAll = s.gateway.flat();
  const iAll = s.inproc.flat();
  const g99 = pct(gAll, 99);
  const i99 = pct(iAll, 99);
  const d99 = g99 - i99;
  const ok = s.errors.length === 0;
  const errs = errorsNote(s.errors.length, s.requests, s.errors);
  const samples = `p99 of ${gAll.length} gateway and ${iAll.length} in-process samples over ${s.gateway.length} rounds${quick && gAll.length < 400 ? ' (quick run: too few samples for a real p99, close to the max)' : ''}`;
  return [
    { id: `${id}.p50`, figure: `${label}, p50 latency`, unit: 'ms', gateway: g50, inproc: i50, compare: { kind: 'minus', value: d50, unit: 'ms' }, target: `overhead ≤ ${target.p50} ms`, met: ok && d50 <= target.p50, note: `${note ? `${note}; ` : ''}overhead: median of per-round differences${errs}` },
    { id: `${id}.p99`, figure: `${label}, p99 latency`, unit: 'ms', gateway: stat([g99]), inproc: stat([i99]), compare: { kind: 'minus', value: d99, unit: 'ms' }, target: `overhead ≤ ${target.p99} ms`, met: ok && d99 <= target.p99, note: `${samples}${errs}` },
  ];
}

async function serverBreakdown(c: Ctx, model: string, n: number): Promise<string | undefined> {
  const q = await c.stack.pool.query<{ queue_ms: number; run_ms: number; first_token_ms: number }>(`
    select percentile_cont(0.5) within group (order by extract(epoch from started_at - queued_at) * 1000) as queue_ms,
           percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at) * 1000) as run_ms,
           percentile_cont(0.5) within group (order by extract(epoch from first_token_at - started_at) * 1000) as first_token_ms
      from (select * from ai.requests where model = $1 and status = 'completed' order by queued_at desc limit $2) r`, [model, n]);
  const b = q.rows[0];
  return b && b.queue_ms !== null ? `server clocks, p50: queued→started ${num(b.queue_ms)} ms, started→first token ${num(b.first_token_ms)} ms, started→finished ${num(b.run_ms)} ms` : undefined;
}

// ---------------------------------------------------------------- 1. queue overhead

export async function overhead(c: Ctx): Promise<SectionResult> {
  // Full: ≥ 400 samples per side for each p99; quick: a few dozen (the p99 is then near the max).
  const big = c.quick ? { rounds: 2, n: 20 } : { rounds: 5, n: 80 };
  const tiny = c.quick ? { rounds: 2, n: 50 } : { rounds: 5, n: 100 };
  const sBig = await oneTokenPairs(c, CHAT, c.chat, big.rounds, big.n, 1);
  const bigWhere = await serverBreakdown(c, CHAT, big.n);
  const sTiny = await oneTokenPairs(c, TINY, c.tiny, tiny.rounds, tiny.n, 2);
  const tinyWhere = await serverBreakdown(c, TINY, tiny.n);
  const tokens = (chat: InProcessChat) => `prompt ${chat.promptIds(shortPrompt(0)).length} tokens`;
  return {
    rows: [
      ...overheadRows('overhead', '1-token chat completion', sBig, { p50: 5, p99: 20 }, c.quick, [bigWhere, tokens(c.chat)].filter(Boolean).join('; ')),
      ...overheadRows('overhead.tiny', '1-token chat completion, tiny model', sTiny, { p50: 3, p99: 15 }, c.quick, [tinyWhere, tokens(c.tiny)].filter(Boolean).join('; ')),
    ],
    raw: {
      order: 'each pair in a random order (seeded), 20 ms between sides and after each pair, 500 ms between rounds',
      smollm2: { ...big, latencies_ms: { gateway: sBig.gateway, inproc: sBig.inproc }, errors: sBig.errors, server_side: bigWhere },
      tiny: { ...tiny, latencies_ms: { gateway: sTiny.gateway, inproc: sTiny.inproc }, errors: sTiny.errors, server_side: tinyWhere },
    },
  };
}

// ---------------------------------------------------------------- 2. streaming

interface StreamRounds {
  g: { ttft: number[]; rate: number[]; tokens: number[]; chunks: number[] };
  p: { ttft: number[]; rate: number[]; tokens: number[] };
  cpu: { worker: number[]; serve: number[]; postgres: number[]; inproc: number[] };
  errors: string[];
  gatewayFirst: boolean[];
}

async function streamRounds(c: Ctx, model: string, chat: InProcessChat, rounds: number, T: number, seed: number, offset: number): Promise<StreamRounds> {
  const rand = seeded(seed);
  const out: StreamRounds = {
    g: { ttft: [], rate: [], tokens: [], chunks: [] }, p: { ttft: [], rate: [], tokens: [] },
    cpu: { worker: [], serve: [], postgres: [], inproc: [] }, errors: [], gatewayFirst: [],
  };
  await chatStream(c.stack, chatBody(offset - 1, 4, { model }));
  await chat.generateChat(prompt(offset - 1), 4);
  for (let r = 0; r < rounds; r++) {
    progress(`streaming ${model} round ${r + 1}/${rounds}`);
    const { g, p, gatewayFirst } = await bothSides(
      rand,
      () => cpuDuring(c.stack, () => chatStream(c.stack, chatBody(offset + r, T, { model }))),
      async () => {
        const u0 = process.cpuUsage();
        const t = await chat.generateChat(prompt(offset + r), T);
        const u1 = process.cpuUsage(u0);
        return { t, cpuS: (u1.user + u1.system) / 1e6 };
      },
    );
    out.gatewayFirst.push(gatewayFirst);
    const s: StreamResult = g.result;
    out.cpu.worker.push(g.workerS);
    out.cpu.serve.push(g.serveS);
    out.cpu.postgres.push(g.postgresS);
    out.cpu.inproc.push(p.cpuS);
    out.p.ttft.push(p.t.firstTokenMs);
    out.p.rate.push(perSec(p.t.tokens - 1, p.t.totalMs - p.t.firstTokenMs));
    out.p.tokens.push(p.t.tokens);
    // A failed stream stays in the figures as NaN (its round has no comparison) and is counted.
    if (s.error) out.errors.push(s.error);
    out.g.ttft.push(s.error || s.firstTokenAt === null ? NaN : s.firstTokenAt - s.sentAt);
    out.g.rate.push(s.error ? NaN : decodeRate(s));
    out.g.tokens.push(s.completionTokens);
    out.g.chunks.push(s.textChunks);
    await sleep(SETTLE_GAP_MS);
  }
  return out;
}

const finite = (xs: number[]) => xs.filter((x) => Number.isFinite(x));
/** Median over rounds of a per-round comparison; NaN when no round has both sides. */
const perRound = (a: number[], b: number[], f: (x: number, y: number) => number) => {
  const v = finite(a.map((x, i) => f(x, b[i]!)));
  return v.length ? median(v) : NaN;
};

export async function streaming(c: Ctx): Promise<SectionResult> {
  const big = { rounds: c.quick ? 2 : 5, T: 128 };
  const tiny = { rounds: c.quick ? 3 : 8, T: 256 };
  const b = await streamRounds(c, CHAT, c.chat, big.rounds, big.T, 3, 0);
  const t = await streamRounds(c, TINY, c.tiny, tiny.rounds, tiny.T, 4, 50);
  const rows: Row[] = [];
  for (const [id, label, s, T, ttftTarget] of [['streaming', '', b, big.T, 10], ['streaming.tiny', ', tiny model', t, tiny.T, null]] as const) {
    const gt = stat(finite(s.g.ttft));
    const pt = stat(s.p.ttft);
    const gr = stat(finite(s.g.rate));
    const pr = stat(s.p.rate);
    const dTtft = perRound(s.g.ttft, s.p.ttft, (x, y) => x - y);
    const rRate = perRound(s.g.rate, s.p.rate, (x, y) => x / y);
    const ok = s.errors.length === 0;
    const errs = errorsNote(s.errors.length, s.g.rate.length, s.errors);
    const tokens = `${Math.min(...s.g.tokens)}–${Math.max(...s.g.tokens)} tokens per gateway stream, ${Math.min(...s.p.tokens)} in-process; ` +
      `CPU s per stream (median): worker ${num(median(s.cpu.worker))}, serve ${num(median(s.cpu.serve))}, postgres ${num(median(s.cpu.postgres))}; in-process ${num(median(s.cpu.inproc))}`;
    rows.push(
      { id: `${id}.ttft`, figure: `time to first token (${T}-token stream${label})`, unit: 'ms', gateway: gt, inproc: pt, compare: { kind: 'minus', value: dTtft, unit: 'ms' }, target: ttftTarget === null ? null : `overhead ≤ ${ttftTarget} ms`, met: ttftTarget === null ? null : ok && dTtft <= ttftTarget, note: `in-process timed from the messages (template and tokenization included); overhead: median of per-round differences${errs}` },
      { id: `${id}.decode`, figure: `decode tokens/s (${T}-token stream${label})`, unit: 'tok/s', gateway: gr, inproc: pr, compare: { kind: 'ratio', value: rRate, unit: '×' }, target: '≥ 0.9×', met: ok && rRate >= 0.9, note: `${tokens}; ratio: median of per-round ratios${errs}` },
    );
  }
  return {
    rows,
    raw: { order: 'sides in a random order per round (seeded), 500 ms between sides and after each round', smollm2: { ...big, ...b }, tiny: { ...tiny, ...t } },
  };
}
