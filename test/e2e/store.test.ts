import OpenAI from 'openai';
import type { ChatCompletionChunk, ChatCompletionCreateParamsNonStreaming, ChatCompletionTool } from 'openai/resources/chat/completions';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenSourceAI } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * `store: false` through the whole stack: the client gets its whole answer, and the request
 * log keeps no prompt or output text afterwards, only what accounting needs. Every process
 * here sweeps ended store:false requests every 2 s with a 3 s grace (SWITCHYARD_WORKER_TIMEOUT
 * sets the tick; the default grace is 30 s).
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc & { workerId: string };
let stored: OpenAI;
let unstored: OpenAI;
let unstoredKeyId: string;

const SECRET = 'the vault code is quokka-secret';
const messages = [
  { role: 'system' as const, content: 'You keep secrets.' },
  { role: 'user' as const, content: `Remember: ${SECRET}. What is it?` },
];
const base = { model: 'tiny', messages, max_tokens: 12, n: 2, temperature: 0, seed: 7, stop: ['zz-stop-zz'], metadata: { topic: 'vault' } };
const weatherParams = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false };
const tools: ChatCompletionTool[] = [{ type: 'function', function: { name: 'get_weather', description: `Weather for ${SECRET}`, parameters: weatherParams } }];

beforeAll(async () => {
  process.env.SWITCHYARD_WORKER_TIMEOUT = '4';
  process.env.SWITCHYARD_UNSTORED_GRACE = '3';
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  const a = await cli(['keys', 'create', '--name', 'stored'], env);
  const b = await cli(['keys', 'create', '--name', 'unstored'], env);
  expect(a.code, a.stderr).toBe(0);
  expect(b.code, b.stderr).toBe(0);
  unstoredKeyId = (await query<{ id: string }>(db.url, `select id from ai.api_keys where name = 'unstored'`))[0]!.id;
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  stored = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: a.stdout.trim(), maxRetries: 0 });
  unstored = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: b.stdout.trim(), maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
  delete process.env.SWITCHYARD_UNSTORED_GRACE;
});

interface Row {
  input: Record<string, unknown>;
  output: { choices: Record<string, unknown>[] } | null;
  params: Record<string, unknown>;
  usage: Record<string, number> | null;
  error: Record<string, unknown> | null;
  status: string;
  key_id: string | null;
  events: number;
}

async function row(id: string): Promise<Row> {
  const rows = await query<Row>(
    db.url,
    `select input, output, params, usage, error, status, key_id,
            (select count(*)::int from ai.request_events e where e.request_id = r.id) as events
       from ai.requests r where id = $1`,
    [id],
  );
  expect(rows).toHaveLength(1);
  return rows[0]!;
}

/** No text of the request or its answer anywhere in the row, and no events; the accounting stays. */
function expectRedacted(r: Row, answers: string[]) {
  expect(r.input).toEqual({});
  expect(r.events).toBe(0);
  const all = JSON.stringify(r);
  expect(all).not.toContain('quokka');
  for (const a of answers) if (a.trim().length >= 6) expect(all).not.toContain(JSON.stringify(a).slice(1, -1));
  for (const c of r.output?.choices ?? []) expect(Object.keys(c).sort()).toEqual(['finish_reason', 'index']);
  expect(r.params).toMatchObject({ store: false, n: 2, temperature: 0, maxTokens: 12 });
  expect(r.params.redacted_at).toEqual(expect.any(String));
  for (const k of ['stop', 'metadata', 'chat_template', 'constraint']) expect(r.params).not.toHaveProperty(k);
}

const contents = (c: { choices: { message: { content: string | null } }[] }) => c.choices.map((x) => x.message.content ?? '');

