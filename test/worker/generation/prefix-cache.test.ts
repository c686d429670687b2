import { beforeAll, describe, expect, it } from 'vitest';
import type { SamplingParams } from '../../../src/protocol/chat.js';
import type { LoadedChatModel } from '../../../src/worker/loader.js';
import { BatchScheduler } from '../../../src/worker/generation/scheduler.js';
import type { ChoiceResult } from '../../../src/worker/generation/generate.js';
import { BLOCK } from '../../../src/worker/generation/prefix-cache.js';
import { ThreadError } from '../../../src/worker/generation/thread-error.js';
import { makeRng } from '../../../src/worker/generation/sampler.js';
import { alone, aroundForward, LIMITS, loadTiny, never, noop, params, staggered } from './helpers.js';

// The prefix cache on the synthetic chat model: every request's tokens must be the tokens it
// gets on a scheduler without the cache (LIMITS leaves it off), whether its prompt came from the
// cache or not, batched, joining, leaving or cancelled, and under a budget that evicts.

let m: LoadedChatModel;
beforeAll(async () => {
  m = await loadTiny();
});

const CACHED = { ...LIMITS, prefixCacheBytes: 64 * 1024 * 1024 };
const ids = (rs: ChoiceResult[]) => rs.map((c) => c.tokenIds);

/** Prompts that share a `shared`-token prefix (a system prompt), each with its own tail. */
function sharing(count: number, shared: number, seed: number): number[][] {
  const rng = makeRng(seed);
  const tok = () => 100 + Math.floor(rng() * 40_000);
  const head = Array.from({ length: shared }, tok);
  return Array.from({ length: count }, (_, i) => [...head, ...Array.from({ length: 2 + i * 3 }, tok)]);
}

async function expected(ps: number[][], p: (i: number) => SamplingParams): Promise<number[][][]> {
  return Promise.all(ps.map(async (prompt, i) => ids(await alone(m, prompt, p(i)))));
}

