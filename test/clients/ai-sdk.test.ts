import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { APICallError, embed, embedMany, generateText, jsonSchema, Output, RetryError, stepCountIs, streamText, tool } from 'ai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attempts, expectSameVectors, Recorder, startGateway, type Gateway } from './harness.js';

/**
 * The Vercel AI SDK against a running gateway, through both of its providers that speak OpenAI's
 * wire format: `@ai-sdk/openai-compatible` and `@ai-sdk/openai` with a base URL.
 */
let gw: Gateway;
const rec = new Recorder();
const system = 'You are a helpful assistant.';
const prompt = 'Name three colours of the rainbow.';

let compat: ReturnType<typeof createOpenAICompatible>;
let openai: ReturnType<typeof createOpenAI>;

beforeAll(async () => {
  gw = await startGateway();
  compat = createOpenAICompatible({ name: 'switchyard', baseURL: gw.baseURL, apiKey: gw.key, fetch: rec.fetch, includeUsage: true });
  openai = createOpenAI({ baseURL: gw.baseURL, apiKey: gw.key, fetch: rec.fetch });
});

afterAll(async () => {
  await gw?.stop();
});

const usageOf = (row: { usage: { prompt_tokens: number; completion_tokens?: number; total_tokens: number } | null }) => ({
  inputTokens: row.usage!.prompt_tokens,
  outputTokens: row.usage!.completion_tokens,
  totalTokens: row.usage!.total_tokens,
});

