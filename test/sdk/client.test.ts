import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AutoTokenizer, env } from '@huggingface/transformers';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BadRequestError, NotFoundError, OpenSourceAI, type ChatCompletion, type ChatCompletionChunk } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The SDK with only Postgres and a worker running (no `serve`), except where it is compared
 * with the HTTP API. The examples are PostgresML's, from its OpenSourceAI documentation.
 */
let db: TestDatabase;
let worker: Proc;
let client: OpenSourceAI;
const pirate = [
  { role: 'system' as const, content: 'You are a friendly chatbot who always responds in the style of a pirate' },
  { role: 'user' as const, content: 'How many helicopters can a human eat in one sitting?' },
];

async function promptTokens(): Promise<number> {
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
  const tok = await AutoTokenizer.from_pretrained('tiny-chat');
  return tok.encode(tok.apply_chat_template(pirate, { tokenize: false, add_generation_prompt: true }) as string, { add_special_tokens: false }).length;
}

function expectCompletion(c: ChatCompletion, n = 1) {
  expect(c).toMatchObject({ object: 'chat.completion', model: 'tiny', system_fingerprint: 'switchyard' });
  expect(c.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
  expect(c.choices).toHaveLength(n);
  for (const ch of c.choices) {
    expect(ch.message.role).toBe('assistant');
    expect(typeof ch.message.content).toBe('string');
    expect(ch.finish_reason).toBe('length');
  }
}

function expectChunks(chunks: ChatCompletionChunk[], maxTokens: number) {
  expect(chunks.length).toBeGreaterThan(2);
  for (const ch of chunks) expect(ch).toMatchObject({ object: 'chat.completion.chunk', id: chunks[0]!.id, model: 'tiny' });
  expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
  expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe('length');
  expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('').length).toBeGreaterThan(0);
  void maxTokens;
}

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], e)).code).toBe(0);
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], e)).code).toBe(0);
  worker = await startWorker(db.url);
  client = new OpenSourceAI(db.url);
});

afterAll(async () => {
  await client?.close();
  await worker?.stop();
  await db?.drop();
});

describe("PostgresML's four methods", () => {
  it('chat_completions_create: synchronous, returns the completion with real usage', async () => {
    const r = client.chat_completions_create('tiny', pirate, { max_tokens: 16 });
    expectCompletion(r);
    expect(r.usage).toEqual({ prompt_tokens: await promptTokens(), completion_tokens: 16, total_tokens: (await promptTokens()) + 16 });
  });

  it('chat_completions_create_async: a promise of the same object; positional options as in PostgresML', async () => {
    const r = await client.chat_completions_create_async('tiny', pirate, 8, 0.5, 2);
    expectCompletion(r, 2);
    expect(r.usage.completion_tokens).toBe(16);
    expect(r.usage.prompt_tokens).toBe(await promptTokens());
  });

  it('chat_completions_create_stream: a synchronous iterator of chunks', () => {
    const it = client.chat_completions_create_stream('tiny', pirate, { max_tokens: 12 });
    const chunks: ChatCompletionChunk[] = [];
    for (let r = it.next(); !r.done; r = it.next()) chunks.push(r.value);
    expectChunks(chunks, 12);
  });

  it('chat_completions_create_stream_async: an async iterator of chunks, with usage when asked', async () => {
    const chunks: ChatCompletionChunk[] = [];
    for await (const c of await client.chat_completions_create_stream_async('tiny', pirate, { max_tokens: 12, stream_options: { include_usage: true } })) chunks.push(c);
    expect(chunks.at(-1)!.usage).toEqual({ prompt_tokens: await promptTokens(), completion_tokens: 12, total_tokens: (await promptTokens()) + 12 });
    expectChunks(chunks.slice(0, -1), 12);
  });

  it('the temperature defaults to 0.8 as PostgresML documents (same seed: same text as 0.8, not as 2)', async () => {
    const ask = (options: object) => client.chat_completions_create_async('tiny', pirate, { max_tokens: 24, seed: 9, ...options });
    const [a, b, hot] = await Promise.all([ask({}), ask({ temperature: 0.8 }), ask({ temperature: 2 })]);
    expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
    expect(a.choices[0]!.message.content).not.toBe(hot.choices[0]!.message.content);
  });

  it('a model object with a local path is registered on the fly and served', async () => {
    const path = join(modelsDir(), 'tiny-chat-eos');
    const r = await client.chat_completions_create_async({ model: path, torch_dtype: 'float32' }, pirate, { max_tokens: 100, temperature: 0 });
    expect(r.model).toBe(path);
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const listed = await client.models.list();
    expect(listed.data.map((m) => m.id)).toContain(path);
  });
});

