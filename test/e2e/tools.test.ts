import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { zodFunction } from 'openai/helpers/zod';
import type { ChatCompletionTool } from 'openai/resources/chat/completions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { ToolDefinition } from '../../src/protocol/chat.js';
import { OpenSourceAI } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** Tool calling through the whole stack on the random-weight chat model (issue 9, acceptance 2). */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc & { workerId: string };
let client: OpenAI;
const ajv = new Ajv({ strict: false });
const messages = [{ role: 'user' as const, content: 'What is the weather in Paris, and what is 2 + 3?' }];

const weatherParams = {
  type: 'object',
  properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
  required: ['city', 'unit'],
  additionalProperties: false,
};
const addParams = { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'], additionalProperties: false };
const tools: ChatCompletionTool[] = [
  { type: 'function', function: { name: 'get_weather', description: 'Current weather', parameters: weatherParams } },
  { type: 'function', function: { name: 'add', parameters: addParams } },
];
const CUSTOM = { start: '[TOOL_CALLS]', end: '[/TOOL_CALLS]', separator: ' ', name_key: 'tool', arguments_key: 'args' };
const paramsOf: Record<string, object> = { get_weather: weatherParams, add: addParams };

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const r = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env);
  expect(r.code, r.stderr).toBe(0);
  // The tool-call syntax is data: a model that writes calls its own way.
  const custom = await cli(['models', 'add', 'tiny-custom', '--task', 'chat', '--source', 'tiny-chat', '--tool-call-format', JSON.stringify(CUSTOM)], env);
  expect(custom.code, custom.stderr).toBe(0);
  const bad = await cli(['models', 'add', 'tiny-bad', '--task', 'chat', '--source', 'tiny-chat', '--tool-call-format', '{"start": "<x>"}'], env);
  expect(bad.code).not.toBe(0);
  expect(bad.stderr).toContain('--tool-call-format');
  [serve, worker] = await Promise.all([startServe(db.url, ['--no-auth']), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

function expectCall(call: { id: string; type: string; function: { name: string; arguments: string } }, name?: string) {
  expect(call.id).toMatch(/^call_/);
  expect(call.type).toBe('function');
  if (name) expect(call.function.name).toBe(name);
  const params = paramsOf[call.function.name];
  expect(params, call.function.name).toBeDefined();
  expect(ajv.validate(params!, JSON.parse(call.function.arguments)), call.function.arguments).toBe(true);
}

describe('tool_choice', () => {
  it("'required': tool_calls whose arguments validate, finish_reason tool_calls", async () => {
    for (const seed of [1, 2, 3]) {
      const c = await client.chat.completions.create({ model: 'tiny', messages, tools, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 80, seed, temperature: 1 });
      const choice = c.choices[0]!;
      expect(choice.finish_reason).toBe('tool_calls');
      expect(choice.message.tool_calls).toHaveLength(1);
      expectCall(choice.message.tool_calls![0]! as never);
    }
  });

  it('a named function: that function is called', async () => {
    const c = await client.chat.completions.create({ model: 'tiny', messages, tools, tool_choice: { type: 'function', function: { name: 'add' } }, max_tokens: 60, temperature: 0 });
    expect(c.choices[0]!.finish_reason).toBe('tool_calls');
    expectCall(c.choices[0]!.message.tool_calls![0]! as never, 'add');
  });

  it("streams delta.tool_calls in OpenAI's chunk shape", async () => {
    const stream = await client.chat.completions.create({ model: 'tiny', messages, tools, tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 80, stream: true });
    const calls: { id: string; type: string; function: { name: string; arguments: string } }[] = [];
    let finish: string | null = null;
    for await (const chunk of stream) {
      for (const d of chunk.choices[0]?.delta.tool_calls ?? []) {
        if (d.id) calls[d.index] = { id: d.id, type: d.type!, function: { name: d.function!.name!, arguments: d.function!.arguments ?? '' } };
        else calls[d.index]!.function.arguments += d.function?.arguments ?? '';
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe('tool_calls');
    expect(calls).toHaveLength(1);
    expectCall(calls[0]!, 'get_weather');
  });

  it("the openai package's stream helper and zodFunction parse the call", async () => {
    const Weather = z.object({ city: z.string(), unit: z.enum(['celsius', 'fahrenheit']) });
    const stream = client.chat.completions.stream({
      model: 'tiny',
      messages,
      tools: [zodFunction({ name: 'get_weather', parameters: Weather })],
      tool_choice: 'required',
      parallel_tool_calls: false,
      max_tokens: 80,
    });
    const done: unknown[] = [];
    stream.on('tool_calls.function.arguments.done', (e) => done.push(e.parsed_arguments));
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
    const call = final.choices[0]!.message.tool_calls![0]!;
    expect(call.type === 'function' && call.function.parsed_arguments).toEqual(Weather.parse(JSON.parse(call.type === 'function' ? call.function.arguments : '')));
    expect(done).toHaveLength(1);
    expect(Weather.parse(done[0])).toEqual(done[0]);
  });

  it("'auto' and 'none' leave the reply free (the random model answers in text)", async () => {
    for (const tool_choice of ['auto', 'none'] as const) {
      const c = await client.chat.completions.create({ model: 'tiny', messages, tools, tool_choice, max_tokens: 8 });
      expect(c.choices[0]!.finish_reason).toBe('length');
      expect(typeof c.choices[0]!.message.content).toBe('string');
    }
  });

  it("a model's own tool-call format (models add --tool-call-format) is generated and parsed", async () => {
    const c = await client.chat.completions.create({ model: 'tiny-custom', messages, tools, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 80 });
    expect(c.choices[0]!.finish_reason).toBe('tool_calls');
    expectCall(c.choices[0]!.message.tool_calls![0]! as never);
    const rows = await query<{ text: string }>(db.url, `select output->'choices'->0->>'text' as text from ai.requests where model = 'tiny-custom'`);
    expect(rows[0]!.text.startsWith('[TOOL_CALLS]{"tool":')).toBe(true);
  });

  it('accepts a tool round trip in history', async () => {
    const c = await client.chat.completions.create({
      model: 'tiny',
      tools,
      max_tokens: 5,
      messages: [
        ...messages,
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'add', arguments: '{"a":2,"b":3}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '5' },
      ],
    });
    expect(c.choices[0]!.message.role).toBe('assistant');
  });

  it('the SDK passes tools and response_format through', async () => {
    const sdk = new OpenSourceAI(db.url);
    try {
      const c = await sdk.chat.completions.create({ model: 'tiny', messages, tools: tools as ToolDefinition[], tool_choice: 'required', parallel_tool_calls: false, max_tokens: 80 });
      expect(c.choices[0]!.finish_reason).toBe('tool_calls');
      expectCall(c.choices[0]!.message.tool_calls![0]! as never);
      const j = await sdk.chat.completions.create({ model: 'tiny', messages, max_tokens: 60, response_format: { type: 'json_schema', json_schema: { name: 'w', schema: weatherParams } } });
      expect(ajv.validate(weatherParams, JSON.parse(j.choices[0]!.message.content!))).toBe(true);
    } finally {
      await sdk.close();
    }
  });
});
