import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { groupAttention } from '../../../src/worker/generation/grouped-attention.js';
import { keepLogitRows, LOGITS_INDEX } from '../../../src/worker/generation/logits-rows.js';
import { BatchScheduler } from '../../../src/worker/generation/scheduler.js';
import { makeRng } from '../../../src/worker/generation/sampler.js';
import type { TokenLogprob } from '../../../src/worker/generation/logprobs.js';
import { loadChatModel, type LoadedChatModel } from '../../../src/worker/loader.js';
import { graphBuilder, LIMITS, never, params, prompts } from './helpers.js';

// The load-time rewrite that computes logits only for the positions asked (logits-rows.ts): the
// rows it keeps must be the exported graph's rows, bit for bit, in float and in int8, and the
// tokens (and echoed logprobs) through the scheduler those of the graph left as it was.

const modelsDir = () => inject('modelsDir' as never) as string;
const graph = (model: string, file = 'model.onnx') => readFileSync(join(modelsDir(), model, 'onnx', file));
const same = (p: Float32Array, q: Float32Array) => Buffer.from(q.buffer, q.byteOffset, q.byteLength).equals(Buffer.from(p.buffer, p.byteOffset, p.byteLength));

describe('logits for the positions asked (load-time graph rewrite)', () => {
  for (const file of ['model.onnx', 'model_quantized.onnx']) {
    it(`tiny-chat ${file}: the kept rows are the exported graph's rows, bit for bit (decode, prefill, each row its own positions, every position)`, async () => {
      // As the loader does it: after the attention rewrite, and on the graph as exported.
      for (const base of [graph('tiny-chat', file), groupAttention(graph('tiny-chat', file), { split: true })!.bytes]) {
        const kept = keepLogitRows(base);
        expect(kept).not.toBeNull();
        const opts = { extra: { session: { intra_op: { allow_spinning: '0' } } } } as InferenceSession.SessionOptions;
        const [a, b] = await Promise.all([InferenceSession.create(base, opts), InferenceSession.create(kept!, opts)]);
        try {
          expect(b.inputNames).toContain(LOGITS_INDEX);
          const rng = makeRng(19);
          // [rows, new tokens, past, positions kept per row]
          for (const [rows, s, past, keep] of [[5, 1, 30, [[0], [0], [0], [0], [0]]], [3, 9, 0, [[8], [4], [0]]], [2, 6, 20, [[5, 1, 3], [0, 2, 5]]], [1, 7, 0, [[0, 1, 2, 3, 4, 5, 6]]]] as const) {
            const total = past + s;
            const f: Record<string, Tensor> = {
              input_ids: new Tensor('int64', BigInt64Array.from({ length: rows * s }, () => BigInt(100 + Math.floor(rng() * 40_000))), [rows, s]),
              attention_mask: new Tensor('int64', new BigInt64Array(rows * total).fill(1n), [rows, total]),
              position_ids: new Tensor('int64', BigInt64Array.from({ length: rows * s }, (_, i) => BigInt(past + (i % s))), [rows, s]),
            };
            for (const name of a.inputNames.filter((n) => n.startsWith('past_key_values'))) {
              f[name] = new Tensor('float32', Float32Array.from({ length: rows * 2 * past * 16 }, () => rng() * 4 - 2), [rows, 2, past, 16]);
            }
            const n = keep[0]!.length;
            const x = await a.run(f);
            const y = await b.run({ ...f, [LOGITS_INDEX]: new Tensor('int64', BigInt64Array.from(keep.flat(), BigInt), [rows, n]) });
            const V = x.logits!.dims[2]!;
            expect(y.logits!.dims).toEqual([rows, n, V]);
            keep.forEach((positions, r) =>
              positions.forEach((pos, i) => {
                const want = (x.logits!.data as Float32Array).subarray((r * s + pos) * V, (r * s + pos + 1) * V);
                const got = (y.logits!.data as Float32Array).subarray((r * n + i) * V, (r * n + i + 1) * V);
                expect(same(want, got), `row ${r} position ${pos} of ${rows}×${s} over ${past}`).toBe(true);
              }),
            );
            // The cache outputs are untouched.
            for (const name of Object.keys(x).filter((k) => k.startsWith('present'))) expect(same(x[name]!.data as Float32Array, y[name]!.data as Float32Array)).toBe(true);
          }
        } finally {
          await Promise.all([a.release(), b.release()]);
        }
      }
    });
  }

  it('leaves alone a graph whose logits read more than the projection (tiny-chat-eos: a per-position steering term), and graphs without logits', () => {
    expect(keepLogitRows(graph('tiny-chat-eos'))).toBeNull();
    expect(keepLogitRows(graph('tiny-embed'))).toBeNull();
  });

  describe('projections built by hand', () => {
    async function head(shape: 'per position' | 'flattened' | 'rank 2'): Promise<Uint8Array> {
      const { GraphBuilder, DT } = await graphBuilder();
      const g = new GraphBuilder('head');
      const rng = makeRng(5);
      const w = g.floatInit('lm_head', [8, 12], Array.from({ length: 96 }, () => rng() - 0.5));
      if (shape === 'rank 2') {
        g.op('MatMul', [g.input('hidden', DT.FLOAT, ['rows', 8]), w], {}, ['logits']);
        g.output('logits', DT.FLOAT, ['rows', 12]);
      } else {
        const x = g.input('hidden', DT.FLOAT, ['batch', 'positions', 8]);
        if (shape === 'per position') g.op('MatMul', [x, w], {}, ['logits']);
        else g.op('Reshape', [g.op('MatMul', [g.op('Reshape', [x, g.int64Init('flat', [-1, 8])]), w]), g.op('Shape', [x])], {}, ['logits_flat']);
        if (shape === 'flattened') g.op('Identity', ['logits_flat'], {}, ['logits']);
        g.output('logits', DT.FLOAT, ['batch', 'positions', 12]);
      }
      return g.toModelBytes();
    }

    it('a projection of each position ([batch, positions, hidden]) is rewritten, its kept rows bit-identical; a flattened one and a 2-D one are left alone', async () => {
      const bytes = await head('per position');
      const kept = keepLogitRows(bytes);
      expect(kept).not.toBeNull();
      const [a, b] = await Promise.all([InferenceSession.create(bytes), InferenceSession.create(kept!)]);
      const rng = makeRng(6);
      const hidden = new Tensor('float32', Float32Array.from({ length: 2 * 5 * 8 }, () => rng() * 4 - 2), [2, 5, 8]);
      const x = (await a.run({ hidden })).logits!;
      const y = (await b.run({ hidden, [LOGITS_INDEX]: new Tensor('int64', BigInt64Array.from([4n, 1n]), [2, 1]) })).logits!;
      expect(y.dims).toEqual([2, 1, 12]);
      expect(same((x.data as Float32Array).subarray(4 * 12, 5 * 12), (y.data as Float32Array).subarray(0, 12))).toBe(true);
      expect(same((x.data as Float32Array).subarray((5 + 1) * 12, (5 + 2) * 12), (y.data as Float32Array).subarray(12, 24))).toBe(true);
      await Promise.all([a.release(), b.release()]);
      expect(keepLogitRows(await head('flattened'))).toBeNull();
      expect(keepLogitRows(await head('rank 2'))).toBeNull();
    });
  });

  describe('through the loader and the scheduler', () => {
    const spec = (dtype: string) => ({
      name: 'tiny-chat', task: 'chat' as const, source: 'tiny-chat', revision: 'main', dtype, device: 'cpu' as const,
      chatTemplate: null, contextLength: null, pooling: 'mean' as const, normalize: true, truncate: false,
    });
    const models: Record<string, LoadedChatModel> = {};
    beforeAll(async () => {
      for (const dtype of ['fp32', 'q8']) {
        models[`${dtype} kept`] = await loadChatModel(spec(dtype), modelsDir(), () => {});
        process.env.SWITCHYARD_KEEP_LOGITS = '0';
        try {
          models[`${dtype} all`] = await loadChatModel(spec(dtype), modelsDir(), () => {});
        } finally {
          delete process.env.SWITCHYARD_KEEP_LOGITS;
        }
      }
    });
    afterAll(async () => {
      await Promise.all(Object.values(models).map((m) => m.model.dispose()));
    });

    it('loads with kept logits by default and every logit with SWITCHYARD_KEEP_LOGITS=0; the same tokens and echoed logprobs either way (greedy and seeded, batched, chunked, with the prefix cache)', async () => {
      const shared = prompts(1, 3)[0]!;
      const ps = [...prompts(4, 31), ...prompts(3, 32).map((p) => [...shared, ...shared, ...shared, ...p])];
      const p = (i: number) => params({ maxTokens: 10, ...(i % 2 ? { temperature: 0.9, topP: 0.9, seed: 30 + i, n: 2 } : {}), ...(i === 2 ? { echo: true, logprobs: 2 } : {}) });
      const run = async (m: LoadedChatModel) => {
        // Chunks of 8: long prompts are prefilled in several forwards; the others together.
        const s = new BatchScheduler(m, { ...LIMITS, prefillChunk: 8, prefixCacheBytes: 16 * 1024 * 1024 });
        const logprobs: TokenLogprob[][] = ps.map(() => []);
        const all = await Promise.all(ps.map((prompt, i) => s.submit(prompt, p(i), { signal: never, onDelta: (_c, _t, _f, lp) => lp && logprobs[i]!.push(...lp) })));
        return { tokens: all.map((r) => r.map((c) => c.tokenIds)), logprobs };
      };
      for (const dtype of ['fp32', 'q8']) {
        expect(models[`${dtype} kept`]!.keepsLogits).toBe(true);
        expect(models[`${dtype} all`]!.keepsLogits).toBe(false);
        const want = await run(models[`${dtype} all`]!);
        // The echoed prompt's logprobs came: every prompt token's after the first, and the new tokens'.
        expect(want.logprobs[2]!.length).toBe(ps[2]!.length + 10);
        expect(await run(models[`${dtype} kept`]!)).toEqual(want);
      }
    });
  });
});
