/**
 * A standalone probe of the worker's decode loop alone (no queue, no HTTP): the BatchScheduler in
 * this process on the SmolLM2-shaped bench model, with the worker's limits and prefix cache. Each
 * round: one request with a new ~1,000-token system prompt (cold), then 8 at once with the same
 * system prompt and their own questions (the `prefix` section's shared-prompt figure). Prints
 * each round's cold time to first token, the slowest of the 8 against it, and the prefill
 * forwards the 8 took.
 *
 *   npx tsx bench/prefix-burst.ts [--rounds 3] [--gap ms between the 8 submissions, default 0]
 */
import { parseArgs } from 'node:util';
import { loadChatModel } from '../src/worker/loader.js';
import { BatchScheduler } from '../src/worker/generation/scheduler.js';
import { batchLimitsFromEnv } from '../src/worker/generation/limits.js';
import type { SamplingParams } from '../src/protocol/chat.js';
import { ensureBenchModels } from './models.js';
import { sentence } from './kit.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, gap: { type: 'string', default: '0' } } });
const gap = Number(values.gap);
const models = await ensureBenchModels();
const spec = {
  name: 'smollm2', task: 'chat' as const, source: models.chat, revision: 'main', dtype: 'fp32', device: 'cpu' as const,
  chatTemplate: null, contextLength: null, pooling: 'mean' as const, normalize: true, truncate: false,
};
const t0 = performance.now();
const m = await loadChatModel(spec, models.dir, () => {});
console.log(`loaded in ${(performance.now() - t0).toFixed(0)} ms; attention products grouped at load: ${m.groupedAttention} (SWITCHYARD_GROUPED_ATTENTION=0 turns it off)`);
const s = new BatchScheduler(m, batchLimitsFromEnv());
const never = new AbortController().signal;
const params: SamplingParams = {
  maxTokens: 8, temperature: 0, topP: 1, n: 1, stop: [], seed: null, frequencyPenalty: 0, presencePenalty: 0, logprobs: null, echo: false, constraint: null,
};
const render = (msgs: { role: string; content: string }[]) =>
  m.tokenizer.encode(m.tokenizer.apply_chat_template(msgs as never, { tokenize: false, add_generation_prompt: true }) as string, { add_special_tokens: false });
const ttft = async (prompt: number[]) => {
  const t0 = performance.now();
  let first = NaN;
  await s.submit(prompt, params, { signal: never, onDelta: () => void (Number.isNaN(first) && (first = performance.now() - t0)) });
  return first;
};
for (let r = 0; r < Number(values.rounds); r++) {
  const tag = `${Date.now().toString(36)}r${r}`;
  const parts: string[] = [];
  while (render([{ role: 'system', content: parts.join(' ') }]).length < 1000) parts.push(sentence(parts.length, tag));
  const ask = (q: string) => render([{ role: 'system', content: parts.join(' ') }, { role: 'user', content: q }]);
  const coldPrompt = ask('Who kept the first lighthouse?');
  const cold = await ttft(coldPrompt);
  const before = s.stats.prefills;
  // --gap: the 8 submitted that many ms apart (the gateway's claims arrive a few ms apart), each timed from its own submission.
  const eight = await Promise.all(
    Array.from({ length: 8 }, async (_, i) => {
      if (gap > 0) await new Promise((r) => setTimeout(r, i * gap));
      return ttft(ask(`Question ${i}: who kept lighthouse ${i + 2}?`));
    }),
  );
  const worst = Math.max(...eight);
  console.log(
    `round ${r + 1}: cold ${cold.toFixed(0)} ms (${coldPrompt.length} tokens); the 8: slowest ${worst.toFixed(0)} ms = ${(worst / cold).toFixed(2)}× cold, ` +
      `fastest ${Math.min(...eight).toFixed(0)} ms; ${s.stats.prefills - before} prefill forwards`,
  );
}
await m.model.dispose();
