import { Document, type DocumentInterface } from '@langchain/core/documents';
import type { EmbeddingsInterface } from '@langchain/core/embeddings';
import { AIMessageChunk, HumanMessage, SystemMessage } from '@langchain/core/messages';
import { StringOutputParser } from '@langchain/core/output_parsers';
import { ChatPromptTemplate } from '@langchain/core/prompts';
import { RunnableLambda, RunnablePassthrough, RunnableSequence } from '@langchain/core/runnables';
import { VectorStore } from '@langchain/core/vectorstores';
import { ChatOpenAI, OpenAI as OpenAILLM, OpenAIEmbeddings } from '@langchain/openai';
import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attempts, expectSameVectors, Recorder, startGateway, type Gateway } from './harness.js';

/**
 * LangChain JS (`@langchain/openai`) against a running gateway: ChatOpenAI and OpenAIEmbeddings
 * with `configuration.baseURL`, and a small retrieval chain over a pgvector table of Switchyard
 * embeddings.
 */
let gw: Gateway;
const rec = new Recorder();
const messages = [new SystemMessage('You are a helpful assistant.'), new HumanMessage('Name three colours of the rainbow.')];

const chat = (fields: Partial<ConstructorParameters<typeof ChatOpenAI>[0] & object> = {}) =>
  new ChatOpenAI({
    model: 'gpt-4o-mini',
    apiKey: gw.key,
    temperature: 0,
    maxTokens: 12,
    maxRetries: 0,
    ...fields,
    configuration: { baseURL: gw.baseURL, fetch: rec.fetch },
  });
const embeddings = () =>
  new OpenAIEmbeddings({ model: 'text-embedding-3-small', apiKey: gw.key, maxRetries: 0, configuration: { baseURL: gw.baseURL, fetch: rec.fetch } });

beforeAll(async () => {
  gw = await startGateway();
});

afterAll(async () => {
  await gw?.stop();
});

