import { randomBytes, randomUUID } from 'node:crypto';
import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * LISTEN and NOTIFY need no privilege at all: a role granted nothing can listen to and send on
 * every channel Switchyard uses. It must learn nothing from them (notifications carry ids, never
 * content) and change nothing with them (every payload is a hint to read rows).
 */
const CHANNELS = ['ai_events', 'ai_cancel', 'ai_embed', 'ai_models', 'jobs:insert', 'worker:migrate'];
const role = `switchyard_nogrant_${randomBytes(4).toString('hex')}`;

let db: TestDatabase;
const procs: Proc[] = [];
let key: string;
let admin: pg.Client;
const intruders: pg.Client[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  await admin.query(`create role ${role} login`);
  const env = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env)).code).toBe(0);
  expect((await cli(['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed'], env)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'notify'], env)).stdout.trim();
});

afterAll(async () => {
  await Promise.all(intruders.map((c) => c.end().catch(() => {})));
  await Promise.all(procs.map((p) => p.stop()));
  await db?.drop();
  await admin?.query(`drop role if exists ${role}`).catch(() => {});
  await admin?.end();
});

async function connectAsIntruder(): Promise<pg.Client> {
  const u = new URL(db.url);
  u.username = role;
  u.password = '';
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  intruders.push(c);
  return c;
}

