import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** Bad input over raw HTTP: OpenAI's error envelope, the right status, and no process harmed. */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let key: string;
let revoked: string;

async function post(body: string | object, headers: Record<string, string> = {}) {
  const res = await fetch(`${serve.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } } };
}

function expectEnvelope(body: { error: Record<string, unknown> }) {
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof body.error.message).toBe('string');
  expect((body.error.message as string).length).toBeGreaterThan(5);
}

const ok = { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 };

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'good'], env)).stdout.trim();
  revoked = (await cli(['keys', 'create', '--name', 'old'], env)).stdout.trim();
  const listed = (await cli(['keys', 'list'], env)).stdout;
  const oldId = listed.split('\n').find((l) => l.includes('\told\t'))!.split('\t')[0]!;
  expect((await cli(['keys', 'revoke', oldId], env)).code).toBe(0);
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

describe('request errors', () => {
  it.each([
    ['unknown model', { ...ok, model: 'nope' }, 404, 'model', 'model_not_found'],
    ['missing messages', { model: 'tiny' }, 400, 'messages', null],
    ['non-array messages', { model: 'tiny', messages: 'hello' }, 400, 'messages', null],
    ['empty messages', { model: 'tiny', messages: [] }, 400, 'messages', null],
    ['bad role', { model: 'tiny', messages: [{ role: 'wizard', content: 'x' }] }, 400, 'messages[0].role', null],
    ['negative max_tokens', { ...ok, max_tokens: -1 }, 400, 'max_tokens', null],
    ['string max_tokens', { ...ok, max_tokens: '5' }, 400, 'max_tokens', null],
    ['temperature out of range', { ...ok, temperature: 3 }, 400, 'temperature', null],
    ['unsupported parameter', { ...ok, functions: [{ name: 'f' }] }, 400, 'functions', 'unsupported_parameter'],
    ['empty tools (as OpenAI: at least one)', { ...ok, tools: [] }, 400, 'tools', null],
    ['top_logprobs without logprobs', { ...ok, top_logprobs: 2 }, 400, 'top_logprobs', null],
    ['unsupported logit_bias', { ...ok, logit_bias: { '1': 1 } }, 400, 'logit_bias', 'unsupported_parameter'],
    ['unknown parameter', { ...ok, frobnicate: 1 }, 400, 'frobnicate', 'unknown_parameter'],
    ['too many stop strings', { ...ok, stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'stop', null],
    ['stream_options without stream', { ...ok, stream_options: { include_usage: true } }, 400, 'stream_options', null],
  ])('%s → %i naming the param', async (_name, body, status, param, code) => {
    const r = await post(body);
    expect(r.status).toBe(status);
    expectEnvelope(r.body);
    expect(r.body.error.param).toBe(param);
    if (code) expect(r.body.error.code).toBe(code);
    expect(r.body.error.type).toBe(status === 404 ? 'not_found_error' : 'invalid_request_error');
  });

  it('malformed JSON → 400', async () => {
    const r = await post('{"model": "tiny", "messages": [');
    expect(r.status).toBe(400);
    expectEnvelope(r.body);
    expect(r.body.error.type).toBe('invalid_request_error');
  });

  it('a JSON body that is not an object → 400', async () => {
    const r = await post('[1,2,3]');
    expect(r.status).toBe(400);
    expectEnvelope(r.body);
  });

  it('an unknown route → 404 in the envelope', async () => {
    const res = await fetch(`${serve.url}/v1/nothing-here`, { headers: { authorization: `Bearer ${key}` } });
    expect(res.status).toBe(404);
    expectEnvelope((await res.json()) as never);
  });
});

describe('authentication', () => {
  it.each([
    ['missing key', {}],
    ['wrong key', { authorization: 'Bearer sy-not-a-real-key' }],
    ['malformed header', { authorization: 'Basic abc' }],
  ])('%s → 401', async (_name, headers) => {
    const res = await fetch(`${serve.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(ok),
    });
    expect(res.status).toBe(401);
    const body = (await res.json()) as { error: Record<string, unknown> };
    expectEnvelope(body);
    expect(body.error.type).toBe('authentication_error');
  });

  it('a revoked key → 401, on every /v1 route', async () => {
    for (const [method, path] of [['POST', '/v1/chat/completions'], ['GET', '/v1/models'], ['GET', '/v1/models/tiny']] as const) {
      const res = await fetch(`${serve.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${revoked}`, 'content-type': 'application/json' },
        ...(method === 'POST' ? { body: JSON.stringify(ok) } : {}),
      });
      expect(res.status, path).toBe(401);
    }
  });

  it('/health needs no key and shows no secrets', async () => {
    const res = await fetch(`${serve.url}/health`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ status: 'ok', database: 'ok' });
    expect(text).not.toMatch(/postgres:|password|sy-/);
  });
});

describe('after all that', () => {
  it('both processes are alive and still answer', async () => {
    expect(serve.exited()).toBe(false);
    expect(worker.exited()).toBe(false);
    const r = await post(ok);
    expect(r.status).toBe(200);
  });
});
