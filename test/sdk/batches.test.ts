import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BadRequestError, NotFoundError, OpenSourceAI, type BatchObject } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startWorker, type Proc } from '../helpers/stack.js';

/**
 * `client.files` and `client.batches` of the Postgres-direct SDK: only Postgres and a real worker
 * (no `serve`); the batch runs on the same queue and is answered by the same worker code.
 */
let db: TestDatabase;
let worker: Proc;
let client: OpenSourceAI;
let sql: pg.Client;

const line = (i: number, body: Record<string, unknown> = {}) =>
  JSON.stringify({ custom_id: `req-${i}`, method: 'POST', url: '/v1/chat/completions', body: { model: 'tiny', messages: [{ role: 'user', content: `question ${i}` }], max_tokens: 3, temperature: 0, ...body } });

async function poll(id: string, ms = 90_000): Promise<BatchObject> {
  const until = Date.now() + ms;
  for (;;) {
    const b = await client.batches.retrieve(id);
    if (['completed', 'failed', 'expired', 'cancelled'].includes(b.status)) return b;
    if (Date.now() > until) throw new Error(`batch ${id} still ${b.status}: ${JSON.stringify(b.request_counts)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  // The worker's reaper, which runs the batch sweep, ticks every second with this.
  process.env.SWITCHYARD_WORKER_TIMEOUT = '2';
  db = await createTestDatabase();
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url })).code).toBe(0);
  // Registered, served by no worker: its lines wait until the batch expires.
  expect((await cli(['models', 'add', 'idle', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url })).code).toBe(0);
  worker = await startWorker(db.url, ['--models', 'tiny']);
  client = new OpenSourceAI(db.url);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});

afterAll(async () => {
  await client?.close();
  await sql?.end();
  await worker?.stop();
  await db?.drop();
  delete process.env.SWITCHYARD_WORKER_TIMEOUT;
});

describe('SDK files and batches', () => {
  it('a small batch from a JSONL string runs to completion; its output file is read back', async () => {
    const lines = [...Array.from({ length: 6 }, (_, i) => line(i)), line(6, { max_tokens: 0 }), line(7, { model: 'nope' })];
    const file = await client.files.create({ file: lines.join('\n') + '\n', purpose: 'batch' });
    expect(file).toMatchObject({ object: 'file', purpose: 'batch', filename: 'upload.jsonl', bytes: Buffer.byteLength(lines.join('\n') + '\n') });
    expect(await client.files.retrieve(file.id)).toEqual(file);
    expect(await (await client.files.content(file.id)).text()).toBe(lines.join('\n') + '\n');
    expect((await client.files.list({ purpose: 'batch' })).data.map((f) => f.id)).toContain(file.id);

    const batch = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h', metadata: { job: 'sdk' } });
    expect(batch).toMatchObject({ object: 'batch', status: 'in_progress', request_counts: { total: 8 }, metadata: { job: 'sdk' } });
    const done = await poll(batch.id);
    expect(done).toMatchObject({ status: 'completed', request_counts: { total: 8, completed: 6, failed: 2 } });

    const out = (await (await client.files.content(done.output_file_id!)).text()).trim().split('\n').map((l) => JSON.parse(l));
    expect(out.map((o) => o.custom_id).sort()).toEqual(['req-0', 'req-1', 'req-2', 'req-3', 'req-4', 'req-5']);
    for (const o of out) {
      expect(o.response.status_code).toBe(200);
      expect(o.response.body).toMatchObject({ object: 'chat.completion', model: 'tiny', usage: { completion_tokens: 3 } });
      // The line's answer is its request row's: same text, same id.
      const row = (await sql.query(`select id, output from ai.requests where id = $1`, [o.response.request_id])).rows[0];
      expect(o.response.body.id).toBe(`chatcmpl-${row.id.replaceAll('-', '')}`);
      expect(o.response.body.choices[0].message.content).toBe(row.output.completion.choices[0].message.content);
    }
    const errs = (await (await client.files.content(done.error_file_id!)).text()).trim().split('\n').map((l) => JSON.parse(l));
    const byId = new Map(errs.map((e) => [e.custom_id, e.response]));
    expect(byId.get('req-6')).toMatchObject({ status_code: 400, body: { error: { param: 'max_tokens' } } });
    expect(byId.get('req-7')).toMatchObject({ status_code: 404, body: { error: { code: 'model_not_found' } } });

    // A finished batch cannot be cancelled.
    const refused = await client.batches.cancel(batch.id).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(BadRequestError);
    expect(refused).toMatchObject({ status: 400, code: 'batch_not_cancellable' });
  });

  it('a Blob upload, list pages, cancel, delete, and errors as the HTTP API gives them', async () => {
    const file = await client.files.create({ file: new File([line(1) + '\n' + line(2)], 'two.jsonl'), purpose: 'batch' });
    expect(file.filename).toBe('two.jsonl');
    const a = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
    const b = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
    const cancelled = await client.batches.cancel(b.id);
    expect(['cancelling', 'cancelled']).toContain(cancelled.status);
    expect(['cancelled']).toContain((await poll(b.id)).status);
    const first = await client.batches.list({ limit: 1 });
    expect(first.data).toHaveLength(1);
    expect(first.has_more).toBe(true);
    const all: string[] = [];
    for await (const x of await client.batches.list({ limit: 1 })) all.push(x.id);
    expect(all).toEqual(expect.arrayContaining([a.id, b.id]));
    expect(new Set(all).size).toBe(all.length);
    await poll(a.id);

    await expect(client.batches.list({ limit: 0 })).rejects.toMatchObject({ status: 400, param: 'limit' });
    await expect(client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '1h' })).rejects.toMatchObject({ status: 400, param: 'completion_window' });
    await expect(client.files.create({ file: 'x', purpose: 'fine-tune' })).rejects.toMatchObject({ status: 400, param: 'purpose' });
    await expect(client.files.create({ file: '', purpose: 'batch' })).rejects.toMatchObject({ status: 400, code: 'empty_file' });
    expect(await client.files.del(file.id)).toEqual({ id: file.id, object: 'file', deleted: true });
    const gone = await client.files.retrieve(file.id).catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(NotFoundError);
    await expect(client.files.content(file.id)).rejects.toMatchObject({ status: 404 });
    await expect(client.batches.retrieve('batch_nope')).rejects.toMatchObject({ status: 404 });
  });

  it('batches nobody reads are finalized, and expired past their window, by the workers\' sweep', async () => {
    const file = await client.files.create({ file: [line(1), line(2)].join('\n'), purpose: 'batch' });
    const idle = await client.files.create({ file: [line(1, { model: 'idle' }), line(2, { model: 'idle' })].join('\n'), purpose: 'batch' });
    const done = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
    const stuck = await client.batches.create({ input_file_id: idle.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
    // Not read again: only SQL looks at the rows from here on.
    await sql.query(`update ai.batches set expires_at = now() where id = $1`, [stuck.id]);
    const until = Date.now() + 30_000;
    let rows: { id: string; status: string; output_file_id: string | null; error_file_id: string | null }[] = [];
    while (Date.now() < until) {
      rows = (await sql.query(`select id, status, output_file_id, error_file_id from ai.batches where id = any($1) order by id = $2 desc`, [[done.id, stuck.id], done.id])).rows;
      if (rows.every((r) => r.status !== 'in_progress' && r.status !== 'cancelling')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(rows[0]).toMatchObject({ status: 'completed', error_file_id: null });
    expect(rows[0]!.output_file_id).toMatch(/^file-/);
    expect(rows[1]).toMatchObject({ status: 'expired', output_file_id: null });
    const expired = await client.batches.retrieve(stuck.id);
    expect(expired.expired_at).not.toBeNull();
    const errs = (await (await client.files.content(expired.error_file_id!)).text()).trim().split('\n').map((l) => JSON.parse(l));
    expect(errs.map((e) => e.error?.code)).toEqual(['batch_cancelled', 'batch_cancelled']);
    const out = (await (await client.files.content(rows[0]!.output_file_id!)).text()).trim().split('\n');
    expect(out).toHaveLength(2);
  });
});