describe('prefix cache', () => {
  it('greedy and seeded sampling: a shared prefix is reused, joining at different steps, and the tokens are those without the cache', async () => {
    const ps = sharing(6, 5 * BLOCK + 3, 1);
    const p = (i: number) => params({ maxTokens: 14, ...(i % 2 ? { temperature: 0.9, topP: 0.9, seed: 40 + i, n: 2 } : {}) });
    const want = await expected(ps, p);
    const s = new BatchScheduler(m, CACHED);
    const got = await staggered(s, ps, p, 2);
    expect(got.map((r) => ids(r as ChoiceResult[]))).toEqual(want);
    // Every prompt after the first found the 5 shared blocks.
    expect(s.stats.prefixHits).toBe(5);
    expect(s.stats.prefixTokensSaved).toBeGreaterThanOrEqual(5 * 5 * BLOCK);
    expect(s.stats.maxBatch).toBeGreaterThan(4);
  });

  it('requests that arrive together with one long system prompt: the first prefills it, the others reuse it', async () => {
    const ps = sharing(3, 6 * BLOCK, 10);
    const p = () => params({ maxTokens: 6 });
    const s = new BatchScheduler(m, { ...CACHED, prefillChunk: 32 });
    const got = await Promise.all(ps.map((prompt) => s.submit(prompt, p(), { signal: never, onDelta: noop })));
    expect(got.map(ids)).toEqual(await expected(ps, p));
    expect(s.stats.prefixHits).toBe(2);
    expect(s.stats.prefillTokens).toBe(ps.reduce((n, x) => n + x.length, 0) - 2 * 6 * BLOCK);
  });

  it('prompts prefilled together (one padded forward) leave blocks a later prompt reuses exactly', async () => {
    const ps = sharing(5, 3 * BLOCK, 2).map((x, i) => (i === 2 ? x.slice(0, 4 * BLOCK + 5) : x));
    ps[0] = [...ps[0]!, ...ps[1]!.slice(3 * BLOCK)]; // different lengths: the rows are left-padded differently
    const p = () => params({ maxTokens: 8 });
    const s = new BatchScheduler(m, { ...CACHED, prefillChunk: 1024 });
    const first = await Promise.all(ps.slice(0, 3).map((prompt) => s.submit(prompt, p(), { signal: never, onDelta: noop })));
    expect(s.stats.prefills).toBe(1);
    expect(first.map(ids)).toEqual(await expected(ps.slice(0, 3), p));
    // The same prompts again (every block cached) and the two others (the shared blocks).
    const again = await Promise.all(ps.map((prompt) => s.submit(prompt, p(), { signal: never, onDelta: noop })));
    expect(again.map(ids)).toEqual(await expected(ps, p));
    expect(s.stats.prefixHits).toBe(5);
  });

  it("a chat's next turn reuses its history and the reply the model gave, and gives the tokens without the cache", async () => {
    const [turn1] = sharing(1, 3 * BLOCK + 7, 3);
    // Seeded sampling at T 1: on a random model's flat rows, any change to the logits moves the draws.
    const p = params({ maxTokens: 2 * BLOCK + 3, temperature: 1, seed: 3 });
    const s = new BatchScheduler(m, CACHED);
    const reply = (await s.submit(turn1!, p, { signal: never, onDelta: noop }))[0]!.tokenIds;
    expect(ids(await alone(m, turn1!, p))[0]).toEqual(reply);
    const turn2 = [...turn1!, ...reply, 101, 102, 103];
    const saved = s.stats.prefixTokensSaved;
    const next = await s.submit(turn2, p, { signal: never, onDelta: noop });
    expect(ids(next)).toEqual(ids(await alone(m, turn2, p)));
    // The prompt and all but the last sampled token of the reply were in the cache: whole blocks of them.
    const inCache = turn1!.length + reply.length - 1;
    expect(s.stats.prefixTokensSaved - saved).toBe(Math.floor(inCache / BLOCK) * BLOCK);
  });

  it('cancelled requests (while prefilling, while decoding) leave nothing wrong behind: later requests get the tokens without the cache', async () => {
    const ps = sharing(4, 4 * BLOCK + 1, 4);
    const p = () => params({ maxTokens: 10, temperature: 1, seed: 4 });
    const s = new BatchScheduler(m, { ...CACHED, prefillChunk: 8 });
    const inPrefill = new AbortController();
    const inDecode = new AbortController();
    const a = s.submit(ps[0]!, p(), { signal: inPrefill.signal, onDelta: noop }).catch((e: unknown) => e);
    setImmediate(() => inPrefill.abort()); // after its first chunk or two
    const b = s.submit(ps[1]!, p(), { signal: inDecode.signal, onDelta: () => inDecode.abort() }).catch((e: unknown) => e);
    const c = s.submit(ps[2]!, p(), { signal: never, onDelta: noop });
    const [ra, rb, rc] = await Promise.all([a, b, c]);
    expect(ra).toBeInstanceOf(ThreadError);
    expect((ra as ThreadError).kind).toBe('cancelled');
    expect((rb as ThreadError).kind).toBe('cancelled');
    const want = await expected(ps, p);
    expect(ids(rc)).toEqual(want[2]);
    const after = await Promise.all(ps.map((prompt) => s.submit(prompt, p(), { signal: never, onDelta: noop })));
    expect(after.map(ids)).toEqual(want);
    expect(s.stats.prefixHits).toBeGreaterThan(0);
  });

  it('stays within a small budget by evicting the least recently used blocks, and still gives the same tokens', async () => {
    const probe = new BatchScheduler(m, CACHED);
    const [one] = sharing(1, 2 * BLOCK, 5);
    await probe.submit(one!, params({ maxTokens: 1 }), { signal: never, onDelta: noop });
    const perBlock = probe.stats.prefixBytes / 2;
    expect(perBlock).toBeGreaterThan(0);

    const budget = 6 * perBlock;
    const s = new BatchScheduler(m, { ...CACHED, prefixCacheBytes: budget });
    const groups = [sharing(3, 4 * BLOCK, 6), sharing(3, 4 * BLOCK, 7), sharing(3, 4 * BLOCK, 8)];
    const p = () => params({ maxTokens: 6 });
    for (const g of groups) {
      for (const prompt of g) {
        const got = await s.submit(prompt, p(), { signal: never, onDelta: noop });
        expect(ids(got)).toEqual(ids(await alone(m, prompt, p())));
        expect(s.stats.prefixBytes).toBeLessThanOrEqual(budget);
      }
    }
    expect(s.stats.prefixEvictions).toBeGreaterThan(0);
    // The most recent group's prefix is still there; the first one's was evicted.
    const hits = s.stats.prefixHits;
    await s.submit(groups[2]![0]!, p(), { signal: never, onDelta: noop });
    expect(s.stats.prefixHits).toBe(hits + 1);
    const saved = s.stats.prefixTokensSaved;
    const old = await s.submit(groups[0]![0]!, p(), { signal: never, onDelta: noop });
    expect(s.stats.prefixTokensSaved).toBe(saved);
    expect(ids(old)).toEqual(ids(await alone(m, groups[0]![0]!, p())));
  });

  it('a burst sharing a cached prefix is prefilled together (greedy and seeded sampling): the tokens each gets alone, and one after the other', async () => {
    const ps = sharing(9, 6 * BLOCK + 5, 12); // 5 shared tokens past the cached blocks, then rests of different lengths: padded after them
    const p = (i: number) => params({ maxTokens: 10, ...(i % 2 ? { temperature: 0.9, topP: 0.95, seed: 60 + i, n: i === 3 ? 2 : 1 } : {}) });
    const want = await expected(ps, p);
    // A chunk that takes the eight rests (5 shared + 8 × the longest, 26) in one forward.
    const s = new BatchScheduler(m, { ...CACHED, prefillChunk: 256 });
    // The cache holds the 6 blocks, and nothing of the 5 tokens after them (another prompt's block follows).
    const seed = [...ps[0]!.slice(0, 6 * BLOCK), 7, 8, 9];
    expect(ids(await s.submit(seed, p(0), { signal: never, onDelta: noop }))).toEqual(ids(await alone(m, seed, p(0))));
    const before = { ...s.stats };
    // Rows of input and of past in each prefill forward: the rests go over one row of the shared
    // prefix (the split graph broadcasts it), not a copy of it per row.
    const shapes: [number, number][] = [];
    const burst = await aroundForward(
      m,
      (inputs, forward) => {
        const past = inputs.past_key_values ? Object.values(inputs.past_key_values)[0]! : null;
        if (inputs.input_ids!.dims[1]! > 1) shapes.push([inputs.input_ids!.dims[0]!, past?.dims[0] ?? 0]);
        return forward(inputs);
      },
      () => Promise.all(ps.slice(1).map((prompt, i) => s.submit(prompt, p(i + 1), { signal: never, onDelta: noop }))),
    );
    expect(m.sharedPast).toBe(true);
    expect(shapes).toEqual([[1, 1], [8, 1]]);
    expect(burst.map(ids)).toEqual(want.slice(1));
    // Each after the 6 cached blocks: the 5 tokens they share past them once, for one row, then
    // one forward for all eight rests; nine rows (one request has n = 2).
    expect(s.stats.prefills - before.prefills).toBe(2);
    expect(s.stats.prefixHits - before.prefixHits).toBe(8);
    expect(s.stats.prefixTokensSaved - before.prefixTokensSaved).toBe(8 * 6 * BLOCK);
    expect(s.stats.prefillTokens - before.prefillTokens).toBe(5 + ps.slice(1).reduce((n, x) => n + x.length - 6 * BLOCK - 5, 0));
    expect(s.stats.maxBatch).toBe(9);
    // The same prompts one after the other on a scheduler with the cache.
    const one = new BatchScheduler(m, CACHED);
    const sequential: number[][][] = [];
    for (const [i, prompt] of ps.entries()) sequential.push(ids(await one.submit(prompt, p(i), { signal: never, onDelta: noop })));
    expect(sequential).toEqual(want);
    expect(one.stats.prefixHits).toBe(8);
  });

  it('a burst that arrives in two groups: the second is prefilled over the first one\'s shared prefix (no second copy, no second head), with the tokens each gets alone', async () => {
    const ps = sharing(7, 4 * BLOCK + 12, 31); // 12 shared tokens past the cached blocks: (3 − 1) × 12 spared, worth a forward (HEAD_WORTH)
    const p = (i: number) => params({ maxTokens: 8, ...(i % 2 ? { temperature: 0.8, topP: 0.9, seed: 90 + i } : {}) });
    const want = await expected(ps, p);
    const s = new BatchScheduler(m, { ...CACHED, prefillChunk: 256 });
    // The 4 blocks cached, without the 12 tokens after them.
    const seed = [...ps[0]!.slice(0, 4 * BLOCK), 7, 8, 9];
    expect(ids(await s.submit(seed, p(0), { signal: never, onDelta: noop }))).toEqual(ids(await alone(m, seed, p(0))));
    const before = { ...s.stats };
    // Three at once; the other three once the first three have their first tokens.
    let firsts = 0;
    let second!: () => void;
    const later = new Promise<void>((resolve) => (second = resolve));
    const first = ps.slice(1, 4).map((prompt, i) => s.submit(prompt, p(i + 1), { signal: never, onDelta: () => ++firsts === 3 && second() }));
    await later;
    const rest = ps.slice(4).map((prompt, i) => s.submit(prompt, p(i + 4), { signal: never, onDelta: noop }));
    expect((await Promise.all([...first, ...rest])).map(ids)).toEqual(want.slice(1));
    // The head (12 tokens) once, then one forward per group.
    expect(s.stats.prefills - before.prefills).toBe(3);
    expect(s.stats.prefillTokens - before.prefillTokens).toBe(12 + ps.slice(1).reduce((n, x) => n + x.length - 4 * BLOCK - 12, 0));
  });

  /**
   * In the worker the scheduler runs on the model thread, whose messages (new requests,
   * cancellations) wait while a forward runs. This replays it: one request comes before the
   * first prefill forward runs, two during it, delivered on the thread's next turn, and with
   * them, with `cancel`, the cancellation of one of those two. Each request gets its tokens
   * alone (the cancelled one its cancellation); the rows of each prefill forward are returned.
   */
  async function arriveDuringForward(cancel: boolean): Promise<number[]> {
    const ps = sharing(5, 4 * BLOCK, 41);
    const p = (i: number) => params({ maxTokens: 6, ...(i % 2 ? { temperature: 0.8, topP: 0.9, seed: 60 + i } : {}) });
    const want = await expected(ps, p);
    const s = new BatchScheduler(m, { ...CACHED, prefillChunk: 256 });
    expect(ids(await s.submit(ps[0]!, p(0), { signal: never, onDelta: noop }))).toEqual(want[0]);
    const stop = new AbortController();
    const results: Promise<ChoiceResult[] | unknown>[] = [];
    const submit = (i: number, signal = never) => results.push(s.submit(ps[i]!, p(i), { signal, onDelta: noop }).catch((e: unknown) => e));
    let arrived!: () => void;
    const all = new Promise<void>((resolve) => (arrived = resolve));
    const rows: number[] = [];
    const got = await aroundForward(
      m,
      async (inputs, forward) => {
        const first = inputs.input_ids!.dims[1]! > 1 && rows.push(inputs.input_ids!.dims[0]!) === 1;
        if (first) submit(2);
        const out = await forward(inputs);
        if (first) {
          setImmediate(() => {
            submit(3, stop.signal);
            submit(4);
            if (cancel) stop.abort();
            arrived();
          });
        }
        return out;
      },
      async () => {
        submit(1);
        await all;
        return Promise.all(results);
      },
    );
    const [one, two, three, four] = got;
    expect([one, two, four].map((r) => ids(r as ChoiceResult[]))).toEqual([want[1], want[2], want[4]]);
    if (cancel) expect((three as ThreadError).kind).toBe('cancelled');
    else expect(ids(three as ChoiceResult[])).toEqual(want[3]);
    return rows;
  }

  it('requests that arrive while a prefill forward runs are prefilled in the next one together with those that came before it started', async () => {
    // Not [1, 1, 2]: the next group is formed once the thread has let its messages through.
    expect(await arriveDuringForward(false)).toEqual([1, 3]);
  });

  it('a request cancelled while a prefill forward runs is not prefilled in the next one', async () => {
    // Not [1, 3]: the cancellation came in with the requests, and is read before the group is formed.
    expect(await arriveDuringForward(true)).toEqual([1, 2]);
  });

  it('one forward for prompts with cached prefixes of different lengths and one with none, joining a batch that is decoding', async () => {
    const a = sharing(3, 3 * BLOCK + 2, 13);
    const b = sharing(3, 5 * BLOCK + 9, 14);
    const fresh = sharing(1, 7, 15)[0]!;
    const [background] = sharing(1, 2 * BLOCK + 1, 16);
    const p = (i: number) => params({ maxTokens: 9, ...(i % 2 ? {} : { temperature: 1, seed: 80 + i }) });
    const group = [a[1]!, b[1]!, fresh, a[2]!, b[2]!];
    const want = await expected(group, p);
    const wantBackground = ids(await alone(m, background!, params({ maxTokens: 40 })));
    const s = new BatchScheduler(m, CACHED);
    await s.submit(a[0]!, p(0), { signal: never, onDelta: noop });
    await s.submit(b[0]!, p(0), { signal: never, onDelta: noop });
    let started!: () => void;
    const decoding = new Promise<void>((resolve) => (started = resolve));
    let deltas = 0;
    const bg = s.submit(background!, params({ maxTokens: 40 }), { signal: never, onDelta: () => ++deltas === 3 && started() });
    await decoding;
    const before = { ...s.stats };
    const got = await Promise.all(group.map((prompt, i) => s.submit(prompt, p(i), { signal: never, onDelta: noop })));
    expect(got.map(ids)).toEqual(want);
    expect(ids(await bg)).toEqual(wantBackground);
    expect(s.stats.prefills - before.prefills).toBe(1);
    expect(s.stats.prefixHits - before.prefixHits).toBe(4);
    // a's 3 blocks; b's 5 blocks and the 9 tokens past them that b[0]'s sixth block (its prompt
    // and reply) starts with.
    expect(s.stats.prefixTokensSaved - before.prefixTokensSaved).toBe(2 * 3 * BLOCK + 2 * (5 * BLOCK + 9));
    expect(s.stats.maxBatch).toBe(6);
    expect(s.load).toEqual({ decoding: 0, waiting: 0, prefilling: 0 });
  });

  it('prompts with cached prefixes as long but different, and the same tokens after them, are prefilled each after its own', async () => {
    // Two system prompts of 3 blocks each, then one user turn that the prompts share token for
    // token but for its last token: the same cached length, and rests that start alike.
    const rng = makeRng(17);
    const tok = () => 100 + Math.floor(rng() * 40_000);
    const heads = [Array.from({ length: 3 * BLOCK }, tok), Array.from({ length: 3 * BLOCK }, tok)];
    const turn = Array.from({ length: 9 }, tok);
    const ps = [0, 1, 0, 1].map((h, i) => [...heads[h]!, ...turn, 200 + i]);
    const p = (i: number) => params({ maxTokens: 8, ...(i % 2 ? { temperature: 1, seed: 90 + i } : {}) });
    const want = await expected(ps, p);
    const s = new BatchScheduler(m, CACHED);
    for (const h of heads) await s.submit([...h, 7, 8], p(0), { signal: never, onDelta: noop });
    const before = { ...s.stats };
    const got = await Promise.all(ps.map((prompt, i) => s.submit(prompt, p(i), { signal: never, onDelta: noop })));
    expect(got.map(ids)).toEqual(want);
    expect(s.stats.prefixHits - before.prefixHits).toBe(4);
    expect(s.stats.prefixTokensSaved - before.prefixTokensSaved).toBe(4 * 3 * BLOCK);
    // No head shared across different prefixes: each prompt's 9 + 1 uncached tokens computed.
    expect(s.stats.prefillTokens - before.prefillTokens).toBe(4 * 10);
  });

  it('a prompt reuses the start of a cached block as far as its tokens agree (a burst: no head of its own), and a repeated prompt all but its last token', async () => {
    // 7 shared tokens past 3 blocks: in the seed's fourth block (its prompt and reply fill it).
    const ps = sharing(6, 3 * BLOCK + 7, 21);
    const p = (i: number) => params({ maxTokens: 8, ...(i % 2 ? { temperature: 0.9, topP: 0.9, seed: 70 + i } : {}) });
    const want = await expected(ps, p);
    const s = new BatchScheduler(m, { ...CACHED, prefillChunk: 256 });
    expect(ids(await s.submit(ps[0]!, p(0), { signal: never, onDelta: noop }))).toEqual(want[0]);
    expect(ps[0]!.length + 8 - 1).toBeGreaterThanOrEqual(4 * BLOCK);
    let before = { ...s.stats };
    const got = await Promise.all(ps.slice(1).map((prompt, i) => s.submit(prompt, p(i + 1), { signal: never, onDelta: noop })));
    expect(got.map(ids)).toEqual(want.slice(1));
    expect(s.stats.prefixHits - before.prefixHits).toBe(5);
    expect(s.stats.prefixTokensSaved - before.prefixTokensSaved).toBe(5 * (3 * BLOCK + 7));
    // One forward of the five rests: the shared tokens came from the cache, none prefilled again.
    expect(s.stats.prefills - before.prefills).toBe(1);
    expect(s.stats.prefillTokens - before.prefillTokens).toBe(ps.slice(1).reduce((n, x) => n + x.length - 3 * BLOCK - 7, 0));

    // A prompt of whole blocks, asked again: only its last token is prefilled (its logits give the first token).
    const whole = sharing(1, 4 * BLOCK, 22)[0]!.slice(0, 4 * BLOCK);
    const q = params({ maxTokens: 5, temperature: 1, seed: 5 });
    const alone1 = ids(await alone(m, whole, q));
    expect(ids(await s.submit(whole, q, { signal: never, onDelta: noop }))).toEqual(alone1);
    before = { ...s.stats };
    expect(ids(await s.submit(whole, q, { signal: never, onDelta: noop }))).toEqual(alone1);
    expect(s.stats.prefixTokensSaved - before.prefixTokensSaved).toBe(4 * BLOCK - 1);
    expect(s.stats.prefillTokens - before.prefillTokens).toBe(1);
  });

  it('shares nothing across scopes (teams, keys, database roles): a prompt another scope cached is a miss, whole blocks and inside a block, and the same scope hits', async () => {
    const [prompt] = sharing(1, 3 * BLOCK + 7, 23);
    const p = params({ maxTokens: 8, temperature: 1, seed: 9 }); // prompt and reply fill a fourth block: the last 7 prompt tokens hit inside it
    const want = ids(await alone(m, prompt!, p));
    const s = new BatchScheduler(m, CACHED);
    const run = async (cacheScope?: string) => ids(await s.submit(prompt!, p, { signal: never, onDelta: noop, ...(cacheScope === undefined ? {} : { cacheScope }) }));
    expect(await run('key:a')).toEqual(want);
    let before = { ...s.stats };
    for (const other of ['key:b', 'team:a', undefined]) expect(await run(other)).toEqual(want);
    // Each of the three stored its own blocks, and found none of another's.
    expect(s.stats.prefixHits - before.prefixHits).toBe(0);
    expect(s.stats.prefixTokensSaved - before.prefixTokensSaved).toBe(0);
    before = { ...s.stats };
    expect(await run('key:a')).toEqual(want);
    expect(await run('key:b')).toEqual(want);
    expect(s.stats.prefixHits - before.prefixHits).toBe(2);
    expect(s.stats.prefixTokensSaved - before.prefixTokensSaved).toBe(2 * (prompt!.length - 1));
  });

  it('is off at budget 0: nothing is stored or reused', async () => {
    const s = new BatchScheduler(m, { ...LIMITS, prefixCacheBytes: 0 });
    const [prompt] = sharing(1, 3 * BLOCK, 9);
    await s.submit(prompt!, params({ maxTokens: 3 }), { signal: never, onDelta: noop });
    await s.submit(prompt!, params({ maxTokens: 3 }), { signal: never, onDelta: noop });
    expect(s.stats).toMatchObject({ prefixLookups: 0, prefixHits: 0, prefixBytes: 0 });
  });
});
