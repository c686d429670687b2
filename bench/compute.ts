/**
 * Issue 15's figures (the compute path): sampled decoding beside greedy, and prefix caching.
 * Gateway only: these compare the gateway with itself (one setting against another, interleaved
 * in each round), so the in-process column stays empty.
 */
import { chatStream, type Stack } from './gateway.js';
import { assertOk, chatBody, decodeRate, perSec, roundRatio, SETTLE_GAP_MS, type Ctx, type Row, type SectionResult } from './kit.js';
import { progress, sleep, stat } from './lib.js';

/** The sampled setting the issue names: temperature 0.8, top_p 0.95 (seeded, so rounds repeat). */
export const SAMPLED = { temperature: 0.8, top_p: 0.95, seed: 15 } as const;

async function streams(s: Stack, k: number, tokens: number, offset: number, extra: Record<string, unknown>) {
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: k }, (_, i) => chatStream(s, chatBody(offset + i, tokens, extra))));
  const wall = Math.max(...rs.map((r) => r.endAt ?? performance.now())) - t0;
  assertOk(rs, `${k} concurrent streams`);
  const total = rs.reduce((n, r) => n + r.completionTokens, 0);
  return { tokPerS: perSec(total, wall), decode: k === 1 ? decodeRate(rs[0]!) : NaN, wallMs: wall };
}

/** Greedy and sampled, one stream and eight, the four in an order that rotates each round. */
export async function sampling(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 1 : 3;
  const T = c.quick ? 32 : 128;
  const runs = { greedy1: [] as number[], greedy8: [] as number[], sampled1: [] as number[], sampled8: [] as number[], greedyDecode: [] as number[], sampledDecode: [] as number[] };
  const order: [keyof typeof runs, number, Record<string, unknown>][] = [
    ['greedy1', 1, {}], ['sampled1', 1, SAMPLED], ['greedy8', 8, {}], ['sampled8', 8, SAMPLED],
  ];
  for (let r = 0; r < rounds; r++) {
    for (let j = 0; j < order.length; j++) {
      const [name, k, extra] = order[(j + r) % order.length]!;
      progress(`sampling round ${r + 1}/${rounds}: ${name} × ${T} tokens`);
      const m = await streams(c.stack, k, T, 1000 + 10 * r + k, extra);
      runs[name].push(m.tokPerS);
      if (k === 1) runs[name === 'greedy1' ? 'greedyDecode' : 'sampledDecode'].push(m.decode);
      await sleep(SETTLE_GAP_MS);
    }
  }
  const g8 = roundRatio(runs.greedy8, runs.greedy1, '× 1 stream');
  const s8 = roundRatio(runs.sampled8, runs.sampled1, '× 1 stream');
  const sg = roundRatio(runs.sampledDecode, runs.greedyDecode, '× greedy');
  const rows: Row[] = [
    { id: 'sampling.greedy8', figure: `8 concurrent greedy streams × ${T} tokens, aggregate tokens/s`, unit: 'tok/s', gateway: stat(runs.greedy8), inproc: null, compare: g8, target: '≥ 3.2× one stream (issue 15)', met: g8.value >= 3.2 },
    { id: 'sampling.sampled8', figure: `8 concurrent sampled streams (T 0.8, top_p 0.95), aggregate tokens/s`, unit: 'tok/s', gateway: stat(runs.sampled8), inproc: null, compare: s8, target: '≥ 3.2× one stream (issue 15)', met: s8.value >= 3.2 },
    { id: 'sampling.decode1', figure: 'sampled decode at batch 1 (T 0.8, top_p 0.95), tokens/s', unit: 'tok/s', gateway: stat(runs.sampledDecode), inproc: null, compare: sg, target: '≥ 0.9× greedy (issue 15)', met: sg.value >= 0.9, note: `greedy: ${stat(runs.greedyDecode).median.toFixed(1)} tok/s; the bench model has random weights, so its rows are flat: top_p's worst case` },
  ];
  return { rows, raw: { rounds, max_tokens: T, runs } };
}
