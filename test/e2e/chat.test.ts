import { AutoTokenizer, env } from '@huggingface/transformers';
import OpenAI from 'openai';
import type { ChatCompletion, ChatCompletionChunk } from 'openai/resources/chat/completions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The whole stack as a user runs it: `serve` and `worker` as separate processes on a fresh
 * database, driven by the official openai package.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc & { workerId: string };
let client: OpenAI;
const messages = [
  { role: 'system' as const, content: 'You are a helpful assistant.' },
  { role: 'user' as const, content: 'Name three colours of the rainbow.' },
];

async function promptTokens(model: string, msgs: typeof messages): Promise<number> {
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
  const tok = await AutoTokenizer.from_pretrained(model);
  const text = tok.apply_chat_template(msgs, { tokenize: false, add_generation_prompt: true }) as string;
  return tok.encode(text, { add_special_tokens: false }).length;
}

async function decode(model: string, ids: number[]): Promise<string> {
  const tok = await AutoTokenizer.from_pretrained(model);
  return ids.length ? tok.decode(ids, { skip_special_tokens: true }) : '';
}

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  for (const args of [
    ['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat', '--alias', 'gpt-4o-mini'],
    ['models', 'add', 'tiny-eos', '--task', 'chat', '--source', 'tiny-chat-eos'],
  ]) {
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(0);
  }
  const key = await cli(['keys', 'create', '--name', 'e2e'], env);
  expect(key.code, key.stderr).toBe(0);
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key.stdout.trim(), maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