describe.each([
  ['@ai-sdk/openai-compatible', () => compat.chatModel('gpt-4o-mini')],
  ['@ai-sdk/openai (.chat)', () => openai.chat('gpt-4o-mini')],
])('%s', (_name, model) => {
  it('generateText: text, finish reason, and usage equal to the logged row', async () => {
    const seen = rec.mark();
    const r = await generateText({ model: model(), system, prompt, temperature: 0, maxOutputTokens: 12, maxRetries: 0 });
    expect(r.text.length).toBeGreaterThan(0);
    expect(r.finishReason).toBe('length');
    expect(r.response.modelId).toBe('gpt-4o-mini');
    const [ex] = seen();
    expect(ex!.path).toBe('/v1/chat/completions');
    expect(ex!.body).toMatchObject({ model: 'gpt-4o-mini', temperature: 0, max_tokens: 12 });
    const row = await gw.row(ex!.requestId);
    expect(row).toMatchObject({ model: 'tiny', status: 'completed' });
    expect(row.output!.choices[0].text).toBe(r.text);
    expect(row.usage!.completion_tokens).toBe(12);
    expect(r.usage).toMatchObject(usageOf(row));
  });

  it('streamText: the stream joins to the generateText text (temperature 0), with usage from the stream', async () => {
    // Long enough to span several flushes (SWITCHYARD_FLUSH_MS), whatever the first token's text.
    const whole = await generateText({ model: model(), system, prompt, temperature: 0, maxOutputTokens: 200, maxRetries: 0 });
    const seen = rec.mark();
    const errors: unknown[] = [];
    const r = streamText({ model: model(), system, prompt, temperature: 0, maxOutputTokens: 200, maxRetries: 0, onError: ({ error }) => void errors.push(error) });
    const parts: string[] = [];
    for await (const part of r.textStream) parts.push(part);
    expect(errors).toEqual([]);
    // More than one piece: the first token goes out at once, later ones coalesce per flush (SWITCHYARD_FLUSH_MS).
    expect(parts.length).toBeGreaterThanOrEqual(2);
    expect(parts.join('')).toBe(whole.text);
    expect(await r.finishReason).toBe('length');
    const [ex] = seen();
    expect(ex!.body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
    const row = await gw.row(ex!.requestId);
    expect(await r.usage).toMatchObject(usageOf(row));
  });
});

describe.each([
  ['@ai-sdk/openai-compatible', () => compat.completionModel('gpt-4o-mini')],
  ['@ai-sdk/openai', () => openai.completion('gpt-4o-mini')],
])('%s completion model (legacy /v1/completions)', (_name, model) => {
  it('generateText and streamText agree (temperature 0), with usage equal to the row', async () => {
    const seen = rec.mark();
    const whole = await generateText({ model: model(), prompt: 'Once upon a time', temperature: 0, maxOutputTokens: 12, maxRetries: 0 });
    let streamed = '';
    const errors: unknown[] = [];
    const r = streamText({ model: model(), prompt: 'Once upon a time', temperature: 0, maxOutputTokens: 12, maxRetries: 0, onError: ({ error }) => void errors.push(error) });
    for await (const part of r.textStream) streamed += part;
    expect(errors).toEqual([]);
    expect(whole.text.length).toBeGreaterThan(0);
    expect(streamed).toBe(whole.text);
    const [a, b] = seen();
    expect(a!.path).toBe('/v1/completions');
    // The SDK turns the prompt into a transcript and stops at the next turn.
    expect(a!.body).toMatchObject({ prompt: 'user:\nOnce upon a time\n\nassistant:\n', stop: ['\nuser:'] });
    const row = await gw.row(a!.requestId);
    expect(row).toMatchObject({ model: 'tiny', status: 'completed' });
    expect(whole.usage).toMatchObject(usageOf(row));
    expect(await r.usage).toMatchObject(usageOf(await gw.row(b!.requestId)));
  });
});

describe('@ai-sdk/openai default model: the Responses API', () => {
  it('generateText and streamText with `openai(id)` post to /v1/responses and agree, usage equal to the logged row', async () => {
    const seen = rec.mark();
    const r = await generateText({ model: openai('gpt-4o-mini'), system, prompt, temperature: 0, maxOutputTokens: 200, maxRetries: 0 });
    expect(r.text.length).toBeGreaterThan(0);
    expect(r.finishReason).toBe('length');
    const errors: unknown[] = [];
    const s = streamText({ model: openai('gpt-4o-mini'), system, prompt, temperature: 0, maxOutputTokens: 200, maxRetries: 0, onError: ({ error }) => void errors.push(error) });
    const parts: string[] = [];
    for await (const part of s.textStream) parts.push(part);
    expect(errors).toEqual([]);
    expect(parts.length).toBeGreaterThanOrEqual(2);
    expect(parts.join('')).toBe(r.text);
    expect(await s.finishReason).toBe('length');
    const [a, b] = seen();
    expect(`${a!.method} ${a!.path} ${a!.status}`).toBe('POST /v1/responses 200');
    expect(a!.body).toMatchObject({ model: 'gpt-4o-mini', temperature: 0, max_output_tokens: 200 });
    expect(b!.body).toMatchObject({ stream: true });
    const row = await gw.row(a!.requestId);
    expect(row).toMatchObject({ endpoint: 'responses', model: 'tiny', status: 'completed' });
    expect(row.output!.choices[0].text).toBe(r.text);
    expect(row.input.messages).toEqual([{ role: 'system', content: system }, { role: 'user', content: prompt }]);
    expect(r.usage).toMatchObject(usageOf(row));
    expect(await s.usage).toMatchObject(usageOf(await gw.row(b!.requestId)));
  });

  it('a tool call: a forced call with parsed input, then a second step with its result', async () => {
    const seen = rec.mark();
    const weather = tool({
      description: 'The weather in a city',
      inputSchema: jsonSchema<{ city: string }>({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false }),
    });
    const called = await generateText({ model: openai('gpt-4o-mini'), prompt, tools: { weather }, toolChoice: 'required', maxOutputTokens: 60, maxRetries: 0 });
    expect(called.finishReason).toBe('tool-calls');
    expect(called.toolCalls).toHaveLength(1);
    expect(called.toolCalls[0]).toMatchObject({ toolName: 'weather', input: { city: expect.any(String) } });
    // With an execute function and two steps: the result goes back as a function_call_output.
    const executed = tool({ ...weather, execute: async ({ city }: { city: string }) => ({ city, celsius: 21 }) });
    const twoSteps = await generateText({ model: openai('gpt-4o-mini'), prompt, tools: { weather: executed }, toolChoice: 'required', stopWhen: stepCountIs(2), maxOutputTokens: 100, temperature: 0, maxRetries: 0 });
    expect(twoSteps.steps).toHaveLength(2);
    expect(twoSteps.steps[0]!.toolResults[0]).toMatchObject({ toolName: 'weather', output: { celsius: 21 } });
    const exchanges = seen();
    expect(exchanges.map((e) => `${e.path} ${e.status}`)).toEqual(['/v1/responses 200', '/v1/responses 200', '/v1/responses 200']);
    const second = await gw.row(exchanges[2]!.requestId);
    const messages = second.input.messages as { role: string; content: string; tool_calls?: unknown[] }[];
    expect(messages.at(-1)).toMatchObject({ role: 'tool', content: JSON.stringify({ city: (twoSteps.steps[0]!.toolResults[0]!.input as { city: string }).city, celsius: 21 }) });
    expect(messages.at(-2)).toMatchObject({ role: 'assistant', tool_calls: [{ type: 'function', function: { name: 'weather' } }] });
  });
});

describe.each([
  ['@ai-sdk/openai-compatible', () => compat.embeddingModel('text-embedding-3-small')],
  ['@ai-sdk/openai', () => openai.embedding('text-embedding-3-small')],
])('%s embeddings', (_name, model) => {
  it('embed and embedMany return the gateway’s own vectors, with usage equal to the row', async () => {
    const values = ['The quick brown fox', 'jumps over the lazy dog', 'Postgres keeps everything'];
    const seen = rec.mark();
    const one = await embed({ model: model(), value: values[0]!, maxRetries: 0 });
    const many = await embedMany({ model: model(), values, maxRetries: 0 });
    const [a, b] = seen();
    expect(a!.body).toMatchObject({ model: 'text-embedding-3-small', input: [values[0]], encoding_format: 'float' });
    expect(b!.body).toMatchObject({ input: values });
    const own = await gw.vectors(values);
    expectSameVectors([one.embedding], [own[0]!]);
    expectSameVectors(many.embeddings, own);
    const row = await gw.row(b!.requestId);
    expect(row.model).toBe('minilm');
    expect(many.usage.tokens).toBe(row.usage!.prompt_tokens);
    expect(one.usage.tokens).toBe((await gw.row(a!.requestId)).usage!.prompt_tokens);
    expect(one.usage.tokens).toBeGreaterThan(0);
  });
});

describe('errors and retries', () => {
  it('an unknown model is an APICallError with the status and the gateway’s error body, not retried', async () => {
    const seen = rec.mark();
    const err = await generateText({ model: compat.chatModel('gpt-5'), prompt }).catch((e: unknown) => e);
    expect(APICallError.isInstance(err)).toBe(true);
    expect(err).toMatchObject({ statusCode: 404, isRetryable: false });
    expect(JSON.parse((err as APICallError).responseBody!).error).toMatchObject({ code: 'model_not_found', param: 'model' });
    expect(seen()).toHaveLength(1);
    const unauth = createOpenAICompatible({ name: 'x', baseURL: gw.baseURL, apiKey: 'sy-wrong' });
    await expect(generateText({ model: unauth.chatModel('tiny'), prompt, maxRetries: 0 })).rejects.toMatchObject({ statusCode: 401 });
  });

  it('tool calling and structured output: a forced call with valid input, an object that matches the schema', async () => {
    const seen = rec.mark();
    const weather = tool({ description: 'The weather in a city', inputSchema: jsonSchema<{ city: string }>({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false }) });
    const called = await generateText({ model: compat.chatModel('gpt-4o-mini'), prompt, tools: { weather }, toolChoice: 'required', maxOutputTokens: 60, maxRetries: 0 });
    expect(called.finishReason).toBe('tool-calls');
    expect(called.toolCalls).toHaveLength(1);
    expect(called.toolCalls[0]).toMatchObject({ toolName: 'weather', input: { city: expect.any(String) } });
    // With structured outputs declared, the provider sends response_format json_schema.
    const structuredProvider = createOpenAICompatible({ name: 'switchyard', baseURL: gw.baseURL, apiKey: gw.key, fetch: rec.fetch, supportsStructuredOutputs: true });
    const schema = jsonSchema<{ colours: string[] }>({ type: 'object', properties: { colours: { type: 'array', items: { type: 'string' }, maxItems: 3 } }, required: ['colours'], additionalProperties: false });
    const structured = await generateText({ model: structuredProvider.chatModel('gpt-4o-mini'), prompt, output: Output.object({ schema }), maxOutputTokens: 60, maxRetries: 0 });
    expect(Array.isArray(structured.output.colours)).toBe(true);
    const [a, b] = seen();
    expect(a!.body!.tools).toHaveLength(1);
    expect(a!.body!.tool_choice).toBe('required');
    expect(b!.body!.response_format).toMatchObject({ type: 'json_schema' });
  });

  it('retries a 429 after exactly its Retry-After (its own backoff would be 2 s), then throws RetryError', async () => {
    const release = await gw.fillHeldQueue();
    try {
      const seen = rec.mark();
      const err = await generateText({ model: compat.chatModel('held'), prompt, maxOutputTokens: 2, maxRetries: 2 }).catch((e: unknown) => e);
      expect(RetryError.isInstance(err)).toBe(true);
      const retry = err as RetryError;
      expect(retry.reason).toBe('maxRetriesExceeded');
      expect(retry.errors).toHaveLength(3);
      expect(retry.lastError).toMatchObject({ statusCode: 429, isRetryable: true });
      const a = attempts(seen(), 'held');
      expect(a.statuses).toEqual([429, 429, 429]);
      expect(a.retryAfter).toEqual(['1', '1', '1']);
      for (const p of a.pausesMs) {
        expect(p).toBeGreaterThanOrEqual(990);
        expect(p).toBeLessThan(1900);
      }
    } finally {
      await release();
    }
  });
});
