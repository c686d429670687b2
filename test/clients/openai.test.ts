import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, query, startServe, type Proc } from '../helpers/stack.js';
import { attempts, expectSameVectors, PgProxy, Recorder, startGateway, type Gateway } from './harness.js';

/**
 * The official `openai` package (openai-node v6) against a running gateway: what an application
 * written for OpenAI does, with only `baseURL` and `apiKey` changed.
 */
let gw: Gateway;
const rec = new Recorder();
let client: OpenAI;
const messages = [
  { role: 'system' as const, content: 'You are a helpful assistant.' },
  { role: 'user' as const, content: 'Name three colours of the rainbow.' },
];

beforeAll(async () => {
  gw = await startGateway();
  client = new OpenAI({ baseURL: gw.baseURL, apiKey: gw.key, maxRetries: 0, fetch: rec.fetch });
});

afterAll(async () => {
  await gw?.stop();
});

describe('openai-node', () => {
  it('lists models under their names and aliases, and retrieves one', async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids.sort()).toEqual(['gpt-4o-mini', 'held', 'minilm', 'text-embedding-3-small', 'tiny']);
    expect(await client.models.retrieve('text-embedding-3-small')).toMatchObject({ id: 'text-embedding-3-small', object: 'model' });
  });

  it('chat: an OpenAI model name is served by its alias, with usage equal to the logged row', async () => {
    const { data: c, response } = await client.chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 12, temperature: 0 }).withResponse();
    expect(c.object).toBe('chat.completion');
    expect(c.model).toBe('gpt-4o-mini');
    expect(c.choices[0]!.message.role).toBe('assistant');
    expect(c.choices[0]!.message.content!.length).toBeGreaterThan(0);
    expect(c.choices[0]!.finish_reason).toBe('length');
    expect(c.usage!.prompt_tokens).toBeGreaterThan(0);
    expect(c.usage!.completion_tokens).toBe(12);
    const row = await gw.row(response.headers.get('x-request-id'));
    expect(row).toMatchObject({ model: 'tiny', status: 'completed' });
    expect(row.usage).toEqual(c.usage);
    expect(row.output!.choices[0].text).toBe(c.choices[0]!.message.content);
  });

  it('stream: the deltas join to the non-streamed text (temperature 0), usage last, equal to the row', async () => {
    const plain = await client.chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 16, temperature: 0 });
    const seen = rec.mark();
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini', messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(plain.choices[0]!.message.content);
    expect(finish).toBe('length');
    expect(usage).toEqual(plain.usage);
    const [ex] = seen();
    expect(ex!.headers.get('accept')).toBe('application/json'); // what the SDK sends even for streams: the gateway does not mind
    expect((await gw.row(ex!.requestId)).usage).toEqual(usage);
  });

  it('legacy completions: streamed and not agree (temperature 0), usage equals the row', async () => {
    const prompt = 'Once upon a time';
    const { data: c, response } = await client.completions.create({ model: 'gpt-4o-mini', prompt, max_tokens: 12, temperature: 0 }).withResponse();
    expect(c.object).toBe('text_completion');
    expect(c.choices[0]!.finish_reason).toBe('length');
    expect(c.choices[0]!.text.length).toBeGreaterThan(0);
    const row = await gw.row(response.headers.get('x-request-id'));
    expect(row).toMatchObject({ model: 'tiny', status: 'completed' });
    expect(row.usage).toEqual(c.usage);
    expect(c.usage!.completion_tokens).toBe(12);
    const seen = rec.mark();
    const stream = await client.completions.create({ model: 'gpt-4o-mini', prompt, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(c.choices[0]!.text);
    expect(usage).toEqual((await gw.row(seen()[0]!.requestId)).usage);
  });

  it('responses: create, stream, retrieve, input items, delete; usage equals the row; an unknown id is NotFoundError', async () => {
    const seen = rec.mark();
    const { data: r, response } = await client.responses.create({ model: 'gpt-4o-mini', instructions: 'Be brief.', input: 'Name three colours of the rainbow.', max_output_tokens: 12, temperature: 0 }).withResponse();
    expect(r).toMatchObject({ object: 'response', model: 'gpt-4o-mini', status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } });
    const row = await gw.row(response.headers.get('x-request-id'));
    expect(row).toMatchObject({ endpoint: 'responses', model: 'tiny', status: 'completed' });
    expect(r.id).toBe(`resp_${row.id.replaceAll('-', '')}`);
    expect(row.output!.choices[0].text).toBe(r.output_text);
    expect(r.usage).toMatchObject({ input_tokens: row.usage!.prompt_tokens, output_tokens: row.usage!.completion_tokens, total_tokens: row.usage!.total_tokens });
    let streamed = '';
    for await (const e of await client.responses.create({ model: 'gpt-4o-mini', instructions: 'Be brief.', input: 'Name three colours of the rainbow.', max_output_tokens: 12, temperature: 0, stream: true })) {
      if (e.type === 'response.output_text.delta') streamed += e.delta;
    }
    expect(streamed).toBe(r.output_text);
    expect(await client.responses.retrieve(r.id)).toEqual(r);
    expect((await client.responses.inputItems.list(r.id)).data).toMatchObject([{ type: 'message', role: 'user' }]);
    await client.responses.delete(r.id);
    await expect(client.responses.retrieve(r.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    expect(seen().map((e) => `${e.method} ${e.path.replace(/resp_[0-9a-f]{32}/, 'ID')} ${e.status}`)).toEqual([
      'POST /v1/responses 200', 'POST /v1/responses 200', 'GET /v1/responses/ID 200', 'GET /v1/responses/ID/input_items 200', 'DELETE /v1/responses/ID 200', 'GET /v1/responses/ID 404',
    ]);
  });

  it('embeddings: the SDK default (base64) decodes to the gateway’s own vectors; usage equals the row', async () => {
    const input = ['The quick brown fox', 'jumps over the lazy dog'];
    const seen = rec.mark();
    const { data: e, response } = await client.embeddings.create({ model: 'text-embedding-3-small', input }).withResponse();
    expect(seen()[0]!.body).toMatchObject({ encoding_format: 'base64' });
    expect(e.object).toBe('list');
    expect(e.model).toBe('text-embedding-3-small');
    expect(e.data.map((d) => d.index)).toEqual([0, 1]);
    expect(e.data[0]!.embedding).toHaveLength(32);
    expectSameVectors(e.data.map((d) => d.embedding), await gw.vectors(input));
    expect(e.usage.prompt_tokens).toBeGreaterThan(0);
    const row = await gw.row(response.headers.get('x-request-id'));
    expect(row.model).toBe('minilm');
    expect(row.usage).toMatchObject(e.usage);
  });

  it('errors arrive as the SDK’s own classes, with status, code and param', async () => {
    const notFound = await client.chat.completions.create({ model: 'gpt-5', messages }).catch((e: unknown) => e);
    expect(notFound).toBeInstanceOf(OpenAI.NotFoundError);
    // (OpenAI itself says type 'invalid_request_error' here; no client tested looks at the type.)
    expect(notFound).toMatchObject({ status: 404, param: 'model', code: 'model_not_found', type: 'not_found_error' });
    expect((notFound as InstanceType<typeof OpenAI.APIError>).requestID).toBeNull(); // refused before queueing: no row, no id

    const bad = await client.chat.completions
      .create({ model: 'tiny', messages, tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }], tool_choice: { type: 'function', function: { name: 'g' } } })
      .catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(OpenAI.BadRequestError);
    expect(bad).toMatchObject({ status: 400, param: 'tool_choice.function.name', type: 'invalid_request_error' });
    // Refused before it was queued: no ai.requests row, so no x-request-id and a null requestID.
    expect((bad as InstanceType<typeof OpenAI.APIError>).requestID).toBeNull();

    const unauth = new OpenAI({ baseURL: gw.baseURL, apiKey: 'sy-wrong', maxRetries: 0 });
    await expect(unauth.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);

    const scoped = await cli(['keys', 'create', '--name', 'embed-only', '--models', 'minilm'], { DATABASE_URL: gw.db.url });
    expect(scoped.code, scoped.stderr).toBe(0);
    const embedOnly = new OpenAI({ baseURL: gw.baseURL, apiKey: scoped.stdout.trim(), maxRetries: 0 });
    const denied = await embedOnly.chat.completions.create({ model: 'tiny', messages }).catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect(denied).toMatchObject({ status: 403 });

    // More than the context: refused by serve before it is queued (no row, no id).
    const tooLong = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 100_000, stream: true }).catch((e: unknown) => e);
    expect(tooLong).toBeInstanceOf(OpenAI.BadRequestError);
    expect(tooLong).toMatchObject({ status: 400, code: 'context_length_exceeded' });
    expect((tooLong as InstanceType<typeof OpenAI.APIError>).requestID).toBeNull();
    // An error that comes after the request was queued (the worker renders the template)
    // carries its id, and its row says why.
    const broken = await client.chat.completions
      .create({ model: 'tiny', messages, max_tokens: 4, stream: true, chat_template: "{{ raise_exception('no template') }}" } as never)
      .catch((e: unknown) => e);
    expect(broken).toBeInstanceOf(OpenAI.BadRequestError);
    expect(broken).toMatchObject({ code: 'invalid_chat_template' });
    const failed = await gw.row((broken as InstanceType<typeof OpenAI.APIError>).requestID ?? null);
    expect(failed.status).toBe('failed');

    const nowhere = new OpenAI({ baseURL: 'http://127.0.0.1:9/v1', apiKey: 'x', maxRetries: 0 });
    await expect(nowhere.models.list()).rejects.toBeInstanceOf(OpenAI.APIConnectionError);
  });

  it('retries a 429 (queue full) after its Retry-After, then raises RateLimitError', async () => {
    const release = await gw.fillHeldQueue();
    try {
      const seen = rec.mark();
      const retrying = new OpenAI({ baseURL: gw.baseURL, apiKey: gw.key, maxRetries: 2, fetch: rec.fetch });
      const err = await retrying.chat.completions.create({ model: 'held', messages, max_tokens: 2 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.RateLimitError);
      expect(err).toMatchObject({ status: 429, code: 'queue_full', type: 'rate_limit_error' });
      expect((err as InstanceType<typeof OpenAI.APIError>).requestID).toBeNull(); // never queued: no row, no id
      const a = attempts(seen(), 'held');
      expect(a.statuses).toEqual([429, 429, 429]);
      expect(a.retryAfter).toEqual(['1', '1', '1']);
      // The SDK's own backoff would be 0.5–1 s: waiting at least the second the gateway asked for is the header at work.
      for (const p of a.pausesMs) expect(p).toBeGreaterThanOrEqual(990);
      expect(seen().map((e) => e.headers.get('x-stainless-retry-count'))).toEqual(['0', '1', '2']);
    } finally {
      await release();
    }
  });

  describe('503 while the database is away', () => {
    let proxy: PgProxy;
    let serve: Proc & { url: string };

    beforeAll(async () => {
      proxy = await PgProxy.start();
      serve = await startServe(proxy.url(gw.db.url));
    });

    afterAll(async () => {
      await serve?.stop();
      await proxy?.close();
    });

    it('retries after Retry-After and gets its answer once the database is back', async () => {
      const local = new Recorder();
      const retrying = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: gw.key, maxRetries: 2, fetch: local.fetch });
      proxy.down();
      local.onResponse = (e) => {
        if (e.status === 503) proxy.up();
      };
      const c = await retrying.chat.completions.create({ model: 'tiny', messages, max_tokens: 4, temperature: 0 });
      expect(c.choices[0]!.finish_reason).toBe('length');
      const a = attempts(local.exchanges, 'tiny');
      expect(a.statuses).toEqual([503, 200]);
      expect(a.retryAfter[0]).toBe('1');
      expect(a.pausesMs[0]).toBeGreaterThanOrEqual(990);
    });

    it('raises InternalServerError (503, service_unavailable) when it stays away', async () => {
      const local = new Recorder();
      const retrying = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: gw.key, maxRetries: 2, fetch: local.fetch });
      proxy.down();
      try {
        const err = await retrying.chat.completions.create({ model: 'tiny', messages, max_tokens: 4 }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(OpenAI.InternalServerError);
        expect(err).toMatchObject({ status: 503, code: 'service_unavailable' });
        // Never queued: its id (for the logs) names no row.
        const id = (err as InstanceType<typeof OpenAI.APIError>).requestID;
        expect(id).toMatch(/^[0-9a-f-]{36}$/);
        expect(await query(gw.db.url, 'select 1 from ai.requests where id = $1', [id])).toEqual([]);
        const a = attempts(local.exchanges, 'tiny');
        expect(a.statuses).toEqual([503, 503, 503]);
        for (const p of a.pausesMs) expect(p).toBeGreaterThanOrEqual(990);
      } finally {
        proxy.up();
      }
    });
  });
});
