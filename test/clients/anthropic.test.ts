import Anthropic from '@anthropic-ai/sdk';
import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, start, startWorker, type Proc } from '../helpers/stack.js';
import { Recorder } from './harness.js';

/**
 * Anthropic's official SDK against the Messages API (/v1/messages, a layer over chat): a real
 * serve (with the models folder, for count_tokens' tokenizer) and worker, the `tiny-chat`
 * fixture as `tiny`. Every answer is checked against its ai.requests row.
 */
let db: TestDatabase;
let serve: Proc & { match: RegExpMatchArray };
let worker: Proc;
let baseURL: string;
let key: string;
let scoped: string;
let client: Anthropic;
const recorder = new Recorder();
const ajv = new Ajv({ strict: false });

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  for (const args of [
    ['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat', '--alias', 'claude-tiny'],
    ['models', 'add', 'other', '--task', 'chat', '--source', 'tiny-chat'],
  ]) {
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(0);
  }
  key = (await cli(['keys', 'create', '--name', 'anthropic'], env)).stdout.trim();
  scoped = (await cli(['keys', 'create', '--name', 'tiny-only', '--models', 'tiny'], env)).stdout.trim();
  const serving = start(['serve'], { DATABASE_URL: db.url, PORT: '0', HOST: '127.0.0.1', SWITCHYARD_MODELS_DIR: modelsDir() }, /listening on (http:\/\/\S+)/);
  [serve, worker] = await Promise.all([serving, startWorker(db.url, ['--models', 'tiny'])]);
  baseURL = serve.match[1]!;
  // The SDK sends its key as x-api-key and appends /v1/messages itself.
  client = new Anthropic({ baseURL, apiKey: key, maxRetries: 0, fetch: recorder.fetch });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

interface Row {
  status: string;
  input: Record<string, any>;
  params: Record<string, any>;
  output: Record<string, any> | null;
  usage: { prompt_tokens: number; completion_tokens: number } | null;
}
const rowOf = async (id: string | null | undefined): Promise<Row> => {
  expect(id).toMatch(/^[0-9a-f-]{36}$/);
  const [row] = await query<Row>(db.url, 'select status, input, params, output, usage from ai.requests where id = $1', [id]);
  expect(row).toBeDefined();
  return row!;
};
const lastRequestId = () => recorder.exchanges.at(-1)!.requestId;