it('a role with no grants hears no content and cannot steer a stream, cancel it or stop a worker', async () => {
  const [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  procs.push(serve, worker);
  const client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });

  const ear = await connectAsIntruder();
  const mouth = await connectAsIntruder();
  // It really has no grants: the rows are out of its reach.
  await expect(ear.query('select count(*) from ai.request_events')).rejects.toThrow(/permission denied/);
  const heard: { channel: string; payload: string }[] = [];
  ear.on('notification', (m) => heard.push({ channel: m.channel, payload: m.payload ?? '' }));
  for (const c of CHANNELS) await ear.query(`listen ${pg.escapeIdentifier(c)}`);

  const prompt = 'tell me a secret story about zebras';
  const stream = await client.chat.completions
    .create({ model: 'tiny', messages: [{ role: 'user', content: prompt }], max_tokens: 1500, temperature: 0, stream: true })
    .withResponse();
  const id = stream.response.headers.get('x-request-id')!;
  // The serve's own events channel (named on its requests): the role can listen and send there
  // too, if it learns or guesses the name.
  const [{ listener }] = (await query<{ listener: string }>(db.url, 'select listener from ai.requests where id = $1', [id])) as [{ listener: string }];
  await ear.query(`listen ${pg.escapeIdentifier(listener)}`);

  // While it streams: forged events, cancellations, wake-ups and shutdown orders, on every channel.
  const sent = new Set<string>();
  const notify = async (channel: string, payload: string) => {
    sent.add(payload);
    await mouth.query('select pg_notify($1, $2)', [channel, payload]);
  };
  const injected = 'INJECTED TEXT';
  const forged = (seq: number) => [
    ...['ai_events', listener].flatMap((channel) => [
      [channel, id],
      [channel, `${id}:${seq}`],
      [channel, `${id}:999999999`],
      [channel, `${randomUUID()}:0 ${id}:${seq} ${id}`],
      [channel, `${randomUUID()}:0`],
      [channel, 'junk'],
      [channel, 'x'.repeat(7000)],
      [channel, `${id}:1 `.repeat(180)],
      // Shaped as sealed events, but sealed with no key the worker holds: hints at most.
      [channel, `${id}:${seq}:${randomBytes(28).toString('base64url')}:${Buffer.from(JSON.stringify([{ type: 'delta', choices: [{ index: 0, text: injected, finishReason: null }], at: 0 }])).toString('base64url')}`],
      [channel, JSON.stringify({ r: id, s: seq, d: { type: 'delta', choices: [{ index: 0, text: injected, finishReason: null }], at: 0 } })],
      [channel, JSON.stringify({ r: id, s: seq + 1, d: { type: 'done', choices: [{ index: 0, finishReason: 'stop' }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } } })],
      [channel, JSON.stringify({ r: id, s: seq, d: { type: 'error', status: 500, error: { message: 'forged', type: 'server_error', param: null, code: 'forged' } } })],
    ]),
    ['ai_cancel', id],
    ['ai_cancel', randomUUID()],
    ['ai_cancel', 'junk'],
    ['ai_embed', 'minilm'],
    ['ai_embed', 'tiny'],
    ['ai_embed', 'no-such-model'],
    ['ai_embed', ''],
    ['ai_models', 'no-such-model'],
    ['ai_models', 'junk'],
    ['jobs:insert', JSON.stringify({ count: 1_000_000 })],
    ['jobs:insert', 'junk'],
    ['worker:migrate', JSON.stringify({ migrationNumber: 999_999, breaking: true })],
    ['worker:migrate', 'junk'],
  ];
  let text = '';
  let finish: string | null = null;
  let chunks = 0;
  // Rounds of forgeries run back to back for as long as the stream flows (not awaited in the
  // loop: the stream keeps flowing). How many chunks carry the 1,500 tokens depends on how fast
  // the worker decodes, so the rounds are counted, not the chunks.
  let streaming = true;
  let rounds = 0;
  const forging = (async () => {
    while (streaming) {
      for (const [channel, payload] of forged(chunks)) await notify(channel!, payload!);
      if (streaming) rounds++;
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  try {
    for await (const chunk of stream.data) {
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      chunks++;
    }
  } finally {
    streaming = false;
  }
  await forging;
  expect(rounds).toBeGreaterThanOrEqual(2); // whole rounds of forgeries landed while it streamed

  const [row] = await query<{ status: string; output: { choices: { text: string }[] }; usage: { completion_tokens: number } }>(
    db.url,
    'select status, output, usage from ai.requests where id = $1',
    [id],
  );
  expect(row!.status).toBe('completed');
  expect(text).toBe(row!.output.choices[0]!.text);
  expect(text).not.toContain(injected);
  expect(finish).toBe('length');
  expect(row!.usage.completion_tokens).toBe(1500);

  // The worker still takes jobs (the forged 'breaking migration' did not stop it for good),
  // embeds, and is alive.
  const next = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'again' }], max_tokens: 3 });
  expect(next.choices[0]!.finish_reason).toBe('length');
  const emb = await client.embeddings.create({ model: 'minilm', input: 'still here' });
  expect(emb.data[0]!.embedding.length).toBeGreaterThan(0);
  expect(worker.exited()).toBe(false);
  expect(worker.output()).toMatch(/job runner shut down unasked/);
  expect(serve.exited()).toBe(false);
  // No model was loaded for a name only a notification gave.
  expect(worker.output()).not.toContain('no-such-model');

  // What the role heard: ids (and sequence numbers) or model names, never text.
  await new Promise((r) => setTimeout(r, 200));
  const genuine = heard.filter((h) => !sent.has(h.payload));
  // Events are announced on the serve's channel only.
  expect(genuine.some((h) => h.channel === listener)).toBe(true);
  expect(genuine.some((h) => h.channel === 'ai_events')).toBe(false);
  const words = [prompt, ...row!.output.choices[0]!.text.split(/\s+/).filter((w) => w.length >= 4 && !/^[0-9a-f-]+$/.test(w))];
  // Items on the serve's channel: `<id>:<seq>`, or events sealed with the request's secret
  // (`<id>:<seq>:<seal>:<ciphertext>`, src/engine/notice.ts), which read as random bytes.
  const item = /^([0-9a-f-]{36})(:\d+)?(?::[A-Za-z0-9_-]{38}:([A-Za-z0-9_-]+))?$/;
  let sealed = 0;
  for (const h of genuine) {
    let plain = h.payload;
    if (h.channel === listener) {
      plain = h.payload.split(' ').map((it) => {
        const m = item.exec(it);
        expect(m, it.slice(0, 80)).not.toBeNull();
        if (m![3] !== undefined) {
          sealed++;
          const bytes = Buffer.from(m![3], 'base64url').toString('latin1');
          for (const clear of ['"type"', 'delta', 'choices', 'usage']) expect(bytes).not.toContain(clear);
        }
        return `${m![1]}${m![2] ?? ''}`;
      }).join(' ');
    } else if (h.channel === 'ai_cancel') expect(h.payload).toMatch(/^[0-9a-f-]{36}$/);
    else if (h.channel === 'ai_embed' || h.channel === 'ai_models') expect(['tiny', 'minilm']).toContain(h.payload);
    for (const w of words) expect(plain).not.toContain(w);
  }
  // The stream's events did travel sealed (and the forged items above, unsealed or sealed
  // without the key, put nothing into it).
  expect(sealed).toBeGreaterThan(0);
  // And it still shuts down cleanly (its restarted runners included).
  await worker.stop();
  expect([worker.child.exitCode, worker.child.signalCode]).toEqual([0, null]);
}, 120_000);
