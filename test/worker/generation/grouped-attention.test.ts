import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { groupAttention } from '../../../src/worker/generation/grouped-attention.js';
import { BatchScheduler } from '../../../src/worker/generation/scheduler.js';
import { makeRng } from '../../../src/worker/generation/sampler.js';
import type { LoadedChatModel } from '../../../src/worker/loader.js';
import { graphBuilder, LIMITS, loadTiny, never, noop, params, prompts } from './helpers.js';

// The load-time rewrite of repeated-KV attention (grouped-attention.ts) must change nothing but
// the time: every output of the graph, bit for bit, on the shapes the scheduler feeds it, and the
// tokens through the scheduler, against the graph as exported. Split (the cache outputs only the
// new tokens), outputs stay within 1e-4 and the tokens the same.

const modelsDir = () => inject('modelsDir' as never) as string;
const graph = (model: string) => readFileSync(join(modelsDir(), model, 'onnx', 'model.onnx'));

/** Inputs for `b` rows of `s` new tokens over a `past`-token cache, the first `pad` positions of odd rows masked (left padding). */
function feeds(rng: () => number, layers: number, kvHeads: number, headDim: number, b: number, s: number, past: number, pad = 0): Record<string, Tensor> {
  const total = past + s;
  const f: Record<string, Tensor> = {
    input_ids: new Tensor('int64', BigInt64Array.from({ length: b * s }, () => BigInt(100 + Math.floor(rng() * 40_000))), [b, s]),
    attention_mask: new Tensor('int64', BigInt64Array.from({ length: b * total }, (_, i) => (Math.floor(i / total) % 2 === 1 && i % total < pad ? 0n : 1n)), [b, total]),
    position_ids: new Tensor('int64', BigInt64Array.from({ length: b * s }, (_, i) => BigInt(past + (i % s))), [b, s]),
  };
  for (let l = 0; l < layers; l++) {
    for (const kv of ['key', 'value']) {
      f[`past_key_values.${l}.${kv}`] = new Tensor('float32', Float32Array.from({ length: b * kvHeads * past * headDim }, () => rng() * 4 - 2), [b, kvHeads, past, headDim]);
    }
  }
  return f;
}

