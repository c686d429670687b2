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
 * Nucleus sampling without sorting the whole vocabulary: when the tokens above the mean weight
 * are few and hold top_p of the mass, only they are sorted; otherwise (a flat distribution, as a
 * random-weight model's) `flatNucleus` finds the boundary by buckets.
 */
function drawTopP(weights: Float32Array, total: number, topP: number, rng: () => number): number {
  const target = topP * total;
  const mean = total / weights.length;
  const heavy: number[] = [];
  let heavyMass = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i]! > mean) {
      heavy.push(i);
      heavyMass += weights[i]!;
    }
  }
  // A peaked distribution (a trained model's, mostly): a few heavy tokens hold the nucleus.
  if (heavyMass < target || heavy.length > MAX_SORTED) return flatNucleus(weights, target, rng);
  heavy.sort((x, y) => weights[y]! - weights[x]! || x - y);
  let mass = 0;
  let end = 0;
  while (end < heavy.length && mass < target) mass += weights[heavy[end++]!]!;
  let u = rng() * mass;
  for (let i = 0; i < end; i++) {
    u -= weights[heavy[i]!]!;
    if (u <= 0) return heavy[i]!;
  }
  return heavy[end - 1]!;
}

/** Above this many candidates, sorting them costs more than `flatNucleus`'s linear passes. */
const MAX_SORTED = 2048;

/** Buckets per halving of the weight, and how many: weights below max·2^-128 share the last. */
const PER_OCTAVE = 8;
const BUCKETS = 128 * PER_OCTAVE;

/**
 * The nucleus of a flat distribution in linear time (sorting a 49k vocabulary per token took
 * up to 90 ms): tokens are bucketed by weight (1/8 of an octave per bucket), the bucket where the
 * mass from the top reaches `target` is found, and only that bucket is sorted. Every token in a
 * higher bucket outweighs every token in it, so the set is the sorted prefix, as before.
 */
function flatNucleus(weights: Float32Array, target: number, rng: () => number): number {
  let max = 0;
  for (let i = 0; i < weights.length; i++) if (weights[i]! > max) max = weights[i]!;
  const bucket = new Int16Array(weights.length);
  const mass = new Float64Array(BUCKETS);
  for (let i = 0; i < weights.length; i++) {
    const w = weights[i]!;
    const b = w > 0 ? Math.min(BUCKETS - 1, Math.floor(-Math.log2(w / max) * PER_OCTAVE)) : -1;
    bucket[i] = b;
    if (b >= 0) mass[b] = mass[b]! + w;
  }
  let above = 0;
  let cut = 0;
  while (cut < BUCKETS - 1 && above + mass[cut]! < target) above += mass[cut++]!;
  const inside: number[] = [];
  const boundary: number[] = [];
  for (let i = 0; i < weights.length; i++) {
    if (bucket[i]! < 0 || bucket[i]! > cut) continue;
    (bucket[i]! < cut ? inside : boundary).push(i);
  }
  boundary.sort((x, y) => weights[y]! - weights[x]! || x - y);
  let nucleus = above;
  let end = 0;
  // Summation-order rounding may leave a sliver short of target with every token in: take them all.
  while (end < boundary.length && nucleus < target) nucleus += weights[boundary[end++]!]!;
  let u = rng() * nucleus;
  for (const i of inside) {
    u -= weights[i]!;
    if (u <= 0) return i;
  }
  for (let k = 0; k < end; k++) {
    u -= weights[boundary[k]!]!;
    if (u <= 0) return boundary[k]!;
  }
  return end > 0 ? boundary[end - 1]! : inside[inside.length - 1]!;
}
