import { describe, expect, it } from 'vitest';
import { applyPenalties, makeRng, sampleToken, type Sampling } from '../../../src/worker/generation/sampler.js';

const params = (over: Partial<Sampling> = {}): Sampling => ({
  temperature: 1,
  topP: 1,
  frequencyPenalty: 0,
  presencePenalty: 0,
  ...over,
});

const draws = (rng: () => number, k: number) => Array.from({ length: k }, () => rng());

/** Runs `sampleToken` `k` times on fresh copies of `logits`; returns how often each token won. */
function histogram(logits: number[], p: Sampling, rng: () => number, k: number): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < k; i++) {
    const t = sampleToken(Float32Array.from(logits), new Map(), p, rng);
    counts[t] = counts[t]! + 1;
  }
  return counts;
}

function softmax(logits: number[], temperature: number): number[] {
  const scaled = logits.map((l) => l / temperature);
  const max = Math.max(...scaled);
  const e = scaled.map((s) => Math.exp(s - max));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / total);
}

describe('makeRng', () => {
  it('gives the same sequence for the same seed', () => {
    expect(draws(makeRng(42), 50)).toEqual(draws(makeRng(42), 50));
    expect(draws(makeRng(2 ** 40 + 7), 50)).toEqual(draws(makeRng(2 ** 40 + 7), 50));
  });

  it('returns numbers in [0, 1) that are not constant', () => {
    const xs = draws(makeRng(1), 1000);
    for (const x of xs) {
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(1);
    }
    expect(new Set(xs).size).toBeGreaterThan(990);
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean).toBeGreaterThan(0.45);
    expect(mean).toBeLessThan(0.55);
  });

  it('gives different sequences for different small seeds', () => {
    const seqs = [0, 1, 2, 3, 42, -1].map((s) => JSON.stringify(draws(makeRng(s), 8)));
    expect(new Set(seqs).size).toBe(seqs.length);
  });

  it('uses the high bits of seeds above 2^32', () => {
    // Same low 32 bits, different high bits: a seed truncated to 32 bits would collide here.
    const seeds = [5, 2 ** 32 + 5, 2 ** 33 + 5, 2 ** 52 + 5, 2 ** 32, 0];
    const seqs = seeds.map((s) => JSON.stringify(draws(makeRng(s), 8)));
    expect(new Set(seqs).size).toBe(seeds.length);
  });

  it('gives different sequences for consecutive seeds (choice i uses seed + i)', () => {
    const base = 123_456_789_012;
    const first = [0, 1, 2, 3].map((i) => makeRng(base + i)());
    expect(new Set(first).size).toBe(4);
  });
});

describe('applyPenalties', () => {
  it("follows OpenAI's formula: logit -= count * frequency_penalty + presence_penalty for seen tokens", () => {
    const logits = Float32Array.from([1, 2, 3, 4]);
    const counts = new Map([
      [1, 3],
      [3, 1],
    ]);
    applyPenalties(logits, counts, params({ frequencyPenalty: 0.5, presencePenalty: 0.25 }));
    expect(Array.from(logits)).toEqual([1, 2 - (3 * 0.5 + 0.25), 3, 4 - (1 * 0.5 + 0.25)]);
  });

  it('applies negative penalties as boosts', () => {
    const logits = Float32Array.from([0, 0]);
    applyPenalties(logits, new Map([[0, 2]]), params({ frequencyPenalty: -1, presencePenalty: -0.5 }));
    expect(Array.from(logits)).toEqual([2.5, 0]);
  });

  it('leaves logits alone when both penalties are 0', () => {
    const logits = Float32Array.from([1, 2, 3]);
    applyPenalties(logits, new Map([[2, 5]]), params());
    expect(Array.from(logits)).toEqual([1, 2, 3]);
  });

  it('is applied by sampleToken before choosing (a penalised argmax loses)', () => {
    const p = params({ temperature: 0, frequencyPenalty: 1, presencePenalty: 0 });
    // token 2 leads by 1.5; seen twice it loses 2 and token 0 wins.
    expect(sampleToken(Float32Array.from([1, 0, 2.5]), new Map([[2, 2]]), p, makeRng(1))).toBe(0);
    // seen once it loses only 1 and still wins.
    expect(sampleToken(Float32Array.from([1, 0, 2.5]), new Map([[2, 1]]), p, makeRng(1))).toBe(2);
    // presence penalty alone is count-independent.
    const pres = params({ temperature: 0, presencePenalty: 2 });
    expect(sampleToken(Float32Array.from([1, 0, 2.5]), new Map([[2, 1]]), pres, makeRng(1))).toBe(0);
  });
});

