import { Agent, run, setDefaultOpenAIClient, setOpenAIAPI, setTracingDisabled, tool } from '@openai/agents';
import OpenAI from 'openai';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The OpenAI Agents SDK for JS (@openai/agents 0.14.3, the last release on openai-node 6: later
 * ones need openai 7, which requires Node 22) against Switchyard's Responses API, unchanged:
 * its default model provider posts to /v1/responses. The random `tiny` model cannot choose a
 * tool by itself, so the tool run forces one (toolChoice 'required') and stops on its result.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], e)).code).toBe(0);
  const key = (await cli(['keys', 'create', '--name', 'agents'], e)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  setTracingDisabled(true);
  setOpenAIAPI('responses');
  setDefaultOpenAIClient(new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 }));
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

const stored = async () => query<{ n: number }>(db.url, 'select count(*)::int as n from ai.responses').then((r) => r[0]!.n);

describe('@openai/agents on the Responses API', () => {
  it('run(): a text answer, from a stored response', async () => {
    const before = await stored();
    const agent = new Agent({ name: 'teller', instructions: 'Answer briefly.', model: 'tiny', modelSettings: { maxTokens: 12, temperature: 0 } });
    const result = await run(agent, 'Say hello.');
    expect(typeof result.finalOutput).toBe('string');
    expect((result.finalOutput as string).length).toBeGreaterThan(0);
    expect(await stored()).toBe(before + 1);
    const [row] = await query<{ text: string }>(db.url, `select output->'choices'->0->>'text' as text from ai.requests where endpoint = 'responses' order by queued_at desc limit 1`);
    expect(row!.text).toBe(result.finalOutput);
  });

  it('a function tool the model is made to call runs with arguments that match its zod schema', async () => {
    const calls: { a: number; b: number }[] = [];
    const add = tool({
      name: 'add',
      description: 'Adds two integers',
      parameters: z.object({ a: z.number().int(), b: z.number().int() }),
      execute: async ({ a, b }) => {
        calls.push({ a, b });
        return String(a + b);
      },
    });
    const agent = new Agent({
      name: 'adder',
      instructions: 'Use the add tool.',
      model: 'tiny',
      tools: [add],
      modelSettings: { toolChoice: 'required', maxTokens: 120, temperature: 0 },
      toolUseBehavior: 'stop_on_first_tool',
    });
    const result = await run(agent, 'What is 2 + 3?');
    expect(calls).toHaveLength(1);
    expect(result.finalOutput).toBe(String(calls[0]!.a + calls[0]!.b));
  });

  it('run(..., { stream: true }): text deltas as they come, the same final output', async () => {
    const agent = new Agent({ name: 'streamer', instructions: 'Answer briefly.', model: 'tiny', modelSettings: { maxTokens: 24, temperature: 0 } });
    const result = await run(agent, 'Tell me a story.', { stream: true });
    let text = '';
    for await (const e of result) {
      if (e.type === 'raw_model_stream_event' && e.data.type === 'output_text_delta') text += e.data.delta;
    }
    await result.completed;
    expect(text.length).toBeGreaterThan(0);
    expect(result.finalOutput).toBe(text);
  });
});