describe('ChatOpenAI', () => {
  it('invoke: text, finish reason, and usage_metadata equal to the logged row', async () => {
    const seen = rec.mark();
    const msg = await chat().invoke(messages);
    expect(typeof msg.content).toBe('string');
    expect((msg.content as string).length).toBeGreaterThan(0);
    expect(msg.response_metadata).toMatchObject({ finish_reason: 'length', model_name: 'gpt-4o-mini' });
    const [ex] = seen();
    expect(ex!.body).toMatchObject({ model: 'gpt-4o-mini', temperature: 0, max_tokens: 12, stream: false });
    const row = await gw.row(ex!.requestId);
    expect(row).toMatchObject({ model: 'tiny', status: 'completed' });
    expect(row.output!.choices[0].text).toBe(msg.content);
    expect(row.usage!.completion_tokens).toBe(12);
    expect(msg.usage_metadata).toMatchObject({
      input_tokens: row.usage!.prompt_tokens,
      output_tokens: row.usage!.completion_tokens,
      total_tokens: row.usage!.total_tokens,
    });
  });

  it('stream: chunks join to the invoke text (temperature 0), with usage from the stream', async () => {
    const model = chat();
    const whole = await model.invoke(messages);
    const seen = rec.mark();
    let joined: AIMessageChunk | undefined;
    let chunks = 0;
    for await (const chunk of await model.stream(messages)) {
      chunks++;
      joined = joined ? joined.concat(chunk) : chunk;
    }
    expect(chunks).toBeGreaterThan(2);
    expect(joined!.content).toBe(whole.content);
    const [ex] = seen();
    // streamUsage (on by default) asks for the usage chunk.
    expect(ex!.body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
    const row = await gw.row(ex!.requestId);
    expect(joined!.usage_metadata).toMatchObject({
      input_tokens: row.usage!.prompt_tokens,
      output_tokens: row.usage!.completion_tokens,
      total_tokens: row.usage!.total_tokens,
    });
  });

  it('errors: openai-node’s classes, tagged with LangChain’s error codes', async () => {
    const seen = rec.mark();
    const notFound = await chat({ model: 'gpt-5' }).invoke(messages).catch((e: unknown) => e);
    // A model name LangChain takes for a reasoning model gets max_completion_tokens (accepted too).
    expect(seen()[0]!.body).toMatchObject({ model: 'gpt-5', max_completion_tokens: 12 });
    expect(notFound).toBeInstanceOf(OpenAI.NotFoundError);
    expect(notFound).toMatchObject({ status: 404, code: 'model_not_found', lc_error_code: 'MODEL_NOT_FOUND' });
    const unauth = await chat({ apiKey: 'sy-wrong' }).invoke(messages).catch((e: unknown) => e);
    expect(unauth).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(unauth).toMatchObject({ status: 401, lc_error_code: 'MODEL_AUTHENTICATION' });
    const tooLong = await chat({ maxTokens: 100_000 }).invoke(messages).catch((e: unknown) => e);
    expect(tooLong).toMatchObject({ name: 'ContextOverflowError' });
  });

  it('tool calling and structured output: bindTools with a forced call, withStructuredOutput', async () => {
    const weather = { type: 'function' as const, function: { name: 'weather', description: 'The weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false } } };
    const seen = rec.mark();
    const reply = await chat({ maxTokens: 60 }).bindTools([weather], { tool_choice: 'required' }).invoke(messages);
    expect(reply.tool_calls).toHaveLength(1);
    expect(reply.tool_calls![0]).toMatchObject({ name: 'weather', args: { city: expect.any(String) }, type: 'tool_call' });
    const schema = { title: 'colours', type: 'object', properties: { colours: { type: 'array', items: { type: 'string' }, maxItems: 3 } }, required: ['colours'], additionalProperties: false };
    const structured = (await chat({ maxTokens: 60 }).withStructuredOutput(schema).invoke(messages)) as { colours: unknown };
    expect(Array.isArray(structured.colours)).toBe(true);
    const [a, b] = seen();
    expect(a!.body!.tools).toHaveLength(1);
    expect(b!.body!.response_format).toMatchObject({ type: 'json_schema' });
  });

  it('retries a 429 (maxRetries 2), pausing at least Retry-After, then throws the RateLimitError', async () => {
    const release = await gw.fillHeldQueue();
    try {
      const seen = rec.mark();
      const err = await chat({ model: 'held', maxRetries: 2, maxTokens: 2 }).invoke(messages).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.RateLimitError);
      expect(err).toMatchObject({ status: 429, code: 'queue_full', lc_error_code: 'MODEL_RATE_LIMIT' });
      const a = attempts(seen(), 'held');
      expect(a.statuses).toEqual([429, 429, 429]);
      expect(a.retryAfter).toEqual(['1', '1', '1']);
      for (const p of a.pausesMs) expect(p).toBeGreaterThanOrEqual(990);
    } finally {
      await release();
    }
  });
});

describe('OpenAI (legacy completions LLM)', () => {
  it('generate and stream agree (temperature 0); tokenUsage equals the logged row', async () => {
    // The class refuses chat-model names ('gpt-4o-mini' throws in its constructor, client-side):
    // name the model as registered (or give it an alias such as gpt-3.5-turbo-instruct).
    const llm = new OpenAILLM({ model: 'tiny', apiKey: gw.key, temperature: 0, maxTokens: 12, maxRetries: 0, configuration: { baseURL: gw.baseURL, fetch: rec.fetch } });
    const seen = rec.mark();
    const r = await llm.generate(['Once upon a time']);
    const text = r.generations[0]![0]!.text;
    expect(text.length).toBeGreaterThan(0);
    const [ex] = seen();
    expect(ex!.path).toBe('/v1/completions');
    const row = await gw.row(ex!.requestId);
    expect(row).toMatchObject({ model: 'tiny', status: 'completed' });
    expect(r.llmOutput!.tokenUsage).toEqual({
      promptTokens: row.usage!.prompt_tokens,
      completionTokens: row.usage!.completion_tokens,
      totalTokens: row.usage!.total_tokens,
    });
    expect(ex!.body).toMatchObject({ prompt: ['Once upon a time'], n: 1, stream: false });
    const streaming = rec.mark();
    let streamed = '';
    for await (const part of await llm.stream('Once upon a time')) streamed += part;
    expect(streamed).toBe(text);
    // Its stream asks for no usage.
    expect(streaming()[0]!.body).toMatchObject({ prompt: 'Once upon a time', stream: true });
    expect(streaming()[0]!.body!.stream_options).toBeUndefined();
  });
});

describe('OpenAIEmbeddings', () => {
  it('embedDocuments and embedQuery return the gateway’s own vectors', async () => {
    const texts = ['The quick brown fox', 'jumps over the lazy dog', 'Postgres keeps everything'];
    const seen = rec.mark();
    const docs = await embeddings().embedDocuments(texts);
    const query = await embeddings().embedQuery(texts[1]!);
    const [a, b] = seen();
    // LangChain leaves encoding_format to the SDK, which asks for base64 and decodes it.
    expect(a!.body).toMatchObject({ model: 'text-embedding-3-small', input: texts, encoding_format: 'base64' });
    expect(b!.body).toMatchObject({ input: texts[1] });
    const own = await gw.vectors(texts);
    expectSameVectors(docs, own);
    expectSameVectors([query], [own[1]!]);
    const row = await gw.row(a!.requestId);
    expect(row).toMatchObject({ model: 'minilm', status: 'completed' });
    expect(row.usage!.prompt_tokens).toBeGreaterThan(0);
  });
});

/** The smallest pgvector-backed LangChain VectorStore: one table, cosine distance in SQL. */
class PgVectorStore extends VectorStore {
  constructor(
    embeddings: EmbeddingsInterface,
    private readonly pool: pg.Pool,
    private readonly table: string,
  ) {
    super(embeddings, {});
  }

  _vectorstoreType(): string {
    return 'pgvector-sql';
  }

  async addVectors(vectors: number[][], documents: DocumentInterface[]): Promise<void> {
    for (const [i, doc] of documents.entries()) {
      await this.pool.query(`insert into ${this.table} (content, metadata, embedding) values ($1, $2, $3::vector)`, [
        doc.pageContent,
        doc.metadata,
        JSON.stringify(vectors[i]),
      ]);
    }
  }

  async addDocuments(documents: DocumentInterface[]): Promise<void> {
    await this.addVectors(await this.embeddings.embedDocuments(documents.map((d) => d.pageContent)), documents);
  }

  async similaritySearchVectorWithScore(query: number[], k: number): Promise<[DocumentInterface, number][]> {
    const { rows } = await this.pool.query<{ content: string; metadata: Record<string, unknown>; distance: number }>(
      `select content, metadata, embedding <=> $1::vector as distance from ${this.table} order by embedding <=> $1::vector limit $2`,
      [JSON.stringify(query), k],
    );
    return rows.map((r) => [new Document({ pageContent: r.content, metadata: r.metadata }), 1 - r.distance]);
  }
}

describe('a retrieval chain over pgvector', () => {
  let pool: pg.Pool;
  beforeAll(() => {
    pool = new pg.Pool({ connectionString: gw.db.url, max: 2 });
  });
  afterAll(async () => {
    await pool?.end();
  });

  it('embeds documents through Switchyard into pgvector, retrieves the matching one first, and answers from it', async () => {
    await pool.query('create table docs (id serial primary key, content text not null, metadata jsonb, embedding vector(32) not null)');
    const store = new PgVectorStore(embeddings(), pool, 'docs');
    const texts = [
      'Switchyard keeps request logs in Postgres.',
      'The worker loads models with transformers.js.',
      'Aliases let gpt-4o-mini name an open model.',
      'Embeddings are cached per model and input hash.',
      'A full queue answers 429 with Retry-After.',
    ];
    await store.addDocuments(texts.map((t, i) => new Document({ pageContent: t, metadata: { i } })));
    const [{ n }] = (await pool.query<{ n: number }>('select count(*)::int as n from docs')).rows as [{ n: number }];
    expect(n).toBe(5);

    const question = texts[2]!;
    const retriever = store.asRetriever({ k: 2 });
    const found = await retriever.invoke(question);
    expect(found[0]!.pageContent).toBe(question);
    expect(found[0]!.metadata).toEqual({ i: 2 });

    const prompt = ChatPromptTemplate.fromMessages([
      ['system', 'Answer the question using only this context:\n{context}'],
      ['human', '{question}'],
    ]);
    const chain = RunnableSequence.from([
      {
        context: retriever.pipe(RunnableLambda.from((docs: DocumentInterface[]) => docs.map((d) => d.pageContent).join('\n'))),
        question: new RunnablePassthrough(),
      },
      prompt,
      chat({ maxTokens: 16 }),
      new StringOutputParser(),
    ]);
    const seen = rec.mark();
    const answer = await chain.invoke(question);
    const exchanges = seen();
    expect(exchanges.map((e) => e.path)).toEqual(['/v1/embeddings', '/v1/chat/completions']);
    const row = await gw.row(exchanges[1]!.requestId);
    // The retrieved document reached the model first in the context, and the answer is what it generated.
    const system = row.input.messages[0].content as string;
    expect(system.split('\n')[1]).toBe(question);
    expect(row.input.messages[1]).toEqual({ role: 'user', content: question });
    expect(answer).toBe(row.output!.choices[0].text);
    expect(answer.length).toBeGreaterThan(0);
  });
});