describe('grouped attention (load-time graph rewrite)', () => {
  for (const model of ['tiny-chat', 'tiny-chat-eos']) {
    it(`${model}: every output is bit-identical to the exported graph's (decode, prefill, padded and batched shapes)`, async () => {
      const bytes = graph(model);
      const out = groupAttention(bytes);
      // 2 layers × (keys, values): the pattern was found, so the comparison below compares two graphs.
      expect(out?.rewritten).toBe(4);
      const opts = { extra: { session: { intra_op: { allow_spinning: '0' } } } } as InferenceSession.SessionOptions;
      const [a, b] = await Promise.all([InferenceSession.create(bytes, opts), InferenceSession.create(out!.bytes, opts)]);
      try {
        const rng = makeRng(15);
        // [rows, new tokens, past, left padding]: a decode step, a cold prefill, a prefill chunk
        // over a cache, a batched decode with padded rows, batched rests over a shared prefix.
        for (const [rows, s, past, pad] of [[1, 1, 40, 0], [1, 1, 700, 0], [1, 64, 0, 0], [1, 32, 300, 0], [5, 1, 120, 37], [8, 9, 200, 11]] as const) {
          const f = feeds(rng, 2, 2, 16, rows, s, past, pad);
          const [x, y] = [await a.run(f), await b.run(f)];
          expect(Object.keys(y).sort()).toEqual(Object.keys(x).sort());
          for (const name of Object.keys(x)) {
            expect(y[name]!.dims).toEqual(x[name]!.dims);
            const [p, q] = [x[name]!.data as Float32Array, y[name]!.data as Float32Array];
            // Bytes, not values: bit-identical, NaN and -0 included.
            expect(Buffer.from(q.buffer, q.byteOffset, q.byteLength).equals(Buffer.from(p.buffer, p.byteOffset, p.byteLength)), `${name} of ${rows}×${s} over ${past}`).toBe(true);
          }
        }
      } finally {
        await Promise.all([a.release(), b.release()]);
      }
    });
  }

  it("tiny-chat-eos, split: its end-of-sequence steering reads the whole cache (a counter kept in it), so nothing is split", () => {
    expect(groupAttention(graph('tiny-chat-eos'), { split: true })).toMatchObject({ rewritten: 4, split: 0 });
  });

  for (const model of ['tiny-chat']) {
    it(`${model}, split: the cache outputs hold only the new tokens' keys and values, and every output is the exported graph's to within 1e-4`, async () => {
      const bytes = graph(model);
      const out = groupAttention(bytes, { split: true });
      expect(out?.rewritten).toBe(4);
      expect(out?.split).toBe(4);
      const opts = { extra: { session: { intra_op: { allow_spinning: '0' } } } } as InferenceSession.SessionOptions;
      const [a, b] = await Promise.all([InferenceSession.create(bytes, opts), InferenceSession.create(out!.bytes, opts)]);
      try {
        const rng = makeRng(16);
        // As above, and a decode over a cache with free room at its end (masked), as the scheduler keeps it.
        for (const [rows, s, past, pad] of [[1, 1, 40, 0], [1, 1, 700, 0], [1, 64, 0, 0], [1, 32, 300, 0], [5, 1, 120, 37], [8, 9, 200, 11]] as const) {
          const f = feeds(rng, 2, 2, 16, rows, s, past, pad);
          const [x, y] = [await a.run(f), await b.run(f)];
          expect(Object.keys(y).sort()).toEqual(Object.keys(x).sort());
          for (const name of Object.keys(x)) {
            const [p, q] = [x[name]!.data as Float32Array, y[name]!.data as Float32Array];
            let worst = 0;
            if (name === 'logits') {
              expect(y[name]!.dims).toEqual(x[name]!.dims);
              for (let i = 0; i < p.length; i++) worst = Math.max(worst, Math.abs(p[i]! - q[i]!));
            } else {
              // [rows, kv heads, s, dim]: the last s positions of the exported graph's [rows, kv heads, past + s, dim].
              const [R, H, T, D] = x[name]!.dims as number[];
              expect(y[name]!.dims).toEqual([R, H, s, D]);
              for (let r = 0; r < R! * H!; r++) {
                for (let i = 0; i < s * D!; i++) worst = Math.max(worst, Math.abs(p[(r * T! + T! - s) * D! + i]! - q[r * s * D! + i]!));
              }
            }
            // Not bit-identical: the values' product sums the past and the new tokens apart.
            expect(worst, `${name} of ${rows}×${s} over ${past}`).toBeLessThan(1e-4);
          }
        }
      } finally {
        await Promise.all([a.release(), b.release()]);
      }
    });
  }

  describe('the scale after the keys product', () => {
    // One attention head group, built directly: q [1, 4, 3, 8], k and v [1, 2, 5, 8] repeated to
    // 4 heads as the exports do, then Softmax(scale(q·kᵀ))·v. The scale is what decides whether
    // the rewrite may proceed: a constant scalar (an initializer or a Constant node) is kept on
    // the product, where onnxruntime folds it; anything else leaves the keys' product as exported.
    type Scale = 'initializer' | 'constant node' | 'per-head tensor';
    async function attention(scale: Scale): Promise<Uint8Array> {
      const { GraphBuilder, DT, constTensor } = await graphBuilder();
      const g = new GraphBuilder('attention');
      const q = g.input('q', DT.FLOAT, [1, 4, 3, 8]);
      const repeat = (t: string) =>
        g.op('Reshape', [g.op('Expand', [g.op('Unsqueeze', [t, g.int64Init(`${t}_axes`, [2])]), g.int64Init(`${t}_to5`, [1, 2, 2, 5, 8])]), g.int64Init(`${t}_to4`, [1, 4, 5, 8])]);
      const k = repeat(g.input('k', DT.FLOAT, [1, 2, 5, 8]));
      const v = repeat(g.input('v', DT.FLOAT, [1, 2, 5, 8]));
      const product = g.op('MatMul', [q, g.op('Transpose', [k], { perm: [0, 1, 3, 2] })]);
      const s =
        scale === 'initializer' ? g.floatInit('scale', [], [0.35])
        : scale === 'constant node' ? g.op('Constant', [], { value: constTensor(DT.FLOAT, [], [0.35]) })
        : g.floatInit('scale', [1, 4, 1, 1], [0.35, 0.5, 0.7, 1.1]);
      const probs = g.op('Softmax', [g.op('Mul', [product, s])], { axis: -1 });
      g.op('MatMul', [probs, v], {}, ['out']);
      g.output('out', DT.FLOAT, [1, 4, 3, 8]);
      return g.toModelBytes();
    }

    for (const [scale, rewritten] of [['initializer', 2], ['constant node', 2], ['per-head tensor', 1]] as const) {
      it(`a scale that is a ${scale}: ${rewritten === 2 ? 'both products grouped' : 'only the values product grouped'}, bit-identical`, async () => {
        const bytes = await attention(scale);
        const out = groupAttention(bytes);
        expect(out?.rewritten).toBe(rewritten);
        const [a, b] = await Promise.all([InferenceSession.create(bytes), InferenceSession.create(out!.bytes)]);
        const rng = makeRng(3);
        const t = (dims: number[]) => new Tensor('float32', Float32Array.from({ length: dims.reduce((x, y) => x * y) }, () => rng() * 4 - 2), dims);
        const f = { q: t([1, 4, 3, 8]), k: t([1, 2, 5, 8]), v: t([1, 2, 5, 8]) };
        const [x, y] = [(await a.run(f)).out!.data as Float32Array, (await b.run(f)).out!.data as Float32Array];
        expect(Buffer.from(y.buffer, y.byteOffset, y.byteLength).equals(Buffer.from(x.buffer, x.byteOffset, x.byteLength))).toBe(true);
        await Promise.all([a.release(), b.release()]);
      });
    }
  });

  describe('split: the cache concatenated in the graph', () => {
    // One layer as exports write it: present = Concat(past, new) on the sequence axis, a graph
    // output, and the attention reads it repeated per query head. With `readsPresent`, another
    // node reads the whole present too (its shape, as a mask built from it would).
    async function layer(readsPresent: boolean): Promise<Uint8Array> {
      const { GraphBuilder, DT } = await graphBuilder();
      const g = new GraphBuilder('layer');
      const q = g.input('q', DT.FLOAT, [1, 4, 3, 8]);
      const cached = (kv: string) =>
        g.op('Concat', [g.input(`past_key_values.0.${kv}`, DT.FLOAT, [1, 2, 'P', 8]), g.input(`new_${kv}`, DT.FLOAT, [1, 2, 3, 8])], { axis: 2 }, [`present.0.${kv}`]);
      const repeat = (t: string) =>
        g.op('Reshape', [g.op('Expand', [g.op('Unsqueeze', [t, g.int64Init(`${t}_axes`, [2])]), g.op('Concat', [g.int64Init(`${t}_lead`, [1, 2, 2]), g.op('Slice', [g.op('Shape', [t]), g.int64Init(`${t}_s`, [2]), g.int64Init(`${t}_e`, [4])])], { axis: 0 })]), g.op('Concat', [g.int64Init(`${t}_lead4`, [1, 4]), g.op('Slice', [g.op('Shape', [t]), g.int64Init(`${t}_s4`, [2]), g.int64Init(`${t}_e4`, [4])])], { axis: 0 })]);
      const [k, v] = [cached('key'), cached('value')];
      g.output('present.0.key', DT.FLOAT, [1, 2, 'T', 8]);
      g.output('present.0.value', DT.FLOAT, [1, 2, 'T', 8]);
      const product = g.op('MatMul', [q, g.op('Transpose', [repeat(k)], { perm: [0, 1, 3, 2] })]);
      const probs = g.op('Softmax', [g.op('Mul', [product, g.floatInit('scale', [], [0.35])])], { axis: -1 });
      g.op('MatMul', [probs, repeat(v)], {}, ['out']);
      g.output('out', DT.FLOAT, [1, 4, 3, 8]);
      if (readsPresent) {
        g.op('Shape', [k], {}, ['total']);
        g.output('total', DT.INT64, [4]);
      }
      return g.toModelBytes();
    }

    it('splits a layer whose present only the attention reads: close outputs, present the new tokens alone', async () => {
      const bytes = await layer(false);
      const out = groupAttention(bytes, { split: true });
      expect(out).toMatchObject({ rewritten: 2, split: 2 });
      const [a, b] = await Promise.all([InferenceSession.create(bytes), InferenceSession.create(out!.bytes)]);
      const rng = makeRng(4);
      const t = (dims: number[]) => new Tensor('float32', Float32Array.from({ length: dims.reduce((x, y) => x * y) }, () => rng() * 4 - 2), dims);
      for (const P of [0, 5]) {
        const f = { q: t([1, 4, 3, 8]), 'past_key_values.0.key': t([1, 2, P, 8]), 'past_key_values.0.value': t([1, 2, P, 8]), new_key: t([1, 2, 3, 8]), new_value: t([1, 2, 3, 8]) };
        const [x, y] = [await a.run(f), await b.run(f)];
        expect(y['present.0.key']!.dims).toEqual([1, 2, 3, 8]);
        expect(y['present.0.key']!.data).toEqual(f.new_key.data);
        expect(y['present.0.value']!.data).toEqual(f.new_value.data);
        const [p, q] = [x.out!.data as Float32Array, y.out!.data as Float32Array];
        expect(Math.max(...p.map((v, i) => Math.abs(v - q[i]!))), `past of ${P}`).toBeLessThan(1e-5);
      }
      await Promise.all([a.release(), b.release()]);
    });

    it('does not split when something else reads the whole present: grouped only, bit-identical', async () => {
      const bytes = await layer(true);
      const out = groupAttention(bytes, { split: true });
      expect(out).toMatchObject({ rewritten: 2, split: 0 });
      const [a, b] = await Promise.all([InferenceSession.create(bytes), InferenceSession.create(out!.bytes)]);
      const rng = makeRng(5);
      const t = (dims: number[]) => new Tensor('float32', Float32Array.from({ length: dims.reduce((x, y) => x * y) }, () => rng() * 4 - 2), dims);
      const f = { q: t([1, 4, 3, 8]), 'past_key_values.0.key': t([1, 2, 5, 8]), 'past_key_values.0.value': t([1, 2, 5, 8]), new_key: t([1, 2, 3, 8]), new_value: t([1, 2, 3, 8]) };
      const [x, y] = [await a.run(f), await b.run(f)];
      for (const name of ['out', 'present.0.key', 'total']) expect(y[name]!.data, name).toEqual(x[name]!.data);
      await Promise.all([a.release(), b.release()]);
    });
  });

  it('leaves a graph without repeated KV heads alone', () => {
    expect(groupAttention(graph('tiny-embed'))).toBeNull();
  });

  describe('through the loader and the scheduler', () => {
    let split: LoadedChatModel;
    let grouped: LoadedChatModel;
    let exported: LoadedChatModel;
    const loadWith = async (env: Record<string, string>) => {
      const was = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
      Object.assign(process.env, env);
      try {
        return await loadTiny();
      } finally {
        for (const [k, v] of Object.entries(was)) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      }
    };
    beforeAll(async () => {
      split = await loadTiny();
      grouped = await loadWith({ SWITCHYARD_SPLIT_ATTENTION: '0' });
      exported = await loadWith({ SWITCHYARD_GROUPED_ATTENTION: '0' });
    });
    afterAll(async () => {
      await Promise.all([split?.model.dispose(), grouped?.model.dispose(), exported?.model.dispose()]);
    });

    it('loads grouped and split by default, grouped only with SWITCHYARD_SPLIT_ATTENTION=0, as exported with SWITCHYARD_GROUPED_ATTENTION=0; all give the same tokens (greedy and seeded, batched, with the prefix cache, past the cache\'s room)', async () => {
      expect([split.groupedAttention, split.splitCache]).toEqual([4, 4]);
      expect([grouped.groupedAttention, grouped.splitCache]).toEqual([4, 0]);
      expect([exported.groupedAttention, exported.splitCache]).toEqual([0, 0]);
      const shared = prompts(1, 3)[0]!;
      const ps = [...prompts(5, 21), ...prompts(3, 22).map((p) => [...shared, ...shared, ...p])];
      // 40 new tokens: more than the room a re-laid-out cache gets (32 positions at these
      // lengths), so the cache grows while the batch decodes.
      const p = (i: number) => params({ maxTokens: 40, ...(i % 2 ? { temperature: 0.9, topP: 0.9, seed: 70 + i, n: 2 } : {}) });
      const run = async (m: LoadedChatModel) => {
        const s = new BatchScheduler(m, { ...LIMITS, prefixCacheBytes: 16 * 1024 * 1024 });
        const all = await Promise.all(ps.map((prompt, i) => s.submit(prompt, p(i), { signal: never, onDelta: noop })));
        return all.map((r) => r.map((c) => c.tokenIds));
      };
      const want = await run(exported);
      expect(want.flat().every((t) => t.length === 40)).toBe(true);
      expect(await run(grouped)).toEqual(want);
      expect(await run(split)).toEqual(want);
    });
  });
});