describe('sampleToken', () => {
  it('is greedy at temperature 0: always the argmax, whatever the rng says', () => {
    const logits = [0.1, -3, 7.5, 7.4, 2];
    for (const u of [0, 0.3, 0.999999]) {
      expect(sampleToken(Float32Array.from(logits), new Map(), params({ temperature: 0 }), () => u)).toBe(2);
    }
    // argmax at either end of the vocabulary
    expect(sampleToken(Float32Array.from([9, 1, 2]), new Map(), params({ temperature: 0 }), () => 0.5)).toBe(0);
    expect(sampleToken(Float32Array.from([1, 2, 9]), new Map(), params({ temperature: 0 }), () => 0.5)).toBe(2);
  });

  it('maps the rng through the cumulative distribution at temperature 1', () => {
    // probabilities 0.5, 0.25, 0.25 (logits are log-probabilities)
    const logits = [Math.log(0.5), Math.log(0.25), Math.log(0.25)];
    const at = (u: number) => sampleToken(Float32Array.from(logits), new Map(), params(), () => u);
    expect(at(0)).toBe(0);
    expect(at(0.49)).toBe(0);
    expect(at(0.51)).toBe(1);
    expect(at(0.74)).toBe(1);
    expect(at(0.76)).toBe(2);
    expect(at(0.999)).toBe(2);
  });

  it('is reproducible with a seeded rng', () => {
    const logits = Array.from({ length: 100 }, (_, i) => Math.sin(i) * 3);
    const run = () => {
      const rng = makeRng(7);
      return Array.from({ length: 200 }, () => sampleToken(Float32Array.from(logits), new Map(), params({ temperature: 0.8, topP: 0.9 }), rng));
    };
    const a = run();
    expect(run()).toEqual(a);
    expect(new Set(a).size).toBeGreaterThan(1);
  });

  it('draws with frequencies close to softmax(logits / T)', () => {
    const logits = [2, 1, 0.5, 0, -1];
    const k = 40_000;
    for (const temperature of [1, 0.5, 1.7]) {
      const counts = histogram(logits, params({ temperature }), makeRng(2024), k);
      const expected = softmax(logits, temperature);
      counts.forEach((c, i) => {
        expect(Math.abs(c / k - expected[i]!), `T=${temperature} token ${i}`).toBeLessThan(0.015);
      });
    }
  });

  it('top_p restricts to the nucleus: a token with 0.9 of the mass always wins at top_p 0.5', () => {
    // token 3 has 0.9 of the mass, the rest share 0.1
    const logits = [Math.log(0.025), Math.log(0.025), Math.log(0.025), Math.log(0.9), Math.log(0.025)];
    const rng = makeRng(99);
    for (let i = 0; i < 500; i++) {
      expect(sampleToken(Float32Array.from(logits), new Map(), params({ topP: 0.5 }), rng)).toBe(3);
    }
    // even the largest possible rng draw stays in the nucleus
    expect(sampleToken(Float32Array.from(logits), new Map(), params({ topP: 0.5 }), () => 0.9999999)).toBe(3);
  });

  it('top_p keeps the smallest set of top tokens whose mass reaches top_p, renormalised', () => {
    // probabilities 0.4, 0.3, 0.2, 0.1: top_p 0.65 keeps tokens 0 and 1 (0.7), renormalised to 4/7, 3/7
    const logits = [Math.log(0.4), Math.log(0.3), Math.log(0.2), Math.log(0.1)];
    const k = 20_000;
    const counts = histogram(logits, params({ topP: 0.65 }), makeRng(5), k);
    expect(counts[2]).toBe(0);
    expect(counts[3]).toBe(0);
    expect(Math.abs(counts[0]! / k - 4 / 7)).toBeLessThan(0.02);
    expect(Math.abs(counts[1]! / k - 3 / 7)).toBeLessThan(0.02);
  });

  it('top_p works on a flat distribution (no token above the mean)', () => {
    const V = 10;
    const flat = new Array<number>(V).fill(0.3);
    const k = 10_000;
    // top_p 0.45 keeps 5 of the 10 equal tokens (ties broken by lower id)
    const counts = histogram(flat, params({ topP: 0.45 }), makeRng(11), k);
    expect(counts.slice(5).every((c) => c === 0)).toBe(true);
    for (const c of counts.slice(0, 5)) expect(Math.abs(c / k - 0.2)).toBeLessThan(0.02);
    // top_p 1 keeps them all
    const all = histogram(flat, params({ topP: 1 }), makeRng(12), k);
    for (const c of all) expect(Math.abs(c / k - 0.1)).toBeLessThan(0.02);
  });

  it('top_p falls back to the full sort when the above-mean tokens fall short', () => {
    // one heavy token (0.3) above the mean, then many light ones: top_p 0.58 needs light tokens too
    const probs = [0.3, ...new Array<number>(14).fill(0.05)];
    const logits = probs.map((x) => Math.log(x));
    const k = 20_000;
    const counts = histogram(logits, params({ topP: 0.58 }), makeRng(13), k);
    // 0.3 + 5 * 0.05 = 0.55 falls short, 0.3 + 6 * 0.05 = 0.6 reaches it: tokens 0..6 kept (ties by lower id)
    expect(counts.slice(7).every((c) => c === 0)).toBe(true);
    expect(Math.abs(counts[0]! / k - 0.5)).toBeLessThan(0.02);
    for (const c of counts.slice(1, 7)) expect(Math.abs(c / k - 0.05 / 0.6)).toBeLessThan(0.02);
  });

  it('a tiny temperature (above the greedy cut-off) still picks the argmax', () => {
    const rng = makeRng(3);
    for (let i = 0; i < 100; i++) {
      expect(sampleToken(Float32Array.from([1, 3, 2.9, -1]), new Map(), params({ temperature: 0.001 }), rng)).toBe(1);
    }
  });

  it('always returns a token id for any valid top_p, even very close to 1', () => {
    // Regression guard: the nucleus target was once computed from float64 exponentials but
    // compared with their float32-rounded copies, so for top_p within ~1e-7 of 1 the "full" set
    // fell short of the target and sampleToken returned null.
    let bad = 0;
    for (let trial = 0; trial < 300; trial++) {
      const r = makeRng(trial);
      const logits = Float32Array.from({ length: 50 }, () => r() * 3);
      const t = sampleToken(logits, new Map(), params({ temperature: 0.7, topP: 0.99999999 }), () => 0.5);
      if (!Number.isInteger(t) || t < 0 || t >= 50) bad++;
    }
    expect(bad).toBe(0);
  });

  it('never picks a token with zero probability, even with the largest rng value', () => {
    // Regression guard: the draw once scaled rng() by the float64 total but walked the
    // float32-rounded weights; when they summed short, it fell through to the LAST vocabulary id
    // regardless of its weight.
    const maxRng = () => (2 ** 32 - 1) / 2 ** 32; // the largest value makeRng can return
    let bad = 0;
    for (let trial = 0; trial < 300; trial++) {
      const r = makeRng(100_000 + trial);
      const logits = Float32Array.from({ length: 50 }, () => r() * 3);
      logits[49] = -Infinity; // a masked token
      if (sampleToken(logits, new Map(), params({ temperature: 0.7 }), maxRng) === 49) bad++;
    }
    expect(bad).toBe(0);
  });
});
