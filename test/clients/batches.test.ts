import OpenAI, { toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, query } from '../helpers/stack.js';
import { startGateway, type Gateway } from './harness.js';

/** The Files and Batch APIs through the official `openai` package, against a real gateway and worker. */
let gw: Gateway;
let client: OpenAI;
const N = 1000;

const line = (i: number, body: Record<string, unknown> = {}) =>
  JSON.stringify({ custom_id: `req-${i}`, method: 'POST', url: '/v1/chat/completions', body: { model: 'tiny', messages: [{ role: 'user', content: `question ${i}` }], max_tokens: 2, temperature: 0, ...body } });

async function poll(id: string, done: (b: OpenAI.Batches.Batch) => boolean, ms = 120_000): Promise<OpenAI.Batches.Batch> {
  const until = Date.now() + ms;
  for (;;) {
    const b = await client.batches.retrieve(id);
    if (done(b)) return b;
    if (Date.now() > until) throw new Error(`batch ${id} still ${b.status}: ${JSON.stringify(b.request_counts)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

beforeAll(async () => {
  gw = await startGateway();
  client = new OpenAI({ baseURL: gw.baseURL, apiKey: gw.key, maxRetries: 0 });
});

afterAll(async () => {
  await gw?.stop();
});

describe('Batch API with openai-node', () => {
  it(`files.create + batches.create + polling + files.content of the output, ${N} lines`, async () => {
    const lines = Array.from({ length: N }, (_, i) => line(i));
    // Two lines that fail: a malformed body and an unknown model (they go to the error file).
    lines.push(line(N, { max_tokens: 0 }), line(N + 1, { model: 'nope' }));
    const file = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n') + '\n'), 'input.jsonl'), purpose: 'batch' });
    expect(file).toMatchObject({ object: 'file', purpose: 'batch', filename: 'input.jsonl', bytes: Buffer.byteLength(lines.join('\n') + '\n') });
    expect((await client.files.retrieve(file.id)).id).toBe(file.id);
    const batch = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h', metadata: { job: 'nightly' } });
    expect(batch).toMatchObject({ object: 'batch', status: 'in_progress', input_file_id: file.id, metadata: { job: 'nightly' } });
    expect(batch.request_counts!.total).toBe(N + 2);
    // Interactive requests are served while the batch waits (they go first).
    const t0 = Date.now();
    const c = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'question 5' }], max_tokens: 2, temperature: 0 });
    expect(Date.now() - t0).toBeLessThan(10_000);
    const done = await poll(batch.id, (b) => b.status === 'completed');
    expect(done.request_counts).toEqual({ total: N + 2, completed: N, failed: 2 });
    const out = (await (await client.files.content(done.output_file_id!)).text()).trim().split('\n').map((l) => JSON.parse(l));
    expect(out).toHaveLength(N);
    expect(new Set(out.map((o) => o.custom_id)).size).toBe(N);
    for (const o of out) {
      expect(o.response.status_code).toBe(200);
      expect(o.response.body).toMatchObject({ object: 'chat.completion', model: 'tiny', usage: { completion_tokens: 2 } });
    }
    // A line's answer is the interactive answer to the same request (temperature 0).
    const five = out.find((o) => o.custom_id === 'req-5');
    expect(five.response.body.choices[0].message).toEqual(c.choices[0]!.message);
    const errs = (await (await client.files.content(done.error_file_id!)).text()).trim().split('\n').map((l) => JSON.parse(l));
    const byId = Object.fromEntries(errs.map((e) => [e.custom_id, e.response]));
    expect(byId[`req-${N}`]).toMatchObject({ status_code: 400, body: { error: { param: 'max_tokens', type: 'invalid_request_error' } } });
    expect(byId[`req-${N + 1}`]).toMatchObject({ status_code: 404, body: { error: { code: 'model_not_found' } } });
    const listed: string[] = [];
    for await (const b of client.batches.list()) listed.push(b.id);
    expect(listed).toContain(batch.id);
  }, 180_000);

  it('cancel mid-way: what ran is in the output, the rest is cancelled', async () => {
    const lines = Array.from({ length: 400 }, (_, i) => line(i, { max_tokens: 8 }));
    const file = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n')), 'c.jsonl'), purpose: 'batch' });
    const batch = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
    await poll(batch.id, (b) => (b.request_counts?.completed ?? 0) >= 10);
    const cancelled = await client.batches.cancel(batch.id);
    expect(['cancelling', 'cancelled']).toContain(cancelled.status);
    const final = await poll(batch.id, (b) => b.status === 'cancelled');
    const completed = final.request_counts!.completed;
    expect(completed).toBeGreaterThanOrEqual(10);
    expect(completed).toBeLessThan(400);
    const out = (await (await client.files.content(final.output_file_id!)).text()).trim().split('\n');
    expect(out).toHaveLength(completed);
    const rows = await query<{ n: number }>(gw.db.url, `select count(*)::int as n from ai.requests where batch_id = $1 and status in ('queued', 'running')`, [batch.id]);
    expect(rows[0]!.n).toBe(0);
  }, 180_000);

  it('an /v1/embeddings batch: each line what POST /v1/embeddings gives for the same body', async () => {
    const bodies = [
      { model: 'minilm', input: 'the first text' },
      { model: 'text-embedding-3-small', input: ['two', 'texts'], encoding_format: 'base64' },
      { model: 'minilm', input: 'cut short', dimensions: 8 },
      { model: 'minilm', input: [] },
      { model: 'tiny', input: 'a chat model' },
    ];
    const lines = bodies.map((body, i) => JSON.stringify({ custom_id: `e-${i}`, method: 'POST', url: '/v1/embeddings', body }));
    const file = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n')), 'e.jsonl'), purpose: 'batch' });
    const batch = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/embeddings', completion_window: '24h' });
    const done = await poll(batch.id, (b) => b.status !== 'in_progress');
    expect(done).toMatchObject({ status: 'completed', request_counts: { total: 5, completed: 3, failed: 2 } });
    const out = new Map((await (await client.files.content(done.output_file_id!)).text()).trim().split('\n').map((l) => JSON.parse(l)).map((o) => [o.custom_id, o.response]));
    for (const i of [0, 1, 2]) {
      const response = out.get(`e-${i}`);
      expect(response.status_code).toBe(200);
      // The same body through the interactive endpoint (raw JSON, as the line's body is sent).
      const direct = await fetch(`${gw.baseURL}/embeddings`, { method: 'POST', headers: { authorization: `Bearer ${gw.key}`, 'content-type': 'application/json' }, body: JSON.stringify(bodies[i]) }).then((r) => r.json());
      expect(response.body).toEqual(direct);
    }
    expect(out.get('e-2').body.data[0].embedding).toHaveLength(8);
    const errs = new Map((await (await client.files.content(done.error_file_id!)).text()).trim().split('\n').map((l) => JSON.parse(l)).map((o) => [o.custom_id, o.response]));
    expect(errs.get('e-3')).toMatchObject({ status_code: 400, body: { error: { param: 'input' } } });
    expect(errs.get('e-4')).toMatchObject({ status_code: 404, body: { error: { code: 'model_not_found' } } });
    const rows = await query<{ endpoint: string; priority: number }>(gw.db.url, `select distinct endpoint, priority from ai.requests where batch_id = $1`, [batch.id]);
    expect(rows).toEqual([{ endpoint: 'embeddings', priority: 1 }]);
    await expect(client.batches.create({ input_file_id: file.id, endpoint: '/v1/completions', completion_window: '24h' })).rejects.toMatchObject({ status: 400, param: 'endpoint' });
  });

  it('files and batches belong to the key that made them; bad input is a 400', async () => {
    const other = (await cli(['keys', 'create', '--name', 'other'], { DATABASE_URL: gw.db.url })).stdout.trim();
    const stranger = new OpenAI({ baseURL: gw.baseURL, apiKey: other, maxRetries: 0 });
    const file = await client.files.create({ file: await toFile(Buffer.from(line(1)), 'one.jsonl'), purpose: 'batch' });
    const batch = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
    for (const attempt of [() => stranger.files.retrieve(file.id), () => stranger.files.content(file.id), () => stranger.files.delete(file.id),
      () => stranger.batches.retrieve(batch.id), () => stranger.batches.cancel(batch.id),
      () => stranger.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' })]) {
      await expect(attempt()).rejects.toMatchObject({ status: 404 });
    }
    await expect(client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '1h' as '24h' })).rejects.toMatchObject({ status: 400, param: 'completion_window' });
    await expect(client.files.create({ file: await toFile(Buffer.from('x'), 'x.jsonl'), purpose: 'fine-tune' })).rejects.toMatchObject({ status: 400, param: 'purpose' });
    expect(await client.files.delete(file.id)).toMatchObject({ id: file.id, deleted: true });
    await expect(client.files.retrieve(file.id)).rejects.toMatchObject({ status: 404 });
  });
});