const weather = {
  name: 'get_weather',
  description: 'Current weather in a city',
  input_schema: {
    type: 'object' as const,
    properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
    required: ['city', 'unit'],
    additionalProperties: false,
  },
};
const add = { name: 'add', input_schema: { type: 'object' as const, properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'], additionalProperties: false } };
const ask = [{ role: 'user' as const, content: 'What is the weather in Paris?' }];
/**
 * Sampling fields: SDK 1.14's types no longer list temperature / top_p / top_k (newer Claude
 * models refuse them), but the API and the SDK still send them as given.
 */
const sampling = (fields: { temperature?: number; top_k?: number }): object => fields;

describe('messages.create', () => {
  it('text: a Message whose text and usage are the logged row, system and stop_sequences passed on', async () => {
    const m = await client.messages.create({
      model: 'claude-tiny',
      max_tokens: 8,
      system: 'You are terse.',
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Say hello.' }] }],
      ...sampling({ temperature: 0 }),
      stop_sequences: ['\n\n\n'],
      metadata: { user_id: 'user-7' },
    });
    expect(m.type).toBe('message');
    expect(m.role).toBe('assistant');
    expect(m.id).toMatch(/^msg-/);
    expect(m.model).toBe('claude-tiny');
    expect(m.content).toHaveLength(1);
    expect(m.content[0]!.type).toBe('text');
    // The fixture model practically never ends by itself: it runs to max_tokens.
    expect(m.stop_reason).toBe('max_tokens');
    const row = await rowOf(lastRequestId());
    expect(row.status).toBe('completed');
    expect(row.output!.choices[0].text).toBe((m.content[0] as Anthropic.TextBlock).text);
    expect(m.usage.input_tokens).toBe(row.usage!.prompt_tokens);
    expect(m.usage.output_tokens).toBe(row.usage!.completion_tokens);
    expect(m.usage.output_tokens).toBe(8);
    expect(row.input.messages[0]).toMatchObject({ role: 'system', content: 'You are terse.' });
    expect(row.params.stop).toEqual(['\n\n\n']);
    expect(row.params.user).toBe('user-7');
    expect(row.params.temperature).toBe(0);
  });

  it('stream: the SDK stream helper joins text_deltas to the non-streamed text, usage from message_delta', async () => {
    const params = { model: 'tiny', max_tokens: 10, ...sampling({ temperature: 0 }), messages: [{ role: 'user' as const, content: 'Tell me a story.' }] };
    const plain = await client.messages.create(params);
    const stream = client.messages.stream(params);
    let streamed = '';
    stream.on('text', (t) => (streamed += t));
    const types: string[] = [];
    stream.on('streamEvent', (e) => types.push(e.type));
    const final = await stream.finalMessage();
    expect(streamed).toBe((plain.content[0] as Anthropic.TextBlock).text);
    // top_k 1 samples the most likely token at any temperature: the greedy text again.
    const topOne = await client.messages.create({ ...params, ...sampling({ temperature: 1, top_k: 1 }) });
    expect(topOne.content).toEqual(plain.content);
    expect(final.content).toEqual(plain.content);
    expect(final.stop_reason).toBe('max_tokens');
    expect(final.usage.input_tokens).toBe(plain.usage.input_tokens);
    expect(final.usage.output_tokens).toBe(10);
    expect(types[0]).toBe('message_start');
    expect(types.slice(-2)).toEqual(['message_delta', 'message_stop']);
    expect(types).toContain('content_block_start');
    expect(types).toContain('content_block_stop');
    const row = await rowOf(lastRequestId());
    expect(row.usage!.completion_tokens).toBe(final.usage.output_tokens);
    expect(row.usage!.prompt_tokens).toBe(final.usage.input_tokens);
  });

  it("forced tool use: a tool_use block whose input validates against the tool's input_schema, stop_reason tool_use", async () => {
    for (const [tool_choice, name] of [[{ type: 'tool', name: 'get_weather' }, 'get_weather'], [{ type: 'any', disable_parallel_tool_use: true }, null]] as const) {
      const m = await client.messages.create({ model: 'tiny', max_tokens: 80, ...sampling({ temperature: 1 }), messages: ask, tools: [weather, add], tool_choice });
      expect(m.stop_reason).toBe('tool_use');
      const uses = m.content.filter((b): b is Anthropic.ToolUseBlock => b.type === 'tool_use');
      expect(uses).toHaveLength(1);
      if (name) expect(uses[0]!.name).toBe(name);
      const schema = uses[0]!.name === 'add' ? add.input_schema : weather.input_schema;
      expect(ajv.validate(schema, uses[0]!.input), JSON.stringify(uses[0]!.input)).toBe(true);
    }
  });

  it('forced tool use, streamed: input_json_delta pieces the SDK assembles into a valid input', async () => {
    const stream = client.messages.stream({ model: 'tiny', max_tokens: 80, ...sampling({ temperature: 0 }), messages: ask, tools: [weather], tool_choice: { type: 'tool', name: 'get_weather' } });
    let json = '';
    stream.on('inputJson', (delta) => (json += delta));
    const final = await stream.finalMessage();
    const use = final.content.find((b): b is Anthropic.ToolUseBlock => b.type === 'tool_use')!;
    expect(use.name).toBe('get_weather');
    expect(JSON.parse(json)).toEqual(use.input);
    expect(ajv.validate(weather.input_schema, use.input)).toBe(true);
    expect(final.stop_reason).toBe('tool_use');
  });

  it('a tool_result round trip: the call and its result reach the model as a tool call and a tool message', async () => {
    const first = await client.messages.create({ model: 'tiny', max_tokens: 80, ...sampling({ temperature: 0 }), messages: ask, tools: [weather], tool_choice: { type: 'tool', name: 'get_weather' } });
    const use = first.content.find((b): b is Anthropic.ToolUseBlock => b.type === 'tool_use')!;
    const second = await client.messages.create({
      model: 'tiny',
      max_tokens: 4,
      tools: [weather],
      messages: [...ask, { role: 'assistant', content: first.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: '18 degrees, sunny' }, { type: 'text', text: 'Thanks.' }] }],
    });
    expect(second.stop_reason).toBe('max_tokens');
    const row = await rowOf(lastRequestId());
    const msgs = row.input.messages as { role: string; content: string; tool_call_id?: string; tool_calls?: { id: string; function: { name: string; arguments: unknown } }[] }[];
    expect(msgs.map((m) => m.role)).toEqual(['user', 'assistant', 'tool', 'user']);
    expect(msgs[1]!.tool_calls![0]!.id).toBe(use.id);
    expect(msgs[1]!.tool_calls![0]!.function.arguments).toEqual(use.input);
    expect(msgs[2]).toMatchObject({ tool_call_id: use.id, content: '18 degrees, sunny' });
  });
});

