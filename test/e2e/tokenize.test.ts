import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, start, startWorker, type Proc } from '../helpers/stack.js';

/**
 * vLLM's /tokenize and /detokenize against a real serve (which loads only the tokenizer, from
 * the models folder a worker uses) and a real worker, whose usage the counts must equal.
 */
let db: TestDatabase;
let serve: Proc & { match: RegExpMatchArray };
let worker: Proc;
let url: string;
let key: string;
let scoped: string;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  for (const args of [
    ['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'],
    ['models', 'add', 'other', '--task', 'chat', '--source', 'tiny-chat-eos'],
  ]) {
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(0);
  }
  key = (await cli(['keys', 'create', '--name', 'all'], env)).stdout.trim();
  scoped = (await cli(['keys', 'create', '--name', 'tiny-only', '--models', 'tiny'], env)).stdout.trim();
  const serving = start(['serve'], { DATABASE_URL: db.url, PORT: '0', HOST: '127.0.0.1', SWITCHYARD_MODELS_DIR: modelsDir() }, /listening on (http:\/\/\S+)/);
  [serve, worker] = await Promise.all([serving, startWorker(db.url)]);
  url = serve.match[1]!;
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

async function post(path: string, body: unknown, k: string | null = key) {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(k ? { authorization: `Bearer ${k}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Count the tokens of this sentence, please: naïve café 東京 🙂' },
];

describe('/tokenize and /detokenize', () => {
  it('a text round-trips through tokenize and detokenize', async () => {
    const text = 'Hello, world! naïve café 東京 🙂\n  indented';
    const t = await post('/tokenize', { model: 'tiny', prompt: text });
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    expect(t.body.count).toBe(t.body.tokens.length);
    expect(t.body.count).toBeGreaterThan(5);
    expect(t.body.max_model_len).toBeGreaterThan(100);
    const d = await post('/detokenize', { model: 'tiny', tokens: t.body.tokens });
    expect(d.status).toBe(200);
    expect(d.body).toEqual({ prompt: text });
  });

  it('messages count as many tokens as the chat request reports in usage.prompt_tokens', async () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
    for (const extra of [{}, { tools }]) {
      const t = await post('/tokenize', { model: 'tiny', messages, ...extra });
      expect(t.status, JSON.stringify(t.body)).toBe(200);
      const chat = await post('/v1/chat/completions', { model: 'tiny', messages, ...extra, max_tokens: 1 });
      expect(chat.status, JSON.stringify(chat.body)).toBe(200);
      expect(t.body.count).toBe(chat.body.usage.prompt_tokens);
    }
    // The generation prompt is part of what a chat request feeds the model.
    const bare = await post('/tokenize', { model: 'tiny', messages, add_generation_prompt: false });
    const withPrompt = await post('/tokenize', { model: 'tiny', messages });
    expect(bare.body.count).toBeLessThan(withPrompt.body.count);
  });

  it('add_special_tokens follows the tokenizer: the rendered template text re-tokenizes to the same ids', async () => {
    const t = await post('/tokenize', { model: 'tiny', messages });
    const text = (await post('/detokenize', { model: 'tiny', tokens: t.body.tokens })).body.prompt as string;
    expect(text).toContain('<|im_start|>user');
    const again = await post('/tokenize', { model: 'tiny', prompt: text, add_special_tokens: false });
    expect(again.body.tokens).toEqual(t.body.tokens);
  });

  it('needs a key, and a scoped key reaches only its models', async () => {
    expect((await post('/tokenize', { model: 'tiny', prompt: 'x' }, null)).status).toBe(401);
    expect((await post('/detokenize', { model: 'tiny', tokens: [1] }, 'sk-wrong')).status).toBe(401);
    expect((await post('/tokenize', { model: 'tiny', prompt: 'x' }, scoped)).status).toBe(200);
    for (const [path, body] of [['/tokenize', { model: 'other', prompt: 'x' }], ['/detokenize', { model: 'other', tokens: [1] }]] as const) {
      const r = await post(path, body, scoped);
      expect(r.status).toBe(403);
      expect(r.body.error.code).toBe('model_not_allowed');
    }
  });

  it('bad input is a 400 naming the parameter, never a 500', async () => {
    const cases: [string, unknown, string | null][] = [
      ['/tokenize', { model: 'tiny' }, 'messages'],
      ['/tokenize', { model: 'tiny', prompt: 'x', messages }, 'prompt'],
      ['/tokenize', { model: 'tiny', prompt: 5 }, 'prompt'],
      ['/tokenize', { model: 'tiny', messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
      ['/tokenize', { model: 'tiny', prompt: 'x', chat_template: '{{ x }}' }, 'chat_template'],
      ['/tokenize', { model: 'tiny', prompt: 'x', add_generation_prompt: true }, 'add_generation_prompt'],
      ['/detokenize', { model: 'tiny', tokens: [-1] }, 'tokens[0]'],
      ['/detokenize', { model: 'tiny', tokens: [1.5] }, 'tokens[0]'],
      ['/detokenize', { model: 'tiny', tokens: [10_000_000] }, 'tokens[0]'],
      ['/detokenize', { model: 'tiny', tokens: 'abc' }, 'tokens'],
    ];
    for (const [path, body, param] of cases) {
      const r = await post(path, body);
      expect(r.status, `${path} ${JSON.stringify(body)} -> ${JSON.stringify(r.body)}`).toBe(400);
      expect(r.body.error.param, JSON.stringify(r.body)).toBe(param);
    }
    const missing = await post('/tokenize', { model: 'nope', prompt: 'x' });
    expect(missing.status).toBe(404);
    // A text far over the context is refused before the tokenizer runs on serve's loop.
    const huge = await post('/tokenize', { model: 'tiny', prompt: 'word '.repeat(1_200_000) });
    expect(huge.status).toBe(400);
    expect(huge.body.error.code).toBe('context_length_exceeded');
  });
});
