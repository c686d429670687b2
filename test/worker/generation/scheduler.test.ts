import { beforeAll, describe, expect, it } from 'vitest';
import type { LoadedChatModel } from '../../../src/worker/loader.js';
import { KvPool } from '../../../src/worker/generation/kv-pool.js';
import { BatchScheduler } from '../../../src/worker/generation/scheduler.js';
import type { ChoiceResult } from '../../../src/worker/generation/generate.js';
import { ThreadError } from '../../../src/worker/generation/thread-error.js';
import { alone as aloneOn, aroundForward, LIMITS, loadTiny, never, noop, params, prompts, staggered } from './helpers.js';

// The continuous-batching decode loop on the synthetic chat model (random weights, so every
// token is a real argmax or draw over real logits): a sequence's tokens must not depend on what
// it was batched with, when it joined, or how its prompt was prefilled.

let m: LoadedChatModel;

beforeAll(async () => {
  m = await loadTiny();
});

const alone = (prompt: number[], p: Parameters<typeof aloneOn>[2]) => aloneOn(m, prompt, p);

describe('BatchScheduler', () => {
  it('greedy: 8 prompts of different lengths joining at different steps give the tokens each gives alone', async () => {
    const ps = prompts(8);
    // logprobs: every token is reported, even one that ends mid-character (so it adds no text).
    const p = params({ maxTokens: 32, logprobs: 0 });
    const expected = await Promise.all(ps.map(async (prompt) => (await alone(prompt, p))[0]!.tokenIds));
    const s = new BatchScheduler(m, LIMITS);
    const got = await staggered(s, ps, () => p);
    expect(got.map((r) => (r as ChoiceResult[])[0]!.tokenIds)).toEqual(expected);
    // They really shared steps: all 8 decoded together at some point, and steps < tokens.
    expect(s.stats.maxBatch).toBe(8);
    expect(s.stats.steps).toBeLessThan(s.stats.decodeTokens);
  });

  it('KV arrays reused from the pool hold stale values that nothing reads unmasked: every array poisoned, the tokens are those alone (greedy and seeded, joins, leaves, the cache growing, a shared prefix)', async () => {
    const ps = [...prompts(6, 41), ...prompts(1, 42).flatMap((x) => [0, 1, 2].map((i) => [...x, ...x, ...x, 100 + i]))];
    const p = (i: number) => params({ maxTokens: 24 + 6 * (i % 3), ...(i % 2 ? { temperature: 0.9, topP: 0.9, seed: 300 + i } : {}) });
    const expected = await Promise.all(ps.map(async (prompt, i) => (await alone(prompt, p(i)))[0]!.tokenIds));
    // Values like a cache's (within ±4), different at every position.
    const pool = new KvPool(64 * 1024 * 1024, { minBytes: 0, poison: (i) => ((i * 7919) % 2000) / 250 - 4 });
    const s = new BatchScheduler(m, { ...LIMITS, prefixCacheBytes: 16 * 1024 * 1024 }, pool);
    for (let round = 0; round < 2; round++) {
      const got = await staggered(s, ps, p);
      expect(got.map((r) => (r as ChoiceResult[])[0]!.tokenIds), `round ${round}`).toEqual(expected);
    }
    expect(pool.stats.reused).toBeGreaterThan(0);
    expect(s.stats.prefixHits).toBeGreaterThan(0);
  });

  it('seeded sampling with penalties and several choices: the same tokens in a batch as alone', async () => {
    const ps = prompts(6, 11);
    const p = (i: number) => params({ temperature: 0.9, topP: 0.9, seed: 1000 + i, frequencyPenalty: 0.5, presencePenalty: 0.3, n: 1 + (i % 3), maxTokens: 10 });
    const expected = await Promise.all(ps.map(async (prompt, i) => (await alone(prompt, p(i))).map((c) => c.tokenIds)));
    const s = new BatchScheduler(m, LIMITS);
    const got = await staggered(s, ps, p, 1);
    expect(got.map((r) => (r as ChoiceResult[]).map((c) => c.tokenIds))).toEqual(expected);
    expect(s.stats.maxBatch).toBeGreaterThan(6);
  });

  it('cancelling one sequence leaves the others exactly as they would be alone', async () => {
    const ps = prompts(4, 3);
    const p = params({ maxTokens: 20 });
    const expected = await Promise.all(ps.map(async (prompt) => (await alone(prompt, p))[0]!.tokenIds));
    const s = new BatchScheduler(m, LIMITS);
    const abort = new AbortController();
    const results = ps.map((prompt, i) =>
      s.submit(prompt, p, {
        signal: i === 1 ? abort.signal : never,
        onDelta: (_index, _text, _finish) => {
          if (i === 1) abort.abort(); // after its first token
        },
      }).catch((e: unknown) => e),
    );
    const settled = await Promise.all(results);
    expect(settled[1]).toBeInstanceOf(ThreadError);
    expect((settled[1] as ThreadError).kind).toBe('cancelled');
    for (const i of [0, 2, 3]) expect((settled[i] as ChoiceResult[])[0]!.tokenIds).toEqual(expected[i]);
  });

  it('chunked prefill gives the tokens of a one-pass prefill, and a long prompt does not stop others decoding', async () => {
    const [short, long] = [prompts(1, 5)[0]!, prompts(14, 9)[13]!];
    expect(long.length).toBeGreaterThan(60);
    const p = params({ maxTokens: 8 });
    const expected = (await alone(long, p))[0]!.tokenIds;
    const s = new BatchScheduler(m, { ...LIMITS, prefillChunk: 8 });
    const order: string[] = [];
    const a = s.submit(short, params({ maxTokens: 30 }), { signal: never, onDelta: () => order.push('short') });
    await new Promise((r) => setImmediate(r));
    const b = s.submit(long, p, { signal: never, onDelta: () => order.push('long') });
    const [, got] = await Promise.all([a, b]);
    expect(got[0]!.tokenIds).toEqual(expected);
    // ceil(len / 8) chunks of the long prompt, with a decode step of the short one between them.
    const beforeLong = order.indexOf('long');
    expect(beforeLong).toBeGreaterThanOrEqual(Math.ceil(long.length / 8) - 1);
  });

  it('keeps within its bounds: at most maxSequences rows and maxTokens reserved; a request over the whole budget is refused', async () => {
    const ps = prompts(6, 21);
    const s = new BatchScheduler(m, { maxSequences: 3, maxTokens: 10_000, prefillChunk: 128 });
    const all = await Promise.all(ps.map((prompt) => s.submit(prompt, params({ maxTokens: 6 }), { signal: never, onDelta: noop })));
    expect(all.every((c) => c[0]!.tokenIds.length === 6)).toBe(true);
    expect(s.stats.maxBatch).toBe(3);

    const tight = new BatchScheduler(m, { maxSequences: 16, maxTokens: 40, prefillChunk: 128 });
    // Each reserves n × (prompt + 6) tokens: two single choices fit in 40 together, a 2-choice
    // request only alone, and a 5-choice one (5 × 19) never: it is refused, naming n (it used to
    // run alone, so one request's memory had no bound).
    const over = await Promise.resolve()
      .then(() => tight.submit(ps[2]!, params({ maxTokens: 6, n: 5 }), { signal: never, onDelta: noop }))
      .catch((e: unknown) => e);
    expect(over).toBeInstanceOf(ThreadError);
    expect((over as ThreadError).body).toMatchObject({ code: 'invalid_value', param: 'n' });
    const fits = await Promise.all([
      tight.submit(ps[1]!, params({ maxTokens: 6 }), { signal: never, onDelta: noop }),
      tight.submit(ps[1]!, params({ maxTokens: 6 }), { signal: never, onDelta: noop }),
      tight.submit(ps[2]!, params({ maxTokens: 6, n: 2 }), { signal: never, onDelta: noop }),
    ]);
    expect(fits[2]!.length).toBe(2);
    expect(tight.stats.maxBatch).toBe(2);
    expect(tight.load).toEqual({ decoding: 0, waiting: 0, prefilling: 0 });
  });

  it('a failure inside the loop fails the requests in the batch, not the thread: the next request runs', async () => {
    const s = new BatchScheduler(m, LIMITS);
    const broken = () => ({ choose: () => { throw new Error('constraint bug'); }, accept: () => {}, done: false });
    const failed = await s.submit(prompts(1)[0]!, params(), { signal: never, onDelta: noop, constraints: broken }).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(ThreadError);
    expect((failed as ThreadError).kind).toBe('server');
    expect((failed as ThreadError).message).toMatch(/constraint bug/);
    // The same at a decode step (its third token): the batch's requests fail, the loop goes on.
    let calls = 0;
    const later = () => ({ choose: (l: Float32Array, draw: (l: Float32Array) => number) => { if (++calls === 3) throw new Error('constraint bug'); return draw(l); }, accept: () => {}, done: false });
    const failedLater = await s.submit(prompts(1)[0]!, params(), { signal: never, onDelta: noop, constraints: later }).catch((e: unknown) => e);
    expect((failedLater as ThreadError).message).toMatch(/constraint bug/);
    const ok = await s.submit(prompts(1)[0]!, params({ maxTokens: 3 }), { signal: never, onDelta: noop });
    expect(ok[0]!.tokenIds).toHaveLength(3);
    expect(s.load).toEqual({ decoding: 0, waiting: 0, prefilling: 0 });
  });

  it('prompts that arrive together share one prefill forward, and each gets the tokens it gets alone', async () => {
    const ps = prompts(6, 31);
    const p = (i: number) => params({ maxTokens: 12, ...(i % 2 ? { temperature: 0.8, seed: 7 + i } : {}), n: i === 3 ? 2 : 1 });
    const expected = await Promise.all(ps.map(async (prompt, i) => (await alone(prompt, p(i))).map((c) => c.tokenIds)));
    const s = new BatchScheduler(m, { ...LIMITS, prefillChunk: 512 });
    const got = await Promise.all(ps.map((prompt, i) => s.submit(prompt, p(i), { signal: never, onDelta: noop })));
    expect(got.map((r) => r.map((c) => c.tokenIds))).toEqual(expected);
    expect(s.stats.prefills).toBe(1);
    expect(s.stats.maxBatch).toBe(7);
  });

  it('prompts that arrive during a prefill forward are prefilled right after it, before the re-layout and the next decode step, with the tokens each gets alone', async () => {
    const ps = prompts(7, 33);
    const p = (i: number) => params({ maxTokens: 10, ...(i % 2 ? { temperature: 0.8, seed: 17 + i } : {}) });
    const expected = await Promise.all(ps.map(async (prompt, i) => (await alone(prompt, p(i)))[0]!.tokenIds));
    const s = new BatchScheduler(m, { ...LIMITS, prefillChunk: 512 });
    // In the worker the model thread's messages wait while a forward runs (its cores are the
    // forward's): the last four arrive on the loop's next turn after the first forward ends.
    const shapes: number[][] = [];
    let late: Promise<ChoiceResult[]>[] = [];
    const got = await aroundForward(
      m,
      async (inputs, forward) => {
        shapes.push([...inputs.input_ids!.dims]);
        const out = await forward(inputs);
        if (shapes.length === 1) setImmediate(() => (late = ps.slice(3).map((prompt, i) => s.submit(prompt, p(i + 3), { signal: never, onDelta: noop }))));
        return out;
      },
      async () => {
        const first = await Promise.all(ps.slice(0, 3).map((prompt, i) => s.submit(prompt, p(i), { signal: never, onDelta: noop })));
        return [...first, ...(await Promise.all(late))];
      },
    );
    expect(got.map((r) => r[0]!.tokenIds)).toEqual(expected);
    // Two prefill forwards (3 rows, then 4), and only then decode steps of all seven.
    expect(shapes.slice(0, 3).map((d) => d[0])).toEqual([3, 4, 7]);
    expect(shapes[0]![1]).toBeGreaterThan(1);
    expect(shapes[1]![1]).toBeGreaterThan(1);
    expect(shapes[2]![1]).toBe(1);
  });
});

