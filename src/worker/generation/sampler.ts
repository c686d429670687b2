import type { SamplingParams } from '../../protocol/chat.js';
import { largestK, nucleus, scratch } from './select.js';

/**
 * Seeded PRNG (splitmix32-style mixing of a 53-bit seed, then mulberry32). The same seed and
 * parameters give the same tokens: transformers.js samples with Math.random, which cannot be
 * seeded, so sampling is ours.
 */
export function makeRng(seed: number, stream = 0): () => number {
  const hi = Math.floor(seed / 0x1_0000_0000) >>> 0;
  // `stream` (the choice index) is mixed in separately: `seed + index` would collide near 2^53.
  let a = (seed >>> 0) ^ Math.imul(hi ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(stream + 1, 0xc2b2ae35);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Temperatures below this are greedy: dividing logits by ~0 only amplifies float noise. */
const GREEDY_BELOW = 1e-5;

/** `topK`: keep the k most likely tokens before top_p (vLLM's extension; 0 or absent: all). */
export type Sampling = Pick<SamplingParams, 'temperature' | 'topP' | 'frequencyPenalty' | 'presencePenalty'> & { topK?: number };

/**
 * OpenAI's penalties: logit[t] -= count[t] * frequency_penalty + (count[t] > 0) * presence_penalty,
 * over the tokens this completion has produced so far. Mutates `logits`.
 */
export function applyPenalties(logits: Float32Array, counts: Map<number, number>, p: Sampling): void {
  if (p.frequencyPenalty === 0 && p.presencePenalty === 0) return;
  for (const [token, count] of counts) logits[token] = logits[token]! - (count * p.frequencyPenalty + p.presencePenalty);
}

function argmax(logits: Float32Array): number {
  let best = 0;
  let bestValue = logits[0]!;
  for (let i = 1; i < logits.length; i++) {
    if (logits[i]! > bestValue) {
      bestValue = logits[i]!;
      best = i;
    }
  }
  return best;
}

/**
 * Picks the next token from one row of logits (mutated in place). Greedy at temperature 0;
 * otherwise softmax(logits / T), restricted to the top_k most likely tokens, then to the smallest
 * set of tokens whose mass reaches top_p, sampled with `rng`.
 */
export function sampleToken(logits: Float32Array, counts: Map<number, number>, p: Sampling, rng: () => number): number {
  applyPenalties(logits, counts, p);
  return drawToken(logits, p, rng);
}

/**
 * `sampleToken` without the penalties (mutates `logits`: weights replace the logits they came from).
 *
 * What it costs per token, outside one read of the row: no allocation (two index buffers the size
 * of the vocabulary are kept per thread, see `scratch`), and nothing sorted. top_k is a heap of k
 * over the raw logits, so only k exponentials are taken; without it the weights are the one O(V)
 * pass (the total mass needs every token). The nucleus is found by partial selection (weighted
 * quickselect, expected linear in the candidates) over the tokens that can be in it at all: those
 * above (1 − top_p)·total / V, which are a handful for a trained model's peaked rows. Sorting the
 * 49k vocabulary per token took up to 90 ms; the bucketed pass that replaced it allocated two
 * vocabulary-sized arrays per token.
 *
 * The draw walks the kept tokens in id order, as the draw over the whole vocabulary always has,
 * so with top_p = 1 and no top_k a seeded request gives the tokens it gave before; with top_p < 1
 * the kept set and its distribution are the same as before, the order the rng walks them is not.
 */
export function drawToken(logits: Float32Array, p: Sampling, rng: () => number): number {
  if (p.temperature < GREEDY_BELOW) return argmax(logits);
  const V = logits.length;
  const max = logits[argmax(logits)]!;
  const inv = 1 / p.temperature;
  const topK = p.topK !== undefined && p.topK > 0 && p.topK < V ? Math.floor(p.topK) : 0;
  if (topK > 0) {
    const { cand } = scratch(V);
    const n = largestK(logits, topK, cand);
    let total = 0;
    for (let j = 0; j < n; j++) {
      const i = cand[j]!;
      logits[i] = weight(logits[i]!, max, inv);
      total += logits[i]!;
    }
    return drawAmong(logits, cand, n, total, p.topP, rng);
  }
  let total = 0;
  for (let i = 0; i < V; i++) {
    logits[i] = weight(logits[i]!, max, inv);
    // Sum what is stored (float32), not the float64 exponential: the draw walks the stored
    // values, and a total larger than their sum would fall off the end of the vocabulary.
    total += logits[i]!;
  }
  if (p.topP >= 1) return drawFrom(logits, total, rng);
  // Tokens at or below θ hold at most V·θ = total − target of the mass, so the nucleus lies
  // above it (the margin keeps rounding on the safe side: more candidates, never fewer).
  const theta = ((1 - p.topP) * total * (1 - 1e-6)) / V;
  const { cand } = scratch(V);
  let n = 0;
  for (let i = 0; i < V; i++) if (logits[i]! > theta) cand[n++] = i;
  return nucleus(logits, cand, n, p.topP * total, rng);
}

/** exp((l − max) / T); below e^-104 a float32 is 0 anyway (and −∞, a masked token, is skipped). */
function weight(logit: number, max: number, inv: number): number {
  const s = (logit - max) * inv;
  return s < -104 ? 0 : Math.exp(s);
}

/** Draws among `cand[0..n)` (ascending ids, weights in `w`), after top_p if it is below 1. */
function drawAmong(w: Float32Array, cand: Int32Array, n: number, total: number, topP: number, rng: () => number): number {
  if (topP < 1) {
    const theta = ((1 - topP) * total * (1 - 1e-6)) / n;
    let kept = 0;
    for (let j = 0; j < n; j++) if (w[cand[j]!]! > theta) cand[kept++] = cand[j]!;
    return nucleus(w, cand, kept, topP * total, rng);
  }
  let u = rng() * total;
  let last = cand[0]!;
  for (let j = 0; j < n; j++) {
    const i = cand[j]!;
    if (w[i]! === 0) continue;
    last = i;
    u -= w[i]!;
    if (u <= 0) return i;
  }
  return last;
}

function drawFrom(weights: Float32Array, total: number, rng: () => number): number {
  let u = rng() * total;
  let last = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i]! === 0) continue;
    last = i;
    u -= weights[i]!;
    if (u <= 0) return i;
  }
  return last; // rounding left a sliver: the last token that can be drawn at all
}
