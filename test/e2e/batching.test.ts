import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * Continuous batching through the real stack: concurrent requests share decode steps in the
 * worker, each gets the text it gets alone, and a client that leaves mid-batch does not disturb
 * the others. (Token-for-token checks of the decode loop itself: test/worker/generation/scheduler.test.ts.)
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat', '--dtype', 'fp32'], env)).code).toBe(0);
  const key = (await cli(['keys', 'create', '--name', 'b'], env)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

const prompts = ['hello there', 'a much longer prompt about the weather in several cities and what to wear', 'x', 'tell me a story about a fox'];

async function streamText(content: string, maxTokens: number, params: Partial<OpenAI.ChatCompletionCreateParamsStreaming> = {}, stopAfter?: number): Promise<{ text: string; id: string }> {
  const stream = await client.chat.completions
    .create({ model: 'tiny', messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 0, stream: true, ...params })
    .withResponse();
  let text = '';
  let chunks = 0;
  for await (const chunk of stream.data) {
    text += chunk.choices[0]?.delta.content ?? '';
    if (stopAfter !== undefined && ++chunks === stopAfter) break; // leaving the loop aborts the request
  }
  return { text, id: stream.response.headers.get('x-request-id')! };
}

it('concurrent streams share decode steps and each gets the text it gets alone; one leaving disturbs no one', async () => {
  const alone: string[] = [];
  for (const p of prompts) alone.push((await streamText(p, 120)).text);
  const seededAlone = (await streamText(prompts[3]!, 100, { temperature: 0.9, top_p: 0.8, seed: 42 })).text;

  const together = await Promise.all([
    ...prompts.map((p, i) => (i === 2 ? streamText(p, 400, {}, 3) : streamText(p, 120))),
    streamText(prompts[3]!, 100, { temperature: 0.9, top_p: 0.8, seed: 42 }),
  ]);
  for (const i of [0, 1, 3]) expect(together[i]!.text).toBe(alone[i]);
  expect(together[4]!.text).toBe(seededAlone);

  const [left] = await query<{ status: string }>(db.url, 'select status from ai.requests where id = $1', [together[2]!.id]);
  expect(['cancelled', 'running']).toContain(left!.status); // cancellation lands within a step
  // The worker reports its batches in its heartbeat: they held more than one sequence.
  let stats: { maxBatch?: number; steps?: number; decodeTokens?: number } = {};
  for (const t0 = Date.now(); Date.now() - t0 < 20_000 && !(stats.maxBatch! > 1); await new Promise((r) => setTimeout(r, 500))) {
    const [row] = await query<{ stats: Record<string, typeof stats> }>(db.url, 'select stats from ai.workers');
    stats = row?.stats.tiny ?? {};
  }
  expect(stats.maxBatch).toBeGreaterThanOrEqual(3);
  expect(stats.steps!).toBeLessThan(stats.decodeTokens!);
});
