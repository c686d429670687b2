import { describe, expect, it } from 'vitest';
import { drawToken, makeRng, sampleToken, type Sampling } from '../../../src/worker/generation/sampler.js';

/**
 * The sampler's partial selection against the straightforward computation: every weight, a full
 * sort, the prefix, and the draw over the kept tokens in id order. Exact equality of tokens, for
 * the same rng value, over random rows of many shapes.
 */
function reference(raw: Float32Array, p: Sampling, u: number): number {
  const V = raw.length;
  if (p.temperature < 1e-5) {
    let best = 0;
    for (let i = 1; i < V; i++) if (raw[i]! > raw[best]!) best = i;
    return best;
  }
  let max = -Infinity;
  for (const l of raw) if (l > max) max = l;
  const w = new Float32Array(V);
  for (let i = 0; i < V; i++) w[i] = Math.exp((raw[i]! - max) * (1 / p.temperature));
  const ids = Array.from({ length: V }, (_, i) => i);
  let kept = new Set(ids);
  if (p.topK && p.topK > 0 && p.topK < V) {
    const byLogit = [...ids].sort((a, b) => raw[b]! - raw[a]! || a - b);
    kept = new Set(byLogit.slice(0, p.topK));
  }
  let total = 0;
  for (const i of ids) if (kept.has(i)) total += w[i]!;
  if (p.topP < 1) {
    const byWeight = ids.filter((i) => kept.has(i)).sort((a, b) => w[b]! - w[a]! || a - b);
    const nucleus = new Set<number>();
    let mass = 0;
    for (const i of byWeight) {
      if (w[i] === 0) break;
      nucleus.add(i);
      mass += w[i]!;
      if (mass >= p.topP * total) break;
    }
    kept = nucleus;
    total = 0;
    for (const i of ids) if (kept.has(i)) total += w[i]!;
  }
  let x = u * total;
  let last = -1;
  for (const i of ids) {
    if (!kept.has(i) || w[i] === 0) continue;
    last = i;
    x -= w[i]!;
    if (x <= 0) return i;
  }
  return last;
}

/** Rows a model can give: flat (random weights), peaked (trained), quantised (ties), masked. */
function randomRow(r: () => number, V: number, kind: number): Float32Array {
  const row = new Float32Array(V);
  for (let i = 0; i < V; i++) {
    const g = Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
    if (kind === 0) row[i] = g * 0.05;
    else if (kind === 1) row[i] = g * 4 + (r() < 0.002 ? 15 : 0);
    else if (kind === 2) row[i] = Math.round(g * 2);
    else row[i] = r() < 0.7 ? -Infinity : g;
  }
  if (kind === 3) row[Math.floor(r() * V)] = 1; // at least one token allowed
  return row;
}

describe('drawToken against a full-softmax reference', () => {
  it('picks the same token for the same rng value on 4,000 random rows', () => {
    const r = makeRng(20261130);
    const temperatures = [0, 0.3, 0.8, 1, 1.7];
    const topPs = [1, 0.99999999, 0.95, 0.5, 0.1, 0];
    const topKs = [0, 1, 5, 50, 100_000];
    let mismatches = 0;
    const kinds = new Set<string>();
    for (let trial = 0; trial < 4000; trial++) {
      const V = 1 + Math.floor(r() * (trial % 10 === 0 ? 6000 : 400));
      const row = randomRow(r, V, trial % 4);
      const p: Sampling = {
        temperature: temperatures[trial % temperatures.length]!,
        topP: topPs[Math.floor(r() * topPs.length)]!,
        topK: topKs[Math.floor(r() * topKs.length)]!,
        frequencyPenalty: 0,
        presencePenalty: 0,
      };
      const u = trial % 50 === 0 ? (2 ** 32 - 1) / 2 ** 32 : r();
      const got = drawToken(Float32Array.from(row), p, () => u);
      const want = reference(row, p, u);
      if (got !== want) mismatches++;
      kinds.add(`${p.topP < 1}:${(p.topK ?? 0) > 0 && p.topK! < V}`);
    }
    expect(kinds.size).toBe(4);
    expect(mismatches).toBe(0);
  });

  it('gives the reference sequence for seeded streams (temperature 0.8, top_p 0.95, and top_k 40)', () => {
    for (let seed = 0; seed < 40; seed++) {
      const rows = makeRng(seed + 1000);
      const p: Sampling = { temperature: 0.8, topP: 0.95, topK: seed % 2 ? 40 : 0, frequencyPenalty: 0, presencePenalty: 0 };
      const ours = makeRng(seed);
      const theirs = makeRng(seed);
      for (let t = 0; t < 50; t++) {
        const row = randomRow(rows, 3000, t % 3);
        const u = theirs();
        expect(sampleToken(Float32Array.from(row), new Map(), p, ours)).toBe(reference(row, p, u));
      }
    }
  });

  it('top_k keeps only the k most likely tokens (ties to the lower id)', () => {
    const logits = [1, 5, 5, 3, 0, 5];
    const seen = new Set<number>();
    const rng = makeRng(4);
    for (let i = 0; i < 2000; i++) seen.add(drawToken(Float32Array.from(logits), { temperature: 5, topP: 1, topK: 2, frequencyPenalty: 0, presencePenalty: 0 }, rng));
    expect([...seen].sort()).toEqual([1, 2]);
  });
});