describe('count_tokens', () => {
  it('equals the input_tokens messages.create reports for the same request, tools included', async () => {
    for (const extra of [{}, { tools: [weather, add] }, { system: 'Be brief.', tools: [weather], tool_choice: { type: 'auto' as const } }]) {
      const counted = await client.messages.countTokens({ model: 'tiny', messages: ask, ...extra });
      const m = await client.messages.create({ model: 'tiny', max_tokens: 1, messages: ask, ...extra });
      expect(counted.input_tokens).toBe(m.usage.input_tokens);
    }
  });
});

describe('errors and keys', () => {
  const expectError = async (p: Promise<unknown>, cls: abstract new (...a: never[]) => InstanceType<typeof Anthropic.APIError>, status: number, type: string) => {
    const err = await p.then(() => null, (e: unknown) => e);
    expect(err, 'the call failed').toBeInstanceOf(cls);
    const e = err as InstanceType<typeof Anthropic.APIError>;
    expect(e.status).toBe(status);
    expect(e.error).toMatchObject({ type: 'error', error: { type } });
    expect(typeof (e.error as { error: { message: string } }).error.message).toBe('string');
  };

  it("the SDK's error classes, from Anthropic's envelope", async () => {
    await expectError(client.messages.create({ model: 'tiny', messages: ask } as never), Anthropic.BadRequestError, 400, 'invalid_request_error');
    await expectError(client.messages.create({ model: 'tiny', max_tokens: 4, ...sampling({ top_k: -1 }), messages: ask }), Anthropic.BadRequestError, 400, 'invalid_request_error');
    await expectError(client.messages.create({ model: 'tiny', max_tokens: 4, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url: 'http://x' } }] }] }), Anthropic.BadRequestError, 400, 'invalid_request_error');
    await expectError(client.messages.create({ model: 'nope', max_tokens: 4, messages: ask }), Anthropic.NotFoundError, 404, 'not_found_error');
    await expectError(client.messages.countTokens({ model: 'tiny', messages: [] }), Anthropic.BadRequestError, 400, 'invalid_request_error');
    const wrong = new Anthropic({ baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
    await expectError(wrong.messages.create({ model: 'tiny', max_tokens: 4, messages: ask }), Anthropic.AuthenticationError, 401, 'authentication_error');
    // The SDK will not send a request without a key: a bare one, and a stream's error after the 200.
    const bare = await fetch(`${baseURL}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', max_tokens: 4, messages: ask }) });
    expect(bare.status).toBe(401);
    expect(await bare.json()).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });
  });

  it('a key scoped to other models may neither message nor count tokens with this one; Bearer works too', async () => {
    const limited = new Anthropic({ baseURL, apiKey: scoped, maxRetries: 0 });
    await expectError(limited.messages.create({ model: 'other', max_tokens: 4, messages: ask }), Anthropic.PermissionDeniedError, 403, 'permission_error');
    await expectError(limited.messages.countTokens({ model: 'other', messages: ask }), Anthropic.PermissionDeniedError, 403, 'permission_error');
    expect((await limited.messages.countTokens({ model: 'tiny', messages: ask })).input_tokens).toBeGreaterThan(0);
    const bearer = new Anthropic({ baseURL, apiKey: null, authToken: scoped, maxRetries: 0 });
    const m = await bearer.messages.create({ model: 'tiny', max_tokens: 2, messages: ask });
    expect(m.usage.output_tokens).toBe(2);
  });
});