describe('the openai-node shape, against the HTTP API', () => {
  let serve: Proc & { url: string };
  let http: OpenAI;

  beforeAll(async () => {
    serve = await startServe(db.url);
    const key = (await cli(['keys', 'create', '--name', 'sdk'], { DATABASE_URL: db.url })).stdout.trim();
    http = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
  });
  afterAll(() => serve?.stop());

  const strip = <T extends { id?: string; created?: number }>(o: T) => ({ ...o, id: undefined, created: undefined });

  it('chat.completions.create matches the HTTP response field by field', async () => {
    const req = { model: 'tiny', messages: pirate, max_tokens: 10, temperature: 0, n: 2 };
    const viaSdk = await client.chat.completions.create(req);
    const viaHttp = await http.chat.completions.create(req);
    expect(strip(viaSdk)).toEqual(strip(viaHttp as never));
  });

  it('streams the same chunks', async () => {
    const req = { model: 'tiny', messages: pirate, max_tokens: 8, temperature: 0, stream: true as const, stream_options: { include_usage: true } };
    const a: ChatCompletionChunk[] = [];
    for await (const c of await client.chat.completions.create(req)) a.push(c);
    const b: unknown[] = [];
    for await (const c of await http.chat.completions.create(req)) b.push(c);
    const text = (xs: { choices: { delta: { content?: string | null } }[] }[]) => xs.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(text(a)).toBe(text(b as never));
    expect(a.at(-1)!.usage).toEqual((b.at(-1) as { usage: unknown }).usage);
  });

  it('embeddings.create matches the HTTP response', async () => {
    const req = { model: 'minilm', input: ['hello world', 'goodbye'], encoding_format: 'float' as const, dimensions: 16 };
    expect(await client.embeddings.create(req)).toEqual(await http.embeddings.create(req));
  });

  it('raises the matching error classes with the HTTP API message', async () => {
    const unknown = { model: 'nope', messages: pirate };
    const sdkErr = await client.chat.completions.create(unknown).catch((e) => e);
    const httpErr = await http.chat.completions.create(unknown).catch((e) => e);
    expect(sdkErr).toBeInstanceOf(NotFoundError);
    expect(httpErr).toBeInstanceOf(OpenAI.NotFoundError);
    expect(sdkErr.message).toBe(httpErr.error.message);
    expect(sdkErr).toMatchObject({ status: 404, code: 'model_not_found', param: 'model' });

    const bad = { model: 'tiny', messages: pirate, max_tokens: -1 };
    const sdkBad = await client.chat.completions.create(bad).catch((e) => e);
    const httpBad = await http.chat.completions.create(bad).catch((e) => e);
    expect(sdkBad).toBeInstanceOf(BadRequestError);
    expect(sdkBad.message).toBe(httpBad.error.message);
    expect(sdkBad.param).toBe('max_tokens');
    // The synchronous method raises the same class.
    expect(() => client.chat_completions_create('nope', pirate)).toThrow(NotFoundError);
  });
});

it('a process that makes one call and closes the client exits by itself within a second', async () => {
  const script = join(tmpdir(), `sdk-exit-${process.pid}.mjs`);
  writeFileSync(
    script,
    `import { OpenSourceAI } from ${JSON.stringify(new URL('../../dist/sdk/index.js', import.meta.url).pathname)};
     const client = new OpenSourceAI(${JSON.stringify(db.url)});
     const r = await client.chat_completions_create_async('tiny', [{ role: 'user', content: 'hi' }], { max_tokens: 3 });
     const s = client.chat_completions_create('tiny', [{ role: 'user', content: 'hi' }], { max_tokens: 3 });
     await client.close();
     process.stdout.write('closed ' + r.usage.completion_tokens + ' ' + s.usage.completion_tokens + ' ' + Date.now() + '\\n');`,
  );
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exitedAt = await new Promise<number>((resolve) => child.on('exit', () => resolve(Date.now())));
  const closed = /closed 3 3 (\d+)/.exec(out);
  expect(closed, out).not.toBeNull();
  expect(exitedAt - Number(closed![1])).toBeLessThan(1000);
});
