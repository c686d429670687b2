import type { ChatMessage } from '@llamaindex/core/llms';
import { OpenAI, OpenAIEmbedding } from '@llamaindex/openai';
import type { ChatCompletion, ChatCompletionChunk } from 'openai/resources/chat/completions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attempts, expectSameVectors, Recorder, startGateway, type Gateway } from './harness.js';

/**
 * LlamaIndex TS (`@llamaindex/openai`: the `OpenAI` LLM and `OpenAIEmbedding`) against a running
 * gateway. The package drives its own copy of openai-node (v5), so errors are that copy's classes:
 * they are recognised here by name and status.
 */
let gw: Gateway;
const rec = new Recorder();
const messages: ChatMessage[] = [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'Name three colours of the rainbow.' },
];

const llm = (init: ConstructorParameters<typeof OpenAI>[0] = {}) =>
  new OpenAI({
    model: 'gpt-4o-mini',
    apiKey: gw.key,
    baseURL: gw.baseURL,
    temperature: 0,
    maxTokens: 12,
    maxRetries: 0,
    ...init,
    additionalSessionOptions: { fetch: rec.fetch },
  });

beforeAll(async () => {
  gw = await startGateway();
});

afterAll(async () => {
  await gw?.stop();
});

describe('OpenAI LLM', () => {
  it('chat: text, and the raw completion’s usage equal to the logged row', async () => {
    const seen = rec.mark();
    const r = await llm().chat({ messages });
    expect(r.message.role).toBe('assistant');
    expect((r.message.content as string).length).toBeGreaterThan(0);
    const raw = r.raw as ChatCompletion;
    expect(raw.choices[0]!.finish_reason).toBe('length');
    const [ex] = seen();
    expect(ex!.body).toMatchObject({ model: 'gpt-4o-mini', temperature: 0, max_tokens: 12, top_p: 1, stream: false });
    const row = await gw.row(ex!.requestId);
    expect(row).toMatchObject({ model: 'tiny', status: 'completed' });
    expect(row.output!.choices[0].text).toBe(r.message.content);
    expect(raw.usage).toEqual(row.usage);
    expect(raw.usage!.completion_tokens).toBe(12);
  });

  it('streaming chat joins to the non-streamed text; usage only when asked for through additionalChatOptions', async () => {
    const whole = await llm({ maxTokens: 16 }).chat({ messages });

    const seen = rec.mark();
    let text = '';
    for await (const chunk of await llm({ maxTokens: 16 }).chat({ messages, stream: true })) text += chunk.delta;
    expect(text).toBe(whole.message.content);
    // By default LlamaIndex sends no stream_options, so the stream carries no usage.
    expect(seen()[0]!.body!.stream_options).toBeUndefined();

    const withUsage = rec.mark();
    let usage: ChatCompletionChunk['usage'] | undefined;
    text = '';
    const stream = await llm({ maxTokens: 16, additionalChatOptions: { stream_options: { include_usage: true } } }).chat({ messages, stream: true });
    for await (const chunk of stream) {
      text += chunk.delta;
      usage = (chunk.raw as ChatCompletionChunk | null)?.usage ?? usage;
    }
    expect(text).toBe(whole.message.content);
    const [ex] = withUsage();
    expect(ex!.body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
    expect(usage).toEqual((await gw.row(ex!.requestId)).usage);
  });

  it('complete, streamed and not, on the same prompt (temperature 0) give the same text', async () => {
    const seen = rec.mark();
    const plain = await llm().complete({ prompt: 'Say something.' });
    let streamed = '';
    for await (const part of await llm().complete({ prompt: 'Say something.', stream: true })) streamed += part.text;
    expect(plain.text.length).toBeGreaterThan(0);
    expect(streamed).toBe(plain.text);
    const [a, b] = seen();
    // complete() is chat with one user message.
    expect(a!.body!.messages).toEqual([{ role: 'user', content: 'Say something.' }]);
    expect((await gw.row(a!.requestId)).usage).toEqual((plain.raw as ChatCompletion).usage);
    expect((await gw.row(b!.requestId)).status).toBe('completed');
  });

  it('errors: openai-node (v5) classes with status and code', async () => {
    const notFound = await llm({ model: 'gpt-5' }).chat({ messages }).catch((e: unknown) => e);
    expect((notFound as Error).constructor.name).toBe('NotFoundError');
    expect(notFound).toMatchObject({ status: 404, code: 'model_not_found', param: 'model' });
    const unauth = await llm({ apiKey: 'sy-wrong' }).chat({ messages }).catch((e: unknown) => e);
    expect((unauth as Error).constructor.name).toBe('AuthenticationError');
    expect(unauth).toMatchObject({ status: 401 });
  });

  it('tool calling: tools are accepted (the random model answers in text with tool_choice auto)', async () => {
    const weather = {
      metadata: { name: 'weather', description: 'The weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
      call: () => 'sunny',
    };
    const seen = rec.mark();
    const r = await llm().chat({ messages, tools: [weather] });
    expect(typeof r.message.content).toBe('string');
    expect(seen()[0]!.body!.tools).toHaveLength(1);
  });

  it('retries a 429 after its Retry-After (maxRetries 2; the default is 10), then throws RateLimitError', async () => {
    expect(new OpenAI({ model: 'gpt-4o-mini' }).maxRetries).toBe(10);
    const release = await gw.fillHeldQueue();
    try {
      const seen = rec.mark();
      const err = await llm({ model: 'held', maxRetries: 2, maxTokens: 2 }).chat({ messages }).catch((e: unknown) => e);
      expect((err as Error).constructor.name).toBe('RateLimitError');
      expect(err).toMatchObject({ status: 429, code: 'queue_full' });
      const a = attempts(seen(), 'held');
      expect(a.statuses).toEqual([429, 429, 429]);
      expect(a.retryAfter).toEqual(['1', '1', '1']);
      for (const p of a.pausesMs) expect(p).toBeGreaterThanOrEqual(990);
    } finally {
      await release();
    }
  });
});

describe('OpenAIEmbedding', () => {
  it('getTextEmbeddings and getQueryEmbedding return the gateway’s own vectors', async () => {
    const texts = ['The quick brown fox', 'jumps over the lazy dog', 'Postgres keeps everything'];
    const embedding = new OpenAIEmbedding({
      model: 'text-embedding-3-small',
      apiKey: gw.key,
      baseURL: gw.baseURL,
      maxRetries: 0,
      additionalSessionOptions: { fetch: rec.fetch },
    });
    const seen = rec.mark();
    const docs = await embedding.getTextEmbeddings(texts);
    const query = await embedding.getQueryEmbedding({ type: 'text', text: texts[2]! });
    const [a, b] = seen();
    expect(a!.body).toMatchObject({ model: 'text-embedding-3-small', input: texts, encoding_format: 'base64' });
    expect(b!.body).toMatchObject({ input: [texts[2]] });
    const own = await gw.vectors(texts);
    expectSameVectors(docs, own);
    expectSameVectors([query!], [own[2]!]);
    expect((await gw.row(a!.requestId)).status).toBe('completed');
  });
});
