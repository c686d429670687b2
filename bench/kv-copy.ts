/**
 * A standalone probe: what onnxruntime-node's copy of the KV cache out to JS costs a decode step.
 * One decode step of the SmolLM2-shaped bench model as the worker loads it (attention over
 * grouped KV heads), on its onnxruntime session directly, at a short and a ~1,024-token past:
 * fetching every output (what the scheduler must do, to feed `present` back as the next
 * step's past) against fetching the logits alone (the graph still builds `present` with its
 * Concat, but the binding copies nothing else out). Interleaved, median of `--n` each.
 *
 * The difference is the binding's copy; what remains grows with the context through the
 * graph's Concat of past and new keys and values and the attention products. Neither the copy
 * nor the Concat goes away without a KV buffer the graph updates in place, which needs IO
 * binding (not exposed by onnxruntime-node).
 *
 *   npx tsx bench/kv-copy.ts [--n 12]
 */
import { parseArgs } from 'node:util';
import { Tensor, type InferenceSession } from 'onnxruntime-node';
import { loadChatModel } from '../src/worker/loader.js';
import { ensureBenchModels } from './models.js';
import { median } from './lib.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '12' } } });
const models = await ensureBenchModels();
const spec = {
  name: 'smollm2', task: 'chat' as const, source: models.chat, revision: 'main', dtype: 'fp32', device: 'cpu' as const,
  chatTemplate: null, contextLength: null, pooling: 'mean' as const, normalize: true, truncate: false,
};
const m = await loadChatModel(spec, models.dir, () => {});
const session = (m.model as unknown as { sessions: Record<string, InferenceSession> }).sessions.model!;
const step = (L: number): Record<string, Tensor> => {
  const feeds: Record<string, Tensor> = {
    input_ids: new Tensor('int64', BigInt64Array.from([42n]), [1, 1]),
    attention_mask: new Tensor('int64', new BigInt64Array(L + 1).fill(1n), [1, L + 1]),
    position_ids: new Tensor('int64', BigInt64Array.from([BigInt(L)]), [1, 1]),
  };
  // [1, kv heads, L, head dim] per cache input, read from the graph's own input metadata.
  for (const [i, name] of session.inputNames.entries()) {
    if (!name.startsWith('past_key_values')) continue;
    const [, H, , D] = (session.inputMetadata[i] as { shape: readonly (number | string)[] }).shape;
    if (typeof H !== 'number' || typeof D !== 'number') throw new Error(`${name}: the graph does not fix its KV heads and head size`);
    feeds[name] = new Tensor('float32', Float32Array.from({ length: H * L * D }, () => Math.random() - 0.5), [1, H, L, D]);
  }
  return feeds;
};
const rows: string[] = [];
for (const L of [40, 1024]) {
  const feeds = step(L);
  const every: number[] = [];
  const logits: number[] = [];
  await session.run(feeds);
  for (let i = 0; i < Number(values.n); i++) {
    let t = performance.now();
    await session.run(feeds);
    every.push(performance.now() - t);
    t = performance.now();
    await session.run(feeds, ['logits']);
    logits.push(performance.now() - t);
  }
  rows.push(`past of ${L} tokens: every output ${median(every).toFixed(1)} ms, logits only ${median(logits).toFixed(1)} ms, the copy ${(median(every) - median(logits)).toFixed(1)} ms`);
}
console.log(rows.join('\n'));
await m.model.dispose();
