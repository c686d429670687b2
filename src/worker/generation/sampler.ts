import type { SamplingParams } from '../../protocol/chat.js';

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

export type Sampling = Pick<SamplingParams, 'temperature' | 'topP' | 'frequencyPenalty' | 'presencePenalty'>;

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
 * otherwise softmax(logits / T), restricted to the smallest set of tokens whose mass reaches
 * top_p, sampled with `rng`.
 */
export function sampleToken(logits: Float32Array, counts: Map<number, number>, p: Sampling, rng: () => number): number {
  applyPenalties(logits, counts, p);
  return drawToken(logits, p, rng);
}

/** `sampleToken` without the penalties: greedy, or temperature and top_p (mutates `logits`). */
export function drawToken(logits: Float32Array, p: Sampling, rng: () => number): number {
  if (p.temperature < GREEDY_BELOW) return argmax(logits);
  const max = logits[argmax(logits)]!;
  const inv = 1 / p.temperature;
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    logits[i] = Math.exp((logits[i]! - max) * inv);
    // Sum what is stored (float32), not the float64 exponential: the draw walks the stored
    // values, and a total larger than their sum would fall off the end of the vocabulary.
    total += logits[i]!;
  }
  if (p.topP >= 1) return drawFrom(logits, total, rng);
  return drawTopP(logits, total, p.topP, rng);
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

/**
 * Nucleus sampling without sorting the whole vocabulary: tokens above the mean weight are
 * sorted first; only if they fall short of top_p (a very flat distribution) is everything sorted.
 */
function drawTopP(weights: Float32Array, total: number, topP: number, rng: () => number): number {
  const target = topP * total;
  const pick = (candidates: number[], everything: boolean): number | null => {
    candidates.sort((x, y) => weights[y]! - weights[x]! || x - y);
    let mass = 0;
    let end = 0;
    while (end < candidates.length && mass < target) mass += weights[candidates[end++]!]!;
    // With every token in, a shortfall is only summation-order rounding: take them all.
    if (mass < target && !everything) return null;
    let u = rng() * mass;
    for (let i = 0; i < end; i++) {
      u -= weights[candidates[i]!]!;
      if (u <= 0) return candidates[i]!;
    }
    return candidates[end - 1]!;
  };
  const mean = total / weights.length;
  const heavy: number[] = [];
  for (let i = 0; i < weights.length; i++) if (weights[i]! > mean) heavy.push(i);
  return pick(heavy, false) ?? pick(Array.from(weights.keys()), true)!;
}
