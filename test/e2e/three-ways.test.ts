import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChatCompletion } from '../../src/protocol/chat.js';
import { OpenSourceAI } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * Issue 17, acceptance 2: one source of truth for chat. The same request through HTTP (the
 * official openai package against `serve`), the Postgres-direct SDK and ai.chat_complete in SQL
 * gets the same error (code and param) when it is malformed, and the same forced tool call,
 * byte for byte, when it is not. One real worker (tiny-chat fixture) answers all three.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let http: OpenAI;
let sdk: OpenSourceAI;
let sql: pg.Client;

const user = [{ role: 'user', content: 'What is the weather in Paris?' }];
const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer' } },
      required: ['city', 'unit', 'days'],
      additionalProperties: false,
    },
  },
};

type Body = Record<string, unknown> & { model: string; messages: unknown };
interface Outcome { code: string | null; param: string | null }

async function viaHttp(body: Body): Promise<ChatCompletion | Outcome> {
  try {
    return (await http.chat.completions.create(body as never)) as unknown as ChatCompletion;
  } catch (e) {
    if (!(e instanceof OpenAI.APIError)) throw e;
    expect(e.status, JSON.stringify(e.error)).toBeLessThan(500);
    return { code: e.code ?? null, param: e.param ?? null };
  }
}

async function viaSdk(body: Body): Promise<ChatCompletion | Outcome> {
  try {
    return (await sdk.chat.completions.create(body as never)) as unknown as ChatCompletion;
  } catch (e) {
    const err = e as { status?: number; code?: string | null; param?: string | null };
    expect(err.status, String(e)).toBeLessThan(500);
    return { code: err.code ?? null, param: err.param ?? null };
  }
}

async function viaSql(body: Body): Promise<ChatCompletion | Outcome> {
  const { model, messages, ...options } = body;
  try {
    return (await sql.query(`select ai.chat_complete($1, $2::jsonb, $3::jsonb) as c`, [model, JSON.stringify(messages), JSON.stringify(options)])).rows[0].c;
  } catch (e) {
    const err = e as pg.DatabaseError;
    // ai.chat_complete's DETAIL: 'param P, code C, ...' ('none' for null).
    const m = /^param (\S+), code ([^,\s]+)/.exec(err.detail ?? '');
    expect(m, `${err.code} ${err.message} ${err.detail}`).not.toBeNull();
    const none = (s: string) => (s === 'none' ? null : s);
    return { param: none(m![1]!), code: none(m![2]!) };
  }
}

beforeAll(async () => {
  db = await createTestDatabase();
  const r = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  [serve, worker] = await Promise.all([startServe(db.url, ['--no-auth']), startWorker(db.url, ['--models', 'tiny'])]);
  http = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  sdk = new OpenSourceAI(db.url);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});

afterAll(async () => {
  await sdk?.close();
  await sql?.end();
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

const malformed: [string, Body][] = [
  ['max_tokens 0', { model: 'tiny', messages: user, max_tokens: 0 }],
  ['temperature 5', { model: 'tiny', messages: user, temperature: 5 }],
  ['n 0', { model: 'tiny', messages: user, n: 0 }],
  ['an unknown parameter', { model: 'tiny', messages: user, frobnicate: true }],
  ['an unknown role', { model: 'tiny', messages: [{ role: 'wizard', content: 'x' }] }],
  ['no messages', { model: 'tiny', messages: [] }],
  ['content of the wrong type', { model: 'tiny', messages: [{ role: 'user', content: 42 }] }],
  ['an unknown response_format', { model: 'tiny', messages: user, response_format: { type: 'xml' } }],
  ['tool_choice naming no tool', { model: 'tiny', messages: user, tools: [weather], tool_choice: { type: 'function', function: { name: 'nope' } } }],
  ['a schema keyword outside the strict subset', { model: 'tiny', messages: user, max_tokens: 4, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { a: { type: 'integer', minimum: 1 } } } } } }],
  ['a tool without a name', { model: 'tiny', messages: user, max_tokens: 4, tools: [{ type: 'function', function: { parameters: { type: 'object' } } }] }],
  ['top_logprobs without logprobs', { model: 'tiny', messages: user, top_logprobs: 3 }],
  ['an unknown model', { model: 'nope', messages: user }],
];

describe('one source of truth for chat: HTTP, SDK and SQL agree', () => {
  it.each(malformed)('%s: the same error code and param everywhere', async (_, body) => {
    const [h, s, q] = [await viaHttp(body), await viaSdk(body), await viaSql(body)];
    expect(h).not.toHaveProperty('object');
    expect(h).toMatchObject({ param: expect.anything() });
    expect(s).toEqual(h);
    expect(q).toEqual(h);
  });

  it('a forced tool call: byte-identical arguments through all three', async () => {
    const body: Body = { model: 'tiny', messages: user, tools: [weather], tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 80, temperature: 0, seed: 7 };
    const results = [await viaHttp(body), await viaSdk(body), await viaSql(body)] as ChatCompletion[];
    const calls = results.map((c) => {
      expect(c.object).toBe('chat.completion');
      const tc = c.choices[0]!.message.tool_calls!;
      expect(tc).toHaveLength(1);
      expect(tc[0]!.function.name).toBe('get_weather');
      return tc[0]!.function.arguments;
    });
    expect(JSON.parse(calls[0]!)).toMatchObject({ city: expect.any(String), unit: expect.stringMatching(/^(celsius|fahrenheit)$/), days: expect.any(Number) });
    expect(calls[1]).toBe(calls[0]);
    expect(calls[2]).toBe(calls[0]);
    expect(results.map((c) => c.choices[0]!.finish_reason)).toEqual(['tool_calls', 'tool_calls', 'tool_calls']);
  });
});
