import { Ajv } from 'ajv';
import fc from 'fast-check';
import OpenAI from 'openai';
import { zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import type { ResponseStreamEvent } from 'openai/resources/responses/responses';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc, until } from '../helpers/stack.js';

/**
 * The Responses API through the whole stack (serve and worker as processes, real Postgres, the
 * tiny fixture model whose text is gibberish), driven by the official openai package.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let serve2: Proc & { url: string };
let worker: Proc & { workerId: string };
let client: OpenAI;
let other: OpenAI;
let keyA: string;

beforeAll(async () => {
  // A crashed worker is taken for dead after 3 s (the background test below kills one).
  process.env.SWITCHYARD_WORKER_TIMEOUT = '3';
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const r = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat', '--alias', 'gpt-4o-mini'], env);
  expect(r.code, r.stderr).toBe(0);
  const a = await cli(['keys', 'create', '--name', 'a'], env);
  const b = await cli(['keys', 'create', '--name', 'b'], env);
  expect(a.code, a.stderr).toBe(0);
  keyA = a.stdout.trim();
  [serve, serve2, worker] = await Promise.all([startServe(db.url), startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: keyA, maxRetries: 0 });
  other = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: b.stdout.trim(), maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), serve2?.stop(), worker?.stop()]);
  await db?.drop();
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
});

const requestRow = async (responseId: string) =>
  (await query<{ id: string; endpoint: string; status: string; input: { messages: unknown[] }; params: Record<string, unknown>; usage: Record<string, number> | null }>(
    db.url,
    'select id, endpoint, status, input, params, usage from ai.requests where id = $1',
    [hexToUuid(responseId.slice('resp_'.length))],
  ))[0]!;
const hexToUuid = (h: string) => `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;

describe('responses: create, retrieve, delete', () => {
  it('text input: an output message, usage in the Responses shape equal to the logged request', async () => {
    const r = await client.responses.create({ model: 'gpt-4o-mini', input: 'Name three colours.', instructions: 'Be brief.', max_output_tokens: 12, temperature: 0, metadata: { topic: 'colours' } });
    expect(r.object).toBe('response');
    expect(r.id).toMatch(/^resp_[0-9a-f]{32}$/);
    expect(r.model).toBe('gpt-4o-mini');
    expect(r.status).toBe('incomplete');
    expect(r.incomplete_details).toEqual({ reason: 'max_output_tokens' });
    expect(r.output).toHaveLength(1);
    const msg = r.output[0]!;
    expect(msg).toMatchObject({ type: 'message', role: 'assistant', status: 'incomplete' });
    expect(r.output_text.length).toBeGreaterThan(0);
    expect(r.metadata).toEqual({ topic: 'colours' });
    expect(r.instructions).toBe('Be brief.');
    const row = await requestRow(r.id);
    expect(row).toMatchObject({ endpoint: 'responses', status: 'completed' });
    expect(row.input.messages).toEqual([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Name three colours.' }]);
    expect(r.usage).toEqual({
      input_tokens: row.usage!.prompt_tokens,
      input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
      output_tokens: 12,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: row.usage!.total_tokens,
    });
    // Retrieved: the same object.
    expect(await client.responses.retrieve(r.id)).toEqual(r);
  });

  it('stream: Responses events in order with sequence numbers; deltas join to the non-streamed text', async () => {
    const base = { model: 'gpt-4o-mini', input: 'Count to five.', max_output_tokens: 16, temperature: 0 } as const;
    const plain = await client.responses.create(base);
    const stream = await client.responses.create({ ...base, stream: true });
    const events: ResponseStreamEvent[] = [];
    for await (const e of stream) events.push(e);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    const types = events.map((e) => e.type);
    expect(types.slice(0, 4)).toEqual(['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
    expect(types.slice(-4)).toEqual(['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.incomplete']);
    const deltas = events.filter((e) => e.type === 'response.output_text.delta');
    expect(deltas.length).toBeGreaterThanOrEqual(2);
    const text = deltas.map((e) => (e as { delta: string }).delta).join('');
    expect(text).toBe(plain.output_text);
    const last = events.at(-1) as { response: OpenAI.Responses.Response };
    expect(last.response.usage).toEqual(plain.usage);
    // Stored: retrieving it gives the final object of the stream.
    const got = await client.responses.retrieve(last.response.id);
    expect(got.output).toEqual(last.response.output);
    expect(got.status).toBe('incomplete');
  });

  it('input_items lists the turn’s items with ids; delete makes it a 404 and leaves no text in the log', async () => {
    const r = await client.responses.create({
      model: 'tiny',
      input: [
        { role: 'developer', content: 'You are terse.' },
        { role: 'user', content: [{ type: 'input_text', text: 'secret-7741 hello' }] },
      ],
      max_output_tokens: 4,
    });
    const page = await client.responses.inputItems.list(r.id, { order: 'asc' });
    expect(page.data.map((i) => i.type)).toEqual(['message', 'message']);
    expect(page.data[1]).toMatchObject({ role: 'user', content: [{ type: 'input_text', text: 'secret-7741 hello' }] });
    for (const item of page.data) expect(item.id).toMatch(/^msg_/);
    const desc = await client.responses.inputItems.list(r.id);
    expect(desc.data.map((i) => i.id)).toEqual(page.data.map((i) => i.id).reverse());
    await client.responses.delete(r.id);
    await expect(client.responses.retrieve(r.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.responses.delete(r.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const row = await requestRow(r.id);
    expect(JSON.stringify(row)).not.toContain('7741');
    expect(row.params).toMatchObject({ store: false, redacted_at: expect.any(String) });
  });

  it('store: false keeps nothing: no response to retrieve, no text in the log', async () => {
    const { data: s, response } = await client.responses.create({ model: 'tiny', input: 'secret-5521 hi', max_output_tokens: 4, store: false, stream: true }).withResponse();
    let streamed = '';
    for await (const e of s) if (e.type === 'response.output_text.delta') streamed += e.delta;
    expect(streamed.length).toBeGreaterThan(0);
    const streamedRow = (await query<{ input: unknown; events: number }>(db.url, 'select input, (select count(*)::int from ai.request_events e where e.request_id = r.id) as events from ai.requests r where id = $1', [response.headers.get('x-request-id')]))[0]!;
    expect(streamedRow).toEqual({ input: {}, events: 0 });
    const r = await client.responses.create({ model: 'tiny', input: 'secret-9913 hi', max_output_tokens: 4, store: false });
    expect((r as { store?: boolean }).store).toBe(false);
    expect(r.output_text.length).toBeGreaterThan(0);
    await expect(client.responses.retrieve(r.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const row = await requestRow(r.id);
    expect(row.input).toEqual({});
    expect(JSON.stringify(row)).not.toContain('9913');
  });

  it('previous_response_id: a three-turn conversation whose prompt equals the chat-completions prompt of the same messages', async () => {
    const instructions = 'You are a helpful assistant.';
    const q = ['What is red?', 'And blue?', 'And green?'];
    const one = await client.responses.create({ model: 'tiny', instructions, input: q[0]!, max_output_tokens: 6, temperature: 0 });
    const two = await client.responses.create({ model: 'tiny', instructions, input: q[1]!, previous_response_id: one.id, max_output_tokens: 6, temperature: 0 });
    const three = await client.responses.create({ model: 'tiny', instructions, input: q[2]!, previous_response_id: two.id, max_output_tokens: 6, temperature: 0 });
    expect(three.previous_response_id).toBe(two.id);
    const messages = [
      { role: 'system' as const, content: instructions },
      { role: 'user' as const, content: q[0]! },
      { role: 'assistant' as const, content: one.output_text },
      { role: 'user' as const, content: q[1]! },
      { role: 'assistant' as const, content: two.output_text },
      { role: 'user' as const, content: q[2]! },
    ];
    const { data: chat, response } = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 6, temperature: 0 }).withResponse();
    const chatRow = (await query<{ input: unknown }>(db.url, 'select input from ai.requests where id = $1', [response.headers.get('x-request-id')]))[0]!;
    expect((await requestRow(three.id)).input).toEqual(chatRow.input);
    expect(three.usage!.input_tokens).toBe(chat.usage!.prompt_tokens);
    expect(three.output_text).toBe(chat.choices[0]!.message.content);
  });

  it('function tools: a forced call, then a round trip with function_call_output', async () => {
    const tools: OpenAI.Responses.FunctionTool[] = [
      { type: 'function', name: 'get_weather', description: 'Weather in a city', strict: true, parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false } },
    ];
    const r = await client.responses.create({ model: 'tiny', input: 'Weather in Paris?', tools, tool_choice: 'required', max_output_tokens: 60, parallel_tool_calls: false });
    expect(r.status).toBe('completed');
    const calls = r.output.filter((o) => o.type === 'function_call');
    expect(calls).toHaveLength(1);
    const call = calls[0] as OpenAI.Responses.ResponseFunctionToolCall;
    expect(call).toMatchObject({ type: 'function_call', name: 'get_weather', status: 'completed', call_id: expect.stringMatching(/^call_/), id: expect.stringMatching(/^fc_/) });
    expect(JSON.parse(call.arguments)).toEqual({ city: expect.any(String) });
    // The stream says the same, in function_call_arguments events.
    const events: ResponseStreamEvent[] = [];
    for await (const e of await client.responses.create({ model: 'tiny', input: 'Weather in Paris?', tools, tool_choice: 'required', max_output_tokens: 60, parallel_tool_calls: false, stream: true })) events.push(e);
    const done = events.find((e) => e.type === 'response.function_call_arguments.done') as { arguments: string; name: string } | undefined;
    expect(done).toMatchObject({ name: 'get_weather' });
    const delta = events.find((e) => e.type === 'response.function_call_arguments.delta') as { delta: string };
    expect(delta.delta).toBe(done!.arguments);
    // Round trip: the call's output goes back, on top of the previous response.
    const next = await client.responses.create({
      model: 'tiny',
      previous_response_id: r.id,
      input: [{ type: 'function_call_output', call_id: call.call_id, output: '{"temperature": 21}' }],
      tools,
      max_output_tokens: 8,
    });
    expect(next.status).toMatch(/completed|incomplete/);
    const msgs = (await requestRow(next.id)).input.messages;
    expect(msgs.slice(-2)).toEqual([
      { role: 'assistant', content: '', tool_calls: [{ id: call.call_id, type: 'function', function: { name: 'get_weather', arguments: JSON.parse(call.arguments) } }] },
      { role: 'tool', tool_call_id: call.call_id, content: '{"temperature": 21}' },
    ]);
    // The same history sent explicitly (the output items echoed back) gives the same prompt.
    const explicit = await client.responses.create({
      model: 'tiny',
      input: [{ role: 'user', content: 'Weather in Paris?' }, call, { type: 'function_call_output', call_id: call.call_id, output: '{"temperature": 21}' }],
      tools,
      max_output_tokens: 8,
    });
    expect((await requestRow(explicit.id)).input.messages).toEqual(msgs);
    // And by reference: stored items named by their ids (another key cannot name them).
    const byRef = await client.responses.create({
      model: 'tiny',
      input: [{ type: 'item_reference', id: (await client.responses.inputItems.list(r.id)).data[0]!.id }, { type: 'item_reference', id: call.id! }, { type: 'function_call_output', call_id: call.call_id, output: '{"temperature": 21}' }],
      tools,
      max_output_tokens: 8,
    });
    expect((await requestRow(byRef.id)).input.messages).toEqual(msgs);
    await expect(other.responses.create({ model: 'tiny', input: [{ type: 'item_reference', id: call.id! }], max_output_tokens: 2 })).rejects.toMatchObject({ status: 404, code: 'item_not_found', param: 'input[0].id' });
  });

  it('text.format json_schema: output valid for the schema (checked with ajv)', async () => {
    const schema = { type: 'object', properties: { name: { type: 'string' }, colours: { type: 'array', items: { type: 'string' }, maxItems: 3 } }, required: ['name', 'colours'], additionalProperties: false };
    const r = await client.responses.create({ model: 'tiny', input: 'A city and its colours', text: { format: { type: 'json_schema', name: 'city', schema, strict: true } }, max_output_tokens: 80 });
    expect(r.text?.format).toMatchObject({ type: 'json_schema', name: 'city' });
    const value = JSON.parse(r.output_text);
    const validate = new Ajv().compile(schema);
    expect(validate(value), JSON.stringify(validate.errors)).toBe(true);
    const obj = await client.responses.create({ model: 'tiny', input: 'Any object', text: { format: { type: 'json_object' } }, max_output_tokens: 40 });
    expect(typeof JSON.parse(obj.output_text)).toBe('object');
  });
});

describe('responses: openai-node helpers', () => {
  it('responses.stream accumulates the events into the final response; responses.parse with zodTextFormat', async () => {
    const runner = client.responses.stream({ model: 'tiny', input: 'Count to five.', max_output_tokens: 10, temperature: 0 });
    let deltas = '';
    runner.on('response.output_text.delta', (e) => (deltas += e.delta));
    const final = await runner.finalResponse();
    expect(final.output_text).toBe(deltas);
    // (The helper adds `parsed: null` to each text part; otherwise the same as the stored object.)
    const stored = await client.responses.retrieve(final.id);
    expect(stored).toMatchObject({ id: final.id, status: final.status, output_text: final.output_text, usage: final.usage });
    expect(stored.output.map((o) => o.id)).toEqual(final.output.map((o) => o.id));
    const City = z.object({ name: z.string(), colours: z.array(z.string()).max(3) });
    const parsed = await client.responses.parse({ model: 'tiny', input: 'A city', text: { format: zodTextFormat(City, 'city') }, max_output_tokens: 80 });
    expect(City.parse(parsed.output_parsed)).toEqual(parsed.output_parsed);
  });
});

describe('responses: errors in OpenAI’s envelope', () => {
  const post = async (body: unknown, key = keyA) => {
    const res = await fetch(`${serve.url}/v1/responses`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } } };
  };

  it('unknown ids and another key’s responses are a 404; built-in tools and unsupported parameters a 400 naming them', async () => {
    await expect(client.responses.retrieve('resp_0123456789abcdef0123456789abcdef')).rejects.toMatchObject({ status: 404, code: 'response_not_found' });
    await expect(client.responses.retrieve('nonsense')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const mine = await client.responses.create({ model: 'tiny', input: 'hi', max_output_tokens: 2, background: true });
    for (const call of [() => other.responses.retrieve(mine.id), () => other.responses.delete(mine.id), () => other.responses.cancel(mine.id), () => other.responses.inputItems.list(mine.id)]) {
      await expect(call()).rejects.toMatchObject({ status: 404, code: 'response_not_found' });
    }
    await expect(other.responses.create({ model: 'tiny', input: 'hi', previous_response_id: mine.id })).rejects.toMatchObject({ status: 404, code: 'previous_response_not_found', param: 'previous_response_id' });
    // Still there for its owner.
    expect((await client.responses.retrieve(mine.id)).id).toBe(mine.id);

    for (const type of ['web_search', 'file_search', 'computer_use_preview', 'code_interpreter']) {
      const r = await post({ model: 'tiny', input: 'x', tools: [{ type }] });
      expect(r.status).toBe(400);
      expect(r.body.error).toMatchObject({ type: 'invalid_request_error', param: 'tools[0].type', code: 'unsupported_parameter' });
      expect(r.body.error.message).toContain(type);
    }
    const include = await post({ model: 'tiny', input: 'x', include: ['message.output_text.logprobs'] });
    expect(include).toMatchObject({ status: 400, body: { error: { param: 'include[0]', code: 'unsupported_parameter' } } });
    const verbosity = await post({ model: 'tiny', input: 'x', text: { verbosity: 'low' } });
    expect(verbosity).toMatchObject({ status: 400, body: { error: { param: 'text.verbosity', code: 'unsupported_parameter' } } });
    const badItem = await post({ model: 'tiny', input: [{ type: 'function_call_output', call_id: 'c', output: 5 }] });
    expect(badItem).toMatchObject({ status: 400, body: { error: { param: 'input[0].output' } } });
    const notAnItem = await post({ model: 'tiny', input: [null] });
    expect(notAnItem).toMatchObject({ status: 400, body: { error: { param: 'input[0]' } } });
    const badQuery = await fetch(`${serve.url}/v1/responses/${mine.id}?stream=true&starting_after=x`, { headers: { authorization: `Bearer ${keyA}` } });
    expect(badQuery.status).toBe(400);
    expect(((await badQuery.json()) as { error: { param: string } }).error.param).toBe('starting_after');
    const reasoning = await post({ model: 'tiny', input: 'x', reasoning: { effort: 'low' } });
    expect(reasoning).toMatchObject({ status: 400, body: { error: { param: 'reasoning', code: 'unsupported_parameter' } } });
    const image = await post({ model: 'tiny', input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'http://x/y.png' }] }] });
    expect(image).toMatchObject({ status: 400, body: { error: { param: 'input[0].content[0].type', code: 'unsupported_parameter' } } });
    const badSchema = await post({ model: 'tiny', input: 'x', text: { format: { type: 'json_schema', name: 'n', schema: { type: 'string', pattern: 'a+' } } } });
    expect(badSchema).toMatchObject({ status: 400, body: { error: { param: 'text.format', code: 'invalid_json_schema' } } });
    const badTool = await post({ model: 'tiny', input: 'x', tools: [{ type: 'function', name: 'f' }], tool_choice: { type: 'function', name: 'g' } });
    expect(badTool).toMatchObject({ status: 400, body: { error: { param: 'tool_choice.name' } } });
    const unknownModel = await post({ model: 'nope', input: 'x' });
    expect(unknownModel).toMatchObject({ status: 404, body: { error: { code: 'model_not_found', param: 'model' } } });
    const noInput = await post({ model: 'tiny' });
    expect(noInput).toMatchObject({ status: 400, body: { error: { param: 'input' } } });
    const bgUnstored = await post({ model: 'tiny', input: 'x', background: true, store: false });
    expect(bgUnstored).toMatchObject({ status: 400, body: { error: { param: 'background' } } });
    const running = await client.responses.create({ model: 'tiny', input: 'A long story', max_output_tokens: 1500, background: true });
    await expect(client.responses.create({ model: 'tiny', input: 'x', previous_response_id: running.id })).rejects.toMatchObject({ status: 400, code: 'previous_response_in_progress', param: 'previous_response_id' });
    await client.responses.cancel(running.id);
    const cancelForeground = await client.responses.create({ model: 'tiny', input: 'x', max_output_tokens: 2 });
    await expect(client.responses.cancel(cancelForeground.id)).rejects.toMatchObject({ status: 400 });
  });
});

describe('responses: fuzzed bodies', () => {
  it('any body gets a 200 or an error in OpenAI’s envelope, never a 5xx', async () => {
    const value = fc.oneof(
      fc.string({ maxLength: 8 }), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.constant('tiny'), fc.constant('auto'), fc.constant('required'),
      fc.constant('resp_0123456789abcdef0123456789abcdef'), fc.array(fc.anything({ maxDepth: 2 }), { maxLength: 3 }), fc.object({ maxDepth: 2 }),
      fc.constantFrom({ type: 'json_schema', name: 'x', schema: { type: 'object' } }, { format: { type: 'json_object' } }, { type: 'function', name: 'f' }),
    );
    const item = fc.oneof(
      value,
      fc.record({ role: fc.constantFrom('user', 'assistant', 'system', 'developer', 'tool', 'x'), content: fc.oneof(value, fc.array(fc.record({ type: fc.constantFrom('input_text', 'output_text', 'input_image', 'refusal', 'x'), text: value }, { requiredKeys: [] }), { maxLength: 2 })) }, { requiredKeys: [] }),
      fc.record({ type: fc.constantFrom('function_call', 'function_call_output', 'item_reference', 'message', 'reasoning'), call_id: value, name: value, arguments: value, output: value, id: value }, { requiredKeys: ['type'] }),
    );
    const keys = ['model', 'input', 'instructions', 'tools', 'tool_choice', 'parallel_tool_calls', 'text', 'metadata', 'user', 'store', 'truncation', 'stream', 'background', 'previous_response_id', 'temperature', 'top_p', 'include', 'reasoning', 'nonsense'];
    // A valid request with up to three fields replaced by anything: deep enough to reach generation.
    const body = fc.dictionary(fc.constantFrom(...keys), fc.oneof(value, fc.array(item, { maxLength: 3 })), { maxKeys: 3 }).map((d) => ({ model: 'tiny', input: 'hi', ...d }));
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(body, async (b) => {
        const res = await fetch(`${serve.url}/v1/responses`, {
          method: 'POST',
          headers: { authorization: `Bearer ${keyA}`, 'content-type': 'application/json' },
          body: JSON.stringify({ ...b, max_output_tokens: 1 }),
        });
        const text = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        expect(res.status, text).toBeLessThan(500);
        if (res.status !== 200) expect(Object.keys(JSON.parse(text).error).sort()).toEqual(['code', 'message', 'param', 'type']);
      }),
      { numRuns: 150 },
    );
    // Not vacuous: some are served, many refused.
    expect(statuses.get(200) ?? 0, JSON.stringify([...statuses])).toBeGreaterThanOrEqual(10);
    expect(statuses.get(400) ?? 0, JSON.stringify([...statuses])).toBeGreaterThanOrEqual(10);
  }, 120_000);
});

describe('responses: truncation', () => {
  it("'disabled' (the default) refuses a conversation that cannot fit; 'auto' drops its oldest items", async () => {
    // The worker records the model's input bound when it loads it (the requests above loaded it).
    await until('the input bound', async () => (await query<{ b: unknown }>(db.url, `select input_bound as b from ai.models where name = 'tiny'`))[0]!.b);
    const input = [
      { role: 'user' as const, content: 'x'.repeat(200_000) },
      { role: 'assistant' as const, content: 'ok' },
      { role: 'user' as const, content: 'A short question.' },
    ];
    await expect(client.responses.create({ model: 'tiny', input, max_output_tokens: 4 })).rejects.toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'input' });
    const r = await client.responses.create({ model: 'tiny', input, max_output_tokens: 4, truncation: 'auto' });
    expect(r.truncation).toBe('auto');
    expect((await requestRow(r.id)).input.messages).toEqual([{ role: 'assistant', content: 'ok' }, { role: 'user', content: 'A short question.' }]);
  });
});

describe('responses: background', () => {
  it('answers at once with status queued, then is polled to completion', async () => {
    const r = await client.responses.create({ model: 'tiny', input: 'Tell me a story.', max_output_tokens: 40, background: true, temperature: 0 });
    expect(r.status).toBe('queued');
    expect(r.background).toBe(true);
    expect(r.output).toEqual([]);
    const done = await until('the background response to end', async () => {
      const got = await client.responses.retrieve(r.id);
      return got.status === 'queued' || got.status === 'in_progress' ? null : got;
    });
    expect(done.status).toBe('incomplete');
    expect(done.usage!.output_tokens).toBe(40);
    const fg = await client.responses.create({ model: 'tiny', input: 'Tell me a story.', max_output_tokens: 40, temperature: 0 });
    expect(done.output_text).toBe(fg.output_text);
  });

  it('cancelled mid-generation: status cancelled, and the generation stops', async () => {
    const r = await client.responses.create({ model: 'tiny', input: 'A very long story please.', max_output_tokens: 1500, background: true });
    await until('text to appear', async () => (await client.responses.retrieve(r.id)).output_text?.length);
    const cancelled = await client.responses.cancel(r.id);
    expect(cancelled.status).toBe('cancelled');
    expect((await requestRow(r.id)).status).toBe('cancelled');
    expect((await client.responses.retrieve(r.id)).status).toBe('cancelled');
    // Cancelling again changes nothing.
    expect((await client.responses.cancel(r.id)).status).toBe('cancelled');
  });

  it('a stream cut after N events and resumed with starting_after=N (on another serve) gives exactly the remaining events', async () => {
    const stream = await client.responses.create({ model: 'tiny', input: 'Count slowly.', max_output_tokens: 60, background: true, stream: true, temperature: 0 });
    const head: ResponseStreamEvent[] = [];
    for await (const e of stream) {
      head.push(e);
      if (head.length === 5) break; // the client goes away; a background response runs on
    }
    const id = (head[0] as { response: { id: string } }).response.id;
    const N = head.at(-1)!.sequence_number;
    expect(N).toBe(4);
    // Resumed on a second serve process, while it may still be generating.
    const resumed = new OpenAI({ baseURL: `${serve2.url}/v1`, apiKey: keyA, maxRetries: 0 });
    const tail: ResponseStreamEvent[] = [];
    for await (const e of await resumed.responses.retrieve(id, { stream: true, starting_after: N })) tail.push(e);
    expect(tail[0]!.sequence_number).toBe(N + 1);
    expect(tail.map((e) => e.sequence_number)).toEqual(tail.map((_, i) => N + 1 + i));
    expect(tail.at(-1)!.type).toBe('response.incomplete');
    // Together they are the whole stream, as a full replay gives it.
    const all: ResponseStreamEvent[] = [];
    for await (const e of await client.responses.retrieve(id, { stream: true })) all.push(e);
    expect([...head, ...tail]).toEqual(all);
    const text = all.filter((e) => e.type === 'response.output_text.delta').map((e) => (e as { delta: string }).delta).join('');
    expect(text).toBe((await client.responses.retrieve(id)).output_text);
    expect((await requestRow(id)).status).toBe('completed');
  });

  it('survives a restart of the gateway that took it and a crash of the worker running it', async () => {
    const input = 'A long story about the sea.';
    const r = await client.responses.create({ model: 'tiny', input, max_output_tokens: 1000, background: true, temperature: 0 });
    const elsewhere = new OpenAI({ baseURL: `${serve2.url}/v1`, apiKey: keyA, maxRetries: 0 });
    await until('text to appear', async () => (await elsewhere.responses.retrieve(r.id)).output_text?.length);
    // The gateway that took it goes away, and the worker dies mid-generation.
    await serve.stop();
    worker.child.kill('SIGKILL');
    await worker.stop();
    const partial = await elsewhere.responses.retrieve(r.id);
    expect(partial.status).toBe('in_progress');
    [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
    client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: keyA, maxRetries: 0 });
    const done = await until('the response to end', async () => {
      const got = await client.responses.retrieve(r.id);
      return got.status === 'queued' || got.status === 'in_progress' ? null : got;
    }, 90_000);
    expect(done.status).toBe('incomplete');
    expect(done.usage!.output_tokens).toBe(1000);
    const attempts = (await query<{ attempts: number }>(db.url, 'select attempts from ai.requests where id = $1', [hexToUuid(r.id.slice(5))]))[0]!.attempts;
    expect(attempts).toBeGreaterThanOrEqual(2);
    // The output is the second run's whole answer (the same as a foreground run, at temperature 0).
    const fg = await client.responses.create({ model: 'tiny', input, max_output_tokens: 1000, temperature: 0 });
    expect(done.output_text).toBe(fg.output_text);
    expect(done.output).toHaveLength(1);
  }, 150_000);
});
