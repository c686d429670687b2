import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EDIT_SYSTEM_PROMPT } from '../../src/protocol/edits.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * OpenAI's retired endpoints that old applications still call (issue 22): /v1/edits and the
 * engines routes, through plain HTTP against serve and worker processes. They must answer in
 * their legacy shapes and meet the same key check, scopes, limits and request log as the
 * endpoints they alias.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let key: string;
/** May use the embedder only. */
let embedOnlyKey: string;

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const call = async (method: 'GET' | 'POST', path: string, body?: unknown, auth: string | null = key) => {
  const res = await fetch(`${serve.url}${path}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(auth ? { authorization: `Bearer ${auth}` } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, requestId: res.headers.get('x-request-id'), type: res.headers.get('content-type'), text, json: (() => { try { return JSON.parse(text) as Json; } catch { return null; } })() };
};

const logged = async (id: string | null) =>
  (await query<{ endpoint: string; model: string; key_id: string | null; input: Json; status: string; usage: Json }>(
    db.url, 'select endpoint, model, key_id::text, input, status, usage from ai.requests where id = $1', [id]))[0];

let keyId: string;

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat-eos', '--alias', 'text-davinci-edit-001'], e)).code).toBe(0);
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], e)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'legacy'], e)).stdout.trim();
  embedOnlyKey = (await cli(['keys', 'create', '--name', 'embed-only', '--models', 'minilm'], e)).stdout.trim();
  keyId = (await query<{ id: string }>(db.url, "select id::text from ai.api_keys where name = 'legacy'"))[0]!.id;
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

describe('/v1/edits', () => {
  it('answers in the legacy edit shape from a chat generation of the documented prompt, logged with its key', async () => {
    const r = await call('POST', '/v1/edits', { model: 'text-davinci-edit-001', instruction: 'Fix the spelling.', input: 'Helo wrld', n: 2, temperature: 0.7, top_p: 0.9 });
    expect(r.status, r.text).toBe(200);
    expect(r.json).toMatchObject({ object: 'edit', created: expect.any(Number) });
    expect(r.json!.choices.map((c: Json) => c.index)).toEqual([0, 1]);
    for (const c of r.json!.choices) {
      expect(typeof c.text).toBe('string');
      expect(c.text.length).toBeGreaterThan(0);
      expect(['stop', 'length']).toContain(c.finish_reason);
    }
    const u = r.json!.usage;
    expect(u.total_tokens).toBe(u.prompt_tokens + u.completion_tokens);
    const row = await logged(r.requestId);
    expect(row).toMatchObject({ endpoint: 'chat.completions', model: 'tiny', key_id: keyId, status: 'completed' });
    expect(row!.input.messages).toEqual([
      { role: 'system', content: EDIT_SYSTEM_PROMPT },
      { role: 'user', content: 'Instruction: Fix the spelling.\n\nText:\nHelo wrld' },
    ]);
    expect(row!.usage.prompt_tokens).toBe(u.prompt_tokens);
  });

  it('refuses bad input with a 400 naming the param, as the chat endpoint does', async () => {
    const cases: [Json, string][] = [
      [{ model: 'tiny', input: 'x' }, 'instruction'],
      [{ model: 'tiny', instruction: 'x', input: 5 }, 'input'],
      [{ model: 'tiny', instruction: 'x', temperature: 5 }, 'temperature'],
      [{ model: 'tiny', instruction: 'x', n: 0 }, 'n'],
      [{ model: 'tiny', instruction: 'x', max_tokens: 5 }, 'max_tokens'],
      // Longer than the model's context: the chat endpoint's limit, under the edit's own name.
      [{ model: 'tiny', instruction: 'x', input: 'word '.repeat(5000) }, 'input'],
    ];
    for (const [body, param] of cases) {
      const r = await call('POST', '/v1/edits', body);
      expect(r.status, `${JSON.stringify(body).slice(0, 80)}: ${r.text}`).toBe(400);
      expect(r.json!.error.param).toBe(param);
    }
    expect((await call('POST', '/v1/edits', { model: 'nope', instruction: 'x' })).status).toBe(404);
  });
});

describe('/v1/engines', () => {
  it('lists and retrieves models as engines', async () => {
    const list = await call('GET', '/v1/engines');
    expect(list.status).toBe(200);
    expect(list.json!.object).toBe('list');
    expect(list.json!.data.map((e: Json) => e.id).sort()).toEqual(['minilm', 'text-davinci-edit-001', 'tiny']);
    for (const e of list.json!.data) expect(e).toMatchObject({ object: 'engine', owner: 'switchyard', ready: true, created: expect.any(Number) });
    const one = await call('GET', '/v1/engines/tiny');
    expect(one.json).toMatchObject({ id: 'tiny', object: 'engine', ready: true });
    const missing = await call('GET', '/v1/engines/nope');
    expect(missing.status).toBe(404);
    expect(missing.json!.error.code).toBe('model_not_found');
  });

  it('completes with the engine id as the model, as /v1/completions does, JSON and SSE', async () => {
    const body = { prompt: 'Once upon a time', max_tokens: 4, temperature: 0 };
    const legacy = await call('POST', '/v1/engines/tiny/completions', { ...body, model: 'ignored-the-path-wins' });
    const current = await call('POST', '/v1/completions', { ...body, model: 'tiny' });
    expect(legacy.status, legacy.text).toBe(200);
    expect(legacy.json).toMatchObject({ object: 'text_completion', model: 'tiny' });
    expect(legacy.json!.choices[0].text).toBe(current.json!.choices[0].text);
    expect(legacy.json!.usage).toEqual(current.json!.usage);
    expect(await logged(legacy.requestId)).toMatchObject({ endpoint: 'completions', model: 'tiny', key_id: keyId, status: 'completed' });
    const stream = await call('POST', '/v1/engines/tiny/completions', { ...body, stream: true });
    expect(stream.type).toMatch(/text\/event-stream/);
    const frames = stream.text.split('\n\n').filter(Boolean).map((f) => f.replace(/^data: /, ''));
    expect(frames.at(-1)).toBe('[DONE]');
    expect(frames.slice(0, -1).map((f) => (JSON.parse(f) as Json).choices[0]?.text ?? '').join('')).toBe(current.json!.choices[0].text);
  });

  it('embeds with the engine id as the model, as /v1/embeddings does', async () => {
    const input = ['engines are models', 'by another name'];
    const legacy = await call('POST', '/v1/engines/minilm/embeddings', { input });
    const current = await call('POST', '/v1/embeddings', { input, model: 'minilm' });
    expect(legacy.status, legacy.text).toBe(200);
    expect(legacy.json).toMatchObject({ object: 'list', model: 'minilm' });
    expect(legacy.json!.data).toEqual(current.json!.data);
    expect(await logged(legacy.requestId)).toMatchObject({ endpoint: 'embeddings', model: 'minilm', key_id: keyId, status: 'completed' });
  });

  it("keeps the aliased endpoints' limits and errors", async () => {
    const tooMany = await call('POST', '/v1/engines/minilm/embeddings', { input: Array.from({ length: 2049 }, () => 'x') });
    expect(tooMany.status).toBe(400);
    expect(tooMany.json!.error.param).toBe('input');
    // The same refusal as /v1/completions gives, word for word.
    const tooLong = await call('POST', '/v1/engines/tiny/completions', { prompt: 'x', max_tokens: 100_000 });
    expect(tooLong.status).toBe(400);
    expect(tooLong.json!.error.code).toBe('context_length_exceeded');
    expect(tooLong.json).toEqual((await call('POST', '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 100_000 })).json);
    expect((await call('POST', '/v1/engines/minilm/completions', { prompt: 'x' })).json!.error.code).toBe('model_not_supported');
    expect((await call('POST', '/v1/engines/tiny/edits', { prompt: 'x' })).status).toBe(404);
    expect((await call('POST', '/v1/engines/tiny/embeddings', 'not an object')).status).toBe(400);
  });
});

describe('auth and scopes on the legacy routes', () => {
  const routes: ['GET' | 'POST', string, Json | undefined][] = [
    ['POST', '/v1/edits', { model: 'tiny', instruction: 'x', input: 'y' }],
    ['GET', '/v1/engines', undefined],
    ['GET', '/v1/engines/tiny', undefined],
    ['POST', '/v1/engines/tiny/completions', { prompt: 'x', max_tokens: 1 }],
    ['POST', '/v1/engines/minilm/embeddings', { input: 'x' }],
  ];

  it('refuses every route without a key, or with a wrong one', async () => {
    for (const [method, path, body] of routes) {
      for (const auth of [null, 'sk-wrong']) {
        const r = await call(method, path, body, auth);
        expect(r.status, `${method} ${path}`).toBe(401);
        expect(r.json!.error.type).toBe('authentication_error');
      }
    }
  });

  it("holds a key to its models: another model's engine is a 403, and the list shows only its own", async () => {
    for (const [method, path, body] of routes.filter(([, p]) => /tiny|edits/.test(p))) {
      const r = await call(method, path, body, embedOnlyKey);
      expect(r.status, `${method} ${path}: ${r.text}`).toBe(403);
      expect(r.json!.error.code).toBe('model_not_allowed');
    }
    const list = await call('GET', '/v1/engines', undefined, embedOnlyKey);
    expect(list.json!.data.map((e: Json) => e.id)).toEqual(['minilm']);
    expect((await call('POST', '/v1/engines/minilm/embeddings', { input: 'x' }, embedOnlyKey)).status).toBe(200);
  });
});
