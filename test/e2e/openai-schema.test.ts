import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { openaiSchemas, type OpenAISchemas, type SchemaName } from '../helpers/openai-schema.js';
import { cli, startServe, startWorker, type Proc, until } from '../helpers/stack.js';

/**
 * Every object the Responses API and chat completions send, checked against OpenAI's published
 * schema as openai-node types it (test/helpers/openai-schema.ts derives JSON Schemas from the
 * SDK's .d.ts at test time; strict: required fields present, no field the schema does not name).
 * Raw HTTP, not the SDK: the SDK would add fields of its own (output_text) and hide ours.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let key: string;
let schemas: OpenAISchemas;
/** Every stream event type seen in this file (the union members our streams use). */
const seenEvents = new Set<string>();

beforeAll(async () => {
  schemas = openaiSchemas();
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const r = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env);
  expect(r.code, r.stderr).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'schema'], env)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

const headers = (body = true) => ({ authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) });

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${serve.url}/v1${path}`, { method, headers: headers(body !== undefined), ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  return { status: res.status, json: await res.json() };
}

/** The `data:` payloads of an SSE body (without [DONE]). */
async function sse(res: Response): Promise<any[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .map((block) => /^data: (.*)$/m.exec(block)?.[1])
    .filter((d): d is string => d !== undefined && d !== '[DONE]')
    .map((d) => JSON.parse(d));
}

const stream = async (path: string, body?: unknown) => {
  const res = await fetch(`${serve.url}/v1${path}`, { method: body === undefined ? 'GET' : 'POST', headers: headers(body !== undefined), ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  expect(res.status).toBe(200);
  return sse(res);
};

function valid(name: SchemaName, value: unknown) {
  expect(schemas.errors(name, value), `${name}: ${JSON.stringify(value).slice(0, 400)}`).toEqual([]);
}

function validEvents(events: any[]) {
  expect(events.length).toBeGreaterThan(0);
  for (const e of events) {
    seenEvents.add(e.type);
    expect(schemas.eventErrors(e), JSON.stringify(e).slice(0, 400)).toEqual([]);
  }
}

const tools = [
  {
    type: 'function',
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false },
    strict: true,
  },
];
const jsonSchema = {
  type: 'json_schema',
  name: 'person',
  strict: true,
  schema: { type: 'object', properties: { name: { type: 'string' }, age: { type: 'integer' } }, required: ['name', 'age'], additionalProperties: false },
};

describe('the derivation', () => {
  it('derives the Response, stream event, item list and chat schemas from openai-node, and they reject what is wrong', () => {
    expect(schemas.eventTypes).toEqual(expect.arrayContaining(['response.created', 'response.output_text.delta', 'response.completed', 'error']));
    // Not vacuous: a missing field, a wrong type, an invented field and an unknown event type all fail.
    expect(schemas.errors('OpenAIResponse', { id: 'resp_x' })).not.toEqual([]);
    expect(schemas.eventErrors({ type: 'response.output_text.delta', sequence_number: 1, item_id: 'i', output_index: 0, content_index: 0, delta: 'x', logprobs: [] })).toEqual([]);
    expect(schemas.eventErrors({ type: 'response.output_text.delta', sequence_number: '1', item_id: 'i', output_index: 0, content_index: 0, delta: 'x', logprobs: [] })).not.toEqual([]);
    expect(schemas.eventErrors({ type: 'response.output_text.delta', sequence_number: 1, item_id: 'i', output_index: 0, content_index: 0, delta: 'x', logprobs: [], extra: 1 })).not.toEqual([]);
    expect(schemas.eventErrors({ type: 'response.made_up' })).not.toEqual([]);
    expect(schemas.errors('OpenAIChatCompletionChunk', { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [] })).toEqual([]);
    expect(schemas.errors('OpenAIChatCompletionChunk', { id: 'c', object: 'chat.completion', created: 1, model: 'm', choices: [] })).not.toEqual([]);
  });
});

describe('Responses API objects', () => {
  it('create (text, incomplete, instructions, metadata), retrieve and input_items', async () => {
    const created = await call('POST', '/responses', { model: 'tiny', input: 'Hello there', instructions: 'Be brief.', metadata: { k: 'v' }, max_output_tokens: 4, temperature: 0.5, user: 'u1' });
    expect(created.status).toBe(200);
    valid('OpenAIResponse', created.json);
    expect(created.json.status).toBe('incomplete');
    const stopped = await call('POST', '/responses', { model: 'tiny', input: [{ role: 'user', content: [{ type: 'input_text', text: 'Hi' }] }], max_output_tokens: 200, temperature: 0 });
    valid('OpenAIResponse', stopped.json);
    const got = await call('GET', `/responses/${created.json.id}`);
    expect(got.status).toBe(200);
    valid('OpenAIResponse', got.json);
    const items = await call('GET', `/responses/${created.json.id}/input_items`);
    valid('OpenAIResponseItemList', items.json);
    const next = await call('POST', '/responses', { model: 'tiny', input: 'And then?', previous_response_id: created.json.id, max_output_tokens: 3, store: true });
    valid('OpenAIResponse', next.json);
    valid('OpenAIResponse', (await call('POST', '/responses', { model: 'tiny', input: 'x', max_output_tokens: 2, store: false })).json);
  });

  it('streamed: every event, and the responses they carry', async () => {
    validEvents(await stream('/responses', { model: 'tiny', input: 'Tell me something', max_output_tokens: 12, stream: true }));
    validEvents(await stream('/responses', { model: 'tiny', input: 'Hi', max_output_tokens: 200, temperature: 0, stream: true }));
  });

  it('function tools: a forced call, streamed and not, and the function_call_output round trip', async () => {
    const forced = await call('POST', '/responses', { model: 'tiny', input: 'Weather in Paris?', tools, tool_choice: { type: 'function', name: 'get_weather' }, max_output_tokens: 60 });
    expect(forced.status).toBe(200);
    valid('OpenAIResponse', forced.json);
    const fc = forced.json.output.find((o: { type: string }) => o.type === 'function_call');
    expect(fc).toBeDefined();
    const round = await call('POST', '/responses', {
      model: 'tiny',
      previous_response_id: forced.json.id,
      input: [{ type: 'function_call_output', call_id: fc.call_id, output: '{"temperature": 21}' }],
      tools,
      max_output_tokens: 8,
    });
    valid('OpenAIResponse', round.json);
    valid('OpenAIResponseItemList', (await call('GET', `/responses/${round.json.id}/input_items`)).json);
    const streamed = await stream('/responses', { model: 'tiny', input: 'Weather in Paris?', tools, tool_choice: 'required', max_output_tokens: 60, stream: true });
    validEvents(streamed);
    expect(streamed.map((e) => e.type)).toContain('response.function_call_arguments.delta');
    valid('OpenAIResponse', (await call('POST', '/responses', { model: 'tiny', input: 'x', tools, tool_choice: 'auto', parallel_tool_calls: false, max_output_tokens: 4 })).json);
  });

  it('text.format json_schema and json_object, streamed and not', async () => {
    const js = await call('POST', '/responses', { model: 'tiny', input: 'A person', text: { format: jsonSchema }, max_output_tokens: 60 });
    expect(js.status).toBe(200);
    valid('OpenAIResponse', js.json);
    validEvents(await stream('/responses', { model: 'tiny', input: 'A person', text: { format: jsonSchema }, max_output_tokens: 60, stream: true }));
    valid('OpenAIResponse', (await call('POST', '/responses', { model: 'tiny', input: 'JSON please', text: { format: { type: 'json_object' } }, max_output_tokens: 20 })).json);
  });

  it('background: queued, polled, completed; cancelled mid-generation; its stream resumed', async () => {
    const bg = await call('POST', '/responses', { model: 'tiny', input: 'Short', max_output_tokens: 8, background: true });
    valid('OpenAIResponse', bg.json);
    expect(bg.json.status).toBe('queued');
    const done = await until('the background response to end', async () => {
      const r = await call('GET', `/responses/${bg.json.id}`);
      valid('OpenAIResponse', r.json);
      return r.json.status !== 'queued' && r.json.status !== 'in_progress' ? r.json : undefined;
    });
    expect(done.status).toBe('incomplete');
    validEvents(await stream(`/responses/${bg.json.id}?stream=true`));
    validEvents(await stream(`/responses/${bg.json.id}?stream=true&starting_after=2`));

    const long = await call('POST', '/responses', { model: 'tiny', input: 'A long story', max_output_tokens: 1500, background: true });
    await until('it to start', async () => (await call('GET', `/responses/${long.json.id}`)).json.status === 'in_progress');
    const cancelled = await call('POST', `/responses/${long.json.id}/cancel`);
    expect(cancelled.status).toBe(200);
    valid('OpenAIResponse', cancelled.json);
    expect(cancelled.json.status).toBe('cancelled');
    valid('OpenAIResponse', (await call('GET', `/responses/${long.json.id}`)).json);
    const replay = await stream(`/responses/${long.json.id}?stream=true`);
    validEvents(replay);
    // No event type of OpenAI's says cancelled: the stream ends with response.failed, its response cancelled.
    expect(replay.at(-1)).toMatchObject({ type: 'response.failed', response: { status: 'cancelled', error: null } });

    // Streamed from its creation.
    validEvents(await stream('/responses', { model: 'tiny', input: 'Short', max_output_tokens: 6, background: true, stream: true }));
  });

  it('delete', async () => {
    const r = await call('POST', '/responses', { model: 'tiny', input: 'x', max_output_tokens: 2 });
    const d = await call('DELETE', `/responses/${r.json.id}`);
    expect(d).toEqual({ status: 200, json: { id: r.json.id, object: 'response', deleted: true } });
  });

  it('the streams used the core event types', () => {
    expect([...seenEvents]).toEqual(
      expect.arrayContaining([
        'response.created',
        'response.in_progress',
        'response.output_item.added',
        'response.content_part.added',
        'response.output_text.delta',
        'response.output_text.done',
        'response.content_part.done',
        'response.output_item.done',
        'response.function_call_arguments.delta',
        'response.function_call_arguments.done',
        'response.completed',
        'response.incomplete',
        'response.failed',
      ]),
    );
  });
});

describe('chat completions objects', () => {
  const messages = [{ role: 'user', content: 'Hello' }];
  it('chat.completion: text, n, logprobs, tools', async () => {
    for (const body of [
      { model: 'tiny', messages, max_tokens: 5 },
      { model: 'tiny', messages, max_tokens: 5, n: 2, logprobs: true, top_logprobs: 2 },
      { model: 'tiny', messages, max_tokens: 60, tools: [{ type: 'function', function: { name: tools[0]!.name, parameters: tools[0]!.parameters } }], tool_choice: 'required' },
      { model: 'tiny', messages, max_tokens: 60, response_format: { type: 'json_schema', json_schema: { name: 'p', schema: jsonSchema.schema, strict: true } } },
    ]) {
      const r = await call('POST', '/chat/completions', body);
      expect(r.status).toBe(200);
      valid('OpenAIChatCompletion', r.json);
    }
  });

  it('chat.completion.chunk: text with usage, logprobs, tools', async () => {
    for (const body of [
      { model: 'tiny', messages, max_tokens: 5, stream: true, stream_options: { include_usage: true } },
      { model: 'tiny', messages, max_tokens: 5, stream: true, logprobs: true, top_logprobs: 2, n: 2 },
      { model: 'tiny', messages, max_tokens: 60, stream: true, tools: [{ type: 'function', function: { name: tools[0]!.name, parameters: tools[0]!.parameters } }], tool_choice: 'required' },
    ]) {
      const chunks = await stream('/chat/completions', body);
      expect(chunks.length).toBeGreaterThan(1);
      for (const c of chunks) valid('OpenAIChatCompletionChunk', c);
    }
  });
});