describe('chat completions with store: false', () => {
  let reference: string[];

  it('a stored request (the default) keeps its input, output and events', async () => {
    const { data, response } = await stored.chat.completions.create({ ...base, logprobs: true, top_logprobs: 2 }).withResponse();
    reference = contents(data);
    const r = await row(response.headers.get('x-request-id')!);
    expect(r.status).toBe('completed');
    expect(JSON.stringify(r.input)).toContain(SECRET);
    expect(r.output!.choices.map((c) => c.text)).toEqual(reference);
    expect(r.events).toBeGreaterThan(0);
    expect(r.params).not.toHaveProperty('store');
    expect(r.params).not.toHaveProperty('redacted_at');
    // Stated explicitly, it is the same.
    const again = await stored.chat.completions.create({ ...base, store: true }).withResponse();
    expect(JSON.stringify((await row(again.response.headers.get('x-request-id')!)).input)).toContain(SECRET);
  });

  it('JSON: the whole answer, then no text left in the log, usage kept', async () => {
    const body: ChatCompletionCreateParamsNonStreaming = { ...base, store: false, logprobs: true, top_logprobs: 2 };
    const { data, response } = await unstored.chat.completions.create(body).withResponse();
    expect(contents(data)).toEqual(reference);
    for (const c of data.choices) expect(c.logprobs!.content!.length).toBe(data.usage!.completion_tokens / 2);
    // Redacted before the answer went out: nothing to wait for.
    const r = await row(response.headers.get('x-request-id')!);
    expect(r.status).toBe('completed');
    expect(r.key_id).toBe(unstoredKeyId);
    expect(r.usage).toMatchObject({ prompt_tokens: data.usage!.prompt_tokens, completion_tokens: data.usage!.completion_tokens });
    expect(r.output!.choices).toEqual(data.choices.map((c) => ({ index: c.index, finish_reason: c.finish_reason })));
    expectRedacted(r, contents(data));
  });

  it('SSE: every chunk, then no text left in the log, usage kept', async () => {
    const { data: stream, response } = await unstored.chat.completions
      .create({ ...base, store: false, stream: true, stream_options: { include_usage: true } })
      .withResponse();
    const texts = ['', ''];
    let usage: ChatCompletionChunk['usage'] = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) texts[c.index] += c.delta.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(texts).toEqual(reference);
    const r = await row(response.headers.get('x-request-id')!);
    expect(r.status).toBe('completed');
    expect(r.usage).toMatchObject({ prompt_tokens: usage!.prompt_tokens, completion_tokens: usage!.completion_tokens });
    expectRedacted(r, texts);
  });

  it('a forced tool call, streamed: the same call as when stored; tools and schema gone from the log', async () => {
    const req = { ...base, n: 1, max_tokens: 100, tools, tool_choice: { type: 'function' as const, function: { name: 'get_weather' } } };
    const expected = (await stored.chat.completions.create(req)).choices[0]!.message.tool_calls![0] as { function: { arguments: string } };
    const { data: stream, response } = await unstored.chat.completions.create({ ...req, store: false, stream: true }).withResponse();
    let name = '';
    let args = '';
    for await (const chunk of stream) {
      for (const call of chunk.choices[0]?.delta.tool_calls ?? []) {
        name += call.function?.name ?? '';
        args += call.function?.arguments ?? '';
      }
    }
    expect(name).toBe('get_weather');
    expect(JSON.parse(args)).toEqual(JSON.parse(expected.function.arguments));
    const r = await row(response.headers.get('x-request-id')!);
    expect(r.input).toEqual({});
    expect(r.events).toBe(0);
    expect(JSON.stringify(r)).not.toContain('get_weather');
    expect(JSON.stringify(r)).not.toContain('quokka');
  });

  it('usage per key still counts every store:false request', async () => {
    const rows = await query<{ requests: string; completed: string; prompt_tokens: string; completion_tokens: string }>(
      db.url,
      `select requests, completed, prompt_tokens, completion_tokens from ai.usage_daily where key_id = $1`,
      [unstoredKeyId],
    );
    expect(rows).toHaveLength(1);
    expect(Number(rows[0]!.requests)).toBe(3);
    expect(Number(rows[0]!.completed)).toBe(3);
    expect(Number(rows[0]!.completion_tokens)).toBeGreaterThan(0);
  });

  it('a client that leaves mid-stream: the cancelled request is swept once its worker is done', async () => {
    const { data: stream, response } = await unstored.chat.completions
      .create({ model: 'tiny', messages, max_tokens: 2000, store: false, stream: true })
      .withResponse();
    const id = response.headers.get('x-request-id')!;
    let seen = 0;
    for await (const chunk of stream) if (chunk.choices[0]?.delta.content && ++seen === 3) break;
    let r = await row(id);
    for (let i = 0; i < 150 && !r.params.redacted_at; i++) {
      await new Promise((res) => setTimeout(res, 100));
      r = await row(id);
    }
    expect(r.status).toBe('cancelled');
    expect(r.input).toEqual({});
    expect(r.events).toBe(0);
    expect(JSON.stringify(r)).not.toContain('quokka');
  });

  it('through the SDK (no HTTP), too', async () => {
    const sdk = new OpenSourceAI(db.url);
    try {
      const c = await sdk.chat.completions.create({ ...base, store: false });
      expect(contents(c)).toEqual(reference);
      const r = await row(c.id.replace(/^chatcmpl-/, '').replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-'));
      expectRedacted(r, contents(c));
      expect(r.key_id).toBeNull();
    } finally {
      await sdk.close();
    }
  });

  it('/v1/completions and ai.chat_complete have no store parameter: store:false is refused, not ignored', async () => {
    const err = await unstored.completions.create({ model: 'tiny', prompt: SECRET, max_tokens: 2, store: false } as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('store');
    await expect(query(db.url, `select ai.chat_complete('tiny', $1::jsonb, '{"store": false}')`, [JSON.stringify(messages)])).rejects.toThrow(/store/);
  });
});

describe('the sweep (ai.redact_unstored)', () => {
  // In one transaction, rolled back: the serve's and worker's own sweeps never see these rows.
  async function inTransaction(fn: (c: pg.Client) => Promise<void>) {
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      await c.query('begin');
      await fn(c);
    } finally {
      await c.query('rollback').catch(() => {});
      await c.end();
    }
  }

  /** A request row as a worker leaves it, with one stream event, none of it redacted. */
  async function insert(c: pg.Client, id: string, params: object, status: string, endedAgo: string | null) {
    await c.query(
      `insert into ai.requests (id, endpoint, model, requested_model, input, params, status, output, usage, error, finished_at)
       values ($1, 'chat.completions', 'tiny', 'tiny', $2, $3, $4,
               case when $4 = 'completed' then '{"choices": [{"index": 0, "text": "answer quokka", "finish_reason": "stop", "token_ids": [1, 2]}]}'::jsonb end,
               '{"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}',
               case when $4 = 'failed' then '{"message": "bad template near quokka", "type": "server_error", "param": null, "code": "template_error"}'::jsonb end,
               clock_timestamp() - $5::interval)`,
      [id, JSON.stringify({ messages }), JSON.stringify(params), status, endedAgo],
    );
    await c.query(`insert into ai.request_events (request_id, seq, data) values ($1, 0, '{"type": "delta", "choices": [{"index": 0, "text": "quokka"}], "at": 0}')`, [id]);
  }

  it('redacts final store:false rows past the grace that no serve redacted, and nothing else', async () => {
    await inTransaction(async (c) => {
      const ids = {
        completedOld: '00000000-0000-4000-8000-000000000001',
        failedOld: '00000000-0000-4000-8000-000000000002',
        cancelledOld: '00000000-0000-4000-8000-000000000003',
        completedNew: '00000000-0000-4000-8000-000000000004',
        runningOld: '00000000-0000-4000-8000-000000000005',
        storedOld: '00000000-0000-4000-8000-000000000006',
      };
      const unstoredParams = { store: false, n: 1, temperature: 0.5, stop: ['quokka'], chat_template: 'quokka' };
      // Whatever the tests above left to sweep goes first (rolled back with the rest), so the counts below are ours.
      await c.query(`select ai.redact_unstored(interval '0')`);
      await insert(c, ids.completedOld, unstoredParams, 'completed', '1 minute');
      await insert(c, ids.failedOld, unstoredParams, 'failed', '1 minute');
      await insert(c, ids.cancelledOld, unstoredParams, 'cancelled', '1 minute');
      await insert(c, ids.completedNew, unstoredParams, 'completed', '0 seconds');
      await insert(c, ids.runningOld, unstoredParams, 'running', null);
      await insert(c, ids.storedOld, { n: 1 }, 'completed', '1 minute');

      expect((await c.query(`select ai.redact_unstored() as n`)).rows[0].n).toBe(3);
      const rows = new Map(
        (await c.query<Row & { id: string }>(`select r.id, input, output, params, usage, error, status,
                 (select count(*)::int from ai.request_events e where e.request_id = r.id) as events from ai.requests r`)).rows.map((r) => [r.id, r]),
      );
      for (const id of [ids.completedOld, ids.failedOld, ids.cancelledOld]) {
        const r = rows.get(id)!;
        expect(r.input).toEqual({});
        expect(r.events).toBe(0);
        expect(JSON.stringify(r)).not.toContain('quokka');
        expect(r.usage).toEqual({ prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 });
        expect(r.params).toMatchObject({ store: false, n: 1, temperature: 0.5, redacted_at: expect.any(String) });
      }
      expect(rows.get(ids.completedOld)!.output).toEqual({ choices: [{ index: 0, finish_reason: 'stop' }] });
      expect(rows.get(ids.failedOld)!.error).toMatchObject({ type: 'server_error', code: 'template_error', param: null });
      for (const id of [ids.completedNew, ids.runningOld, ids.storedOld]) {
        expect(JSON.stringify(rows.get(id)!.input)).toContain('quokka');
        expect(rows.get(id)!.events).toBe(1);
      }
      // Done rows are not swept twice; within its grace a row is taken once the grace is shorter.
      expect((await c.query(`select ai.redact_unstored() as n`)).rows[0].n).toBe(0);
      expect((await c.query(`select ai.redact_unstored(interval '0') as n`)).rows[0].n).toBe(1);
      // The serve's own call: only a completed or failed request, and only once.
      expect((await c.query(`select ai.redact_request($1) as done`, [ids.runningOld])).rows[0].done).toBe(false);
      await c.query(`update ai.requests set status = 'completed', finished_at = clock_timestamp() where id = $1`, [ids.runningOld]);
      expect((await c.query(`select ai.redact_request($1) as done`, [ids.runningOld])).rows[0].done).toBe(true);
      expect((await c.query(`select ai.redact_request($1) as done`, [ids.runningOld])).rows[0].done).toBe(false);
      expect((await c.query(`select ai.redact_request($1) as done`, [ids.storedOld])).rows[0].done).toBe(false);
    });
  });

  it('reads only the partial index of rows still to redact', async () => {
    await inTransaction(async (c) => {
      await c.query('set local enable_seqscan = off');
      const plan = (await c.query(`explain select id from ai.requests
         where params @> '{"store": false}' and not (params ? 'redacted_at')
           and status in ('completed', 'failed', 'cancelled') and coalesce(finished_at, queued_at) < now()`)).rows.map((r) => r['QUERY PLAN']).join('\n');
      expect(plan).toContain('requests_unstored_idx');
    });
  });
});