function expectCompletionShape(c: ChatCompletion, model: string, n: number) {
  expect(c.object).toBe('chat.completion');
  expect(c.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
  expect(c.model).toBe(model);
  expect(Math.abs(c.created - Date.now() / 1000)).toBeLessThan(120);
  expect(c.choices).toHaveLength(n);
  c.choices.forEach((choice, i) => {
    expect(choice.index).toBe(i);
    expect(choice.message.role).toBe('assistant');
    expect(typeof choice.message.content).toBe('string');
    expect(['stop', 'length']).toContain(choice.finish_reason);
  });
  expect(c.usage!.total_tokens).toBe(c.usage!.prompt_tokens + c.usage!.completion_tokens);
}

describe('models', () => {
  it('lists registered models under names and aliases', async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids.sort()).toEqual(['gpt-4o-mini', 'tiny', 'tiny-eos']);
  });

  it('retrieves one model, and 404s an unknown one', async () => {
    const m = await client.models.retrieve('gpt-4o-mini');
    expect(m).toMatchObject({ id: 'gpt-4o-mini', object: 'model', owned_by: 'switchyard' });
    await expect(client.models.retrieve('nope')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe('chat completions', () => {
  it('answers, with usage equal to a re-tokenization, and logs the request in ai.requests', async () => {
    const c = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0 });
    expectCompletionShape(c, 'tiny', 1);
    expect(c.choices[0]!.finish_reason).toBe('length');
    expect(c.usage!.prompt_tokens).toBe(await promptTokens('tiny-chat', messages));
    expect(c.usage!.completion_tokens).toBe(12);

    const id = c.id.replace('chatcmpl-', '').replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
    const [row] = await query<Record<string, any>>(db.url, 'select * from ai.requests where id = $1', [id]);
    expect(row).toBeDefined();
    expect(row!.status).toBe('completed');
    expect(row!.model).toBe('tiny');
    expect(row!.input.messages).toEqual(messages);
    expect(row!.params).toMatchObject({ maxTokens: 12, temperature: 0 });
    expect(row!.usage).toEqual(c.usage);
    const out = row!.output.choices[0];
    expect(out.text).toBe(c.choices[0]!.message.content);
    expect(out.token_ids).toHaveLength(12);
    expect(await decode('tiny-chat', out.token_ids)).toBe(c.choices[0]!.message.content);
    expect(row!.worker).toBe(worker.workerId);
    const t = (k: string) => new Date(row![k]).getTime();
    expect(t('queued_at')).toBeLessThanOrEqual(t('started_at'));
    expect(t('started_at')).toBeLessThanOrEqual(t('first_token_at'));
    expect(t('first_token_at')).toBeLessThanOrEqual(t('finished_at'));
  });

  it('answers to an alias, and returns n choices', async () => {
    const c = await client.chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 8, n: 2, seed: 11 });
    expectCompletionShape(c, 'gpt-4o-mini', 2);
    expect(c.usage!.completion_tokens).toBe(16);
  });

  it('gives identical text for the same seed and parameters, and different text for another seed', async () => {
    const ask = (seed: number) => client.chat.completions.create({ model: 'tiny', messages, max_tokens: 24, temperature: 1.2, top_p: 0.95, seed });
    const [a, b, c] = await Promise.all([ask(42), ask(42), ask(43)]);
    expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
    expect(a.choices[0]!.message.content).not.toBe(c.choices[0]!.message.content);
  });

  it('samples from the top_k most likely tokens (vLLM\'s extension): top_k 1 is greedy at any temperature; bad values are 400s', async () => {
    const greedy = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 24, temperature: 0 });
    const topK = (k: number, seed: number) =>
      client.chat.completions.create({ model: 'tiny', messages, max_tokens: 24, temperature: 1.5, seed, top_k: k } as never) as Promise<typeof greedy>;
    const [one, alsoOne, wide] = await Promise.all([topK(1, 1), topK(1, 2), topK(-1, 1)]);
    expect(one.choices[0]!.message.content).toBe(greedy.choices[0]!.message.content);
    expect(alsoOne.choices[0]!.message.content).toBe(greedy.choices[0]!.message.content);
    // -1 means every token (vLLM): at temperature 1.5 the random-weight model wanders off the greedy path.
    expect(wide.choices[0]!.message.content).not.toBe(greedy.choices[0]!.message.content);
    for (const bad of [-2, 1.5, 'x']) {
      const err = await client.chat.completions.create({ model: 'tiny', messages, top_k: bad } as never).catch((e: unknown) => e);
      expect(err).toMatchObject({ status: 400, param: 'top_k' });
    }
  });

  it('stops at a stop string, applied to the text', async () => {
    const free = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 30, temperature: 0 });
    const text = free.choices[0]!.message.content!;
    // A stop string that starts inside the greedy output, spanning token boundaries.
    const stop = text.slice(5, 9);
    const c = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 30, temperature: 0, stop: [stop, 'zzzz-never'] });
    expect(c.choices[0]!.finish_reason).toBe('stop');
    expect(c.choices[0]!.message.content).toBe(text.slice(0, text.indexOf(stop)));
    expect(c.choices[0]!.message.content).not.toContain(stop);
  });

  it('ends with finish_reason "stop" when the model emits its end token', async () => {
    const c = await client.chat.completions.create({ model: 'tiny-eos', messages, max_tokens: 200, temperature: 0 });
    expect(c.choices[0]!.finish_reason).toBe('stop');
    expect(c.usage!.completion_tokens).toBeLessThan(200);
  });

  it('streams chunks with include_usage: null usage on each, then a usage-only chunk, then [DONE]', async () => {
    const stream = await client.chat.completions.create({
      model: 'tiny', messages, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    const chunks: ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({ prompt_tokens: await promptTokens('tiny-chat', messages), completion_tokens: 10, total_tokens: expect.any(Number) });
    const body = chunks.slice(0, -1);
    for (const ch of body) {
      expect(ch.object).toBe('chat.completion.chunk');
      expect(ch.id).toBe(last.id);
      expect(ch.usage).toBeNull();
      expect(ch.choices).toHaveLength(1);
    }
    expect(body[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(body.at(-1)!.choices[0]!.finish_reason).toBe('length');
    const streamed = body.map((ch) => ch.choices[0]!.delta.content ?? '').join('');
    const plain = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 10, temperature: 0 });
    expect(streamed).toBe(plain.choices[0]!.message.content);
  });

  it('streams n choices, each ending with its own finish_reason, and omits usage without include_usage', async () => {
    const stream = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 6, n: 2, seed: 5, stream: true });
    const finished = new Set<number>();
    for await (const chunk of stream) {
      expect(chunk.usage).toBeUndefined();
      for (const c of chunk.choices) if (c.finish_reason) finished.add(c.index);
    }
    expect([...finished].sort()).toEqual([0, 1]);
  });

  it('accepts a per-request chat_template', async () => {
    const template = "{% for m in messages %}<|im_start|>{{ m.role }}:{{ m.content }}<|im_end|>{% endfor %}<|im_start|>assistant:";
    const c = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 3, chat_template: template } as never);
    expect(c.usage!.prompt_tokens).not.toBe(await promptTokens('tiny-chat', messages));
    const broken = client.chat.completions.create({ model: 'tiny', messages, max_tokens: 3, chat_template: '{% for %}' } as never);
    await expect(broken).rejects.toMatchObject({ status: 400, param: 'chat_template' });
    // The template parser's message quotes half of a surrogate pair: still a prompt 400, not a
    // write the database refuses on every attempt (found by the fuzz test).
    const halfEmoji = client.chat.completions.create({ model: 'tiny', messages, max_tokens: 3, chat_template: '{%\u{1F469}\u200D\u{1F469}-ki' } as never);
    await expect(halfEmoji).rejects.toMatchObject({ status: 400, code: 'invalid_chat_template', param: 'chat_template' });
    const empty = client.chat.completions.create({ model: 'tiny', messages, max_tokens: 3, chat_template: '{% if false %}x{% endif %}' } as never);
    await expect(empty).rejects.toMatchObject({ status: 400, code: 'empty_prompt' });
  });

  it('stops a per-request chat_template that runs too long, without stalling other requests', async () => {
    const started = Date.now();
    const loop = client.chat.completions
      .create({ model: 'tiny', messages, max_tokens: 3, chat_template: '{% for i in range(1000000000) %}{% endfor %}x' } as never)
      .catch((e) => e);
    await new Promise((r) => setTimeout(r, 100));
    const other = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 3 });
    expect(other.choices[0]!.finish_reason).toBe('length');
    expect(Date.now() - started).toBeLessThan(1000);
    const err = await loop;
    expect(err).toMatchObject({ status: 400, param: 'chat_template', code: 'invalid_chat_template' });
    // range(10**9) is a list: the sandbox's time limit or its heap limit, whichever comes first.
    expect(err.message).toMatch(/longer than 1000 ms|more memory/);
  });

  it('answers a stream whose prompt does not fit with a 400, like the JSON form', async () => {
    const err = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 100_000, stream: true }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.code).toBe('context_length_exceeded');
  });

  it('rejects a prompt plus max_tokens beyond the context length', async () => {
    const err = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 100_000 }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.code).toBe('context_length_exceeded');
  });
});
