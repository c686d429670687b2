import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { groupAttention } from '../../../src/worker/generation/grouped-attention.js';
import { BatchScheduler } from '../../../src/worker/generation/scheduler.js';
import { makeRng } from '../../../src/worker/generation/sampler.js';
import type { LoadedChatModel } from '../../../src/worker/loader.js';
import { LIMITS, loadTiny, never, noop, params, prompts } from './helpers.js';

// The load-time rewrite of repeated-KV attention (grouped-attention.ts) must change nothing but
// the time: every output of the graph, bit for bit, on the shapes the scheduler feeds it, and the
// tokens through the scheduler, against the graph as exported.

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

  describe('the scale after the keys product', () => {
    // One attention head group, built directly: q [1, 4, 3, 8], k and v [1, 2, 5, 8] repeated to
    // 4 heads as the exports do, then Softmax(scale(q·kᵀ))·v. The scale is what decides whether
    // the rewrite may proceed: a constant scalar (an initializer or a Constant node) is kept on
    // the product, where onnxruntime folds it; anything else leaves the keys' product as exported.
    type Scale = 'initializer' | 'constant node' | 'per-head tensor';
    async function attention(scale: Scale): Promise<Uint8Array> {
      const builder = '../../../fixtures/models/generator/onnx-builder.mjs';
      const { GraphBuilder, DT, constTensor } = (await import(builder)) as {
        GraphBuilder: new (name: string) => {
          input(name: string, type: number, shape: number[]): string;
          output(name: string, type: number, shape: number[]): void;
          op(type: string, inputs: string[], attrs?: Record<string, unknown>, outputs?: string[]): string;
          floatInit(name: string, dims: number[], data: number[]): string;
          int64Init(name: string, values: number[], dims?: number[]): string;
          toModelBytes(): Uint8Array;
        };
        DT: { FLOAT: number; INT64: number };
        constTensor(type: number, dims: number[], values: number[]): unknown;
      };
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

  it('leaves a graph without repeated KV heads alone', () => {
    expect(groupAttention(graph('tiny-embed'))).toBeNull();
  });

  describe('through the loader and the scheduler', () => {
    let grouped: LoadedChatModel;
    let exported: LoadedChatModel;
    beforeAll(async () => {
      grouped = await loadTiny();
      const was = process.env.SWITCHYARD_GROUPED_ATTENTION;
      process.env.SWITCHYARD_GROUPED_ATTENTION = '0';
      try {
        exported = await loadTiny();
      } finally {
        if (was === undefined) delete process.env.SWITCHYARD_GROUPED_ATTENTION;
        else process.env.SWITCHYARD_GROUPED_ATTENTION = was;
      }
    });
    afterAll(async () => {
      await Promise.all([grouped?.model.dispose(), exported?.model.dispose()]);
    });

    it('loads rewritten by default, as exported with SWITCHYARD_GROUPED_ATTENTION=0, and both give the same tokens (greedy and seeded, batched, with the prefix cache)', async () => {
      expect(grouped.groupedAttention).toBe(4);
      expect(exported.groupedAttention).toBe(0);
      const shared = prompts(1, 3)[0]!;
      const ps = [...prompts(5, 21), ...prompts(3, 22).map((p) => [...shared, ...shared, ...p])];
      const p = (i: number) => params({ maxTokens: 16, ...(i % 2 ? { temperature: 0.9, topP: 0.9, seed: 70 + i, n: 2 } : {}) });
      const run = async (m: LoadedChatModel) => {
        const s = new BatchScheduler(m, { ...LIMITS, prefixCacheBytes: 16 * 1024 * 1024 });
        const all = await Promise.all(ps.map((prompt, i) => s.submit(prompt, p(i), { signal: never, onDelta: noop })));
        return all.map((r) => r.map((c) => c.tokenIds));
      };
      const want = await run(exported);
      expect(want.flat().every((t) => t.length === 16)).toBe(true);
      expect(await run(grouped)).toEqual(want);
    });
  });
});
