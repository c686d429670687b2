/**
 * A standalone probe: what copying the KV cache costs a decode step, and what the split graph
 * the worker loads saves. One decode step of the SmolLM2-shaped bench model on onnxruntime
 * sessions directly, at a short and a ~1,024-token past, interleaved, median of `--n` each:
 * - grouped only (SWITCHYARD_SPLIT_ATTENTION=0): fetching every output (feeding `present` back
 *   as the next past, as the worker did before) against fetching the logits alone (the graph
 *   still builds `present` with its Concat, but the binding copies nothing else out): the
 *   difference is onnxruntime-node's copy of the cache into JS;
 * - split (the default): every output, which is then the new token's keys and values alone; the
 *   cache is read in place, neither concatenated nor copied out (the worker writes the new
 *   column into room it keeps: scheduler.ts).
 *
 *   npx tsx bench/kv-copy.ts [--n 12]
 */
import { parseArgs } from 'node:util';
import { Tensor, type InferenceSession } from 'onnxruntime-node';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InferenceSession as Session } from 'onnxruntime-node';
import { groupAttention } from '../src/worker/generation/grouped-attention.js';
import { sessionOptions } from '../src/worker/loader.js';
import { ensureBenchModels } from './models.js';
import { median } from './lib.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '12' } } });
const models = await ensureBenchModels();
const bytes = await readFile(join(models.dir, models.chat, 'onnx', 'model.onnx'));
const [grouped, split] = [groupAttention(bytes), groupAttention(bytes, { split: true })];
if (!grouped || !split?.split) throw new Error('the bench model did not take the rewrite');
const opts = sessionOptions() as InferenceSession.SessionOptions;
const session = await Session.create(grouped.bytes, opts);
const splitSession = await Session.create(split.bytes, opts);
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
  const inPlace: number[] = [];
  await session.run(feeds);
  await splitSession.run(feeds);
  for (let i = 0; i < Number(values.n); i++) {
    let t = performance.now();
    await session.run(feeds);
    every.push(performance.now() - t);
    t = performance.now();
    await session.run(feeds, ['logits']);
    logits.push(performance.now() - t);
    t = performance.now();
    await splitSession.run(feeds);
    inPlace.push(performance.now() - t);
  }
  rows.push(
    `past of ${L} tokens: grouped, every output ${median(every).toFixed(1)} ms, logits only ${median(logits).toFixed(1)} ms, the copy ${(median(every) - median(logits)).toFixed(1)} ms; ` +
      `split, every output ${median(inPlace).toFixed(1)} ms`,
  );
}
console.log(rows.join('\n'));
await Promise.all([session.release(), splitSession.release()]);