describe('batch work beside interactive requests (issue 17)', () => {
  it('a waiting interactive request is admitted before batch work that came earlier; tokens are unchanged', async () => {
    const ps = prompts(4, 21);
    const p = params({ maxTokens: 6 });
    const expected = await Promise.all(ps.map(async (prompt) => (await alone(prompt, p))[0]!.tokenIds));
    // One sequence at a time: the admission order is the order of first tokens.
    const s = new BatchScheduler(m, { ...LIMITS, maxSequences: 1 });
    const order: number[] = [];
    const submit = (i: number, background: boolean) =>
      s.submit(ps[i]!, p, { signal: never, background, onDelta: (_x, text) => void (text && !order.includes(i) && order.push(i)) });
    // Three batch requests, then an interactive one, all waiting together.
    const got = await Promise.all([submit(0, true), submit(1, true), submit(2, true), submit(3, false)]);
    expect(got.map((r) => r[0]!.tokenIds)).toEqual(expected);
    expect(order.indexOf(3)).toBeLessThanOrEqual(1); // behind at most the one that started at once
    expect(order.slice(order.indexOf(3) + 1)).toEqual([0, 1, 2].filter((i) => !order.slice(0, order.indexOf(3)).includes(i)));
  });

  it('batch work alone runs flat out; while interactive requests come it rests after each step, and an interactive arrival ends the rest', async () => {
    const p = params({ maxTokens: 24 });
    const [a, b] = prompts(2, 31);
    const timed = async (s: BatchScheduler, background: boolean) => {
      const t0 = performance.now();
      await s.submit(a!, p, { signal: never, background, onDelta: noop });
      return performance.now() - t0;
    };
    // A duty of 0.2: a step of batch work is followed by four times its length of rest.
    const limits = { ...LIMITS, batchDuty: 0.2 };
    const flat = new BatchScheduler(m, limits);
    await timed(flat, true); // warm
    const alone1 = await timed(flat, true);
    const resting = new BatchScheduler(m, limits);
    await timed(resting, false); // an interactive request: batch work now rests
    const rested = await timed(resting, true);
    expect(rested).toBeGreaterThan(alone1 * 2);
    // An interactive request arriving while batch work rests is not kept waiting for the rest.
    const long = resting.submit(b!, params({ maxTokens: 200 }), { signal: never, background: true, onDelta: noop });
    await new Promise((r) => setTimeout(r, 50));
    const t0 = performance.now();
    await resting.submit(a!, params({ maxTokens: 1 }), { signal: never, onDelta: noop });
    const interactive = performance.now() - t0;
    const t1 = performance.now();
    await flat.submit(a!, params({ maxTokens: 1 }), { signal: never, onDelta: noop });
    const reference = performance.now() - t1;
    expect(interactive).toBeLessThan(reference + 50);
    await long;
  });

  it("the rest after batch work counts the batch's prefills, not only its decode steps", async () => {
    // A long prompt and 3 tokens: a prefill (the first token), a step, a rest, a step. With a duty
    // of 0.2 the rest is four times the prefill and the step: counting the step alone made it
    // four steps, well under twice the time the request takes flat out.
    const long = Array.from({ length: 400 }, (_, i) => 200 + ((i * 7919) % 30_000));
    const p = params({ maxTokens: 3 });
    const limits = { ...LIMITS, prefillChunk: 512, batchDuty: 0.2 };
    const median = async (s: BatchScheduler) => {
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        await s.submit(long, p, { signal: never, background: true, onDelta: noop });
        times.push(performance.now() - t0);
      }
      return times.sort((x, y) => x - y)[2]!;
    };
    const flat = new BatchScheduler(m, limits);
    await median(flat); // warm
    const resting = new BatchScheduler(m, limits);
    await resting.submit(long, params({ maxTokens: 1 }), { signal: never, onDelta: noop }); // interactive: batch work now rests
    const [flatMs, restedMs] = [await median(flat), await median(resting)];
    expect(restedMs).toBeGreaterThan(flatMs * 3);
  });
});
