import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, until, type Proc } from '../helpers/stack.js';

/**
 * Resumable chat-completions streams (issue 16, our extension): every SSE frame carries `id:`;
 * a client that lost its stream reconnects to GET /v1/chat/completions/{id}?stream=true with
 * Last-Event-ID (or starting_after) and gets exactly the frames it had not seen, from the stored
 * events and then live, from any serve process.
 */
let db: TestDatabase;
let a: Proc & { url: string };
let b: Proc & { url: string };
let worker: Proc;
let key: string;
let other: string;

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], e)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'mine'], e)).stdout.trim();
  other = (await cli(['keys', 'create', '--name', 'theirs'], e)).stdout.trim();
  [a, b, worker] = await Promise.all([startServe(db.url), startServe(db.url), startWorker(db.url)]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop(), worker?.stop()]);
  await db?.drop();
});

interface Frame {
  id: string | null;
  data: string;
}

/** Reads SSE frames; stops (and drops the connection) after `limit` frames. */
async function frames(res: Response, limit = Infinity, abort?: AbortController): Promise<Frame[]> {
  const out: Frame[] = [];
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut: number;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      if (block.startsWith(':')) continue;
      const id = /^id: (.*)$/m.exec(block)?.[1] ?? null;
      out.push({ id, data: /^data: (.*)$/m.exec(block)![1]! });
      if (out.length >= limit) {
        abort?.abort();
        await reader.cancel().catch(() => {});
        return out;
      }
    }
  }
  return out;
}

const headers = (k: string, extra: Record<string, string> = {}) => ({ authorization: `Bearer ${k}`, 'content-type': 'application/json', ...extra });
const body = JSON.stringify({
  model: 'tiny',
  messages: [{ role: 'user', content: 'Tell me a long story.' }],
  // Long enough to be still running when the reader is cut: the tiny model makes 150 tokens in
  // well under a second on a quiet machine.
  max_tokens: 1800,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});

it('a stream cut after N frames and resumed with Last-Event-ID on another serve gets exactly the rest', async () => {
  const abort = new AbortController();
  const live = await fetch(`${a.url}/v1/chat/completions`, { method: 'POST', headers: headers(key, { 'x-switchyard-resumable': 'true' }), body, signal: abort.signal });
  expect(live.status).toBe(200);
  const requestId = live.headers.get('x-request-id')!;
  const seen = await frames(live, 6, abort);
  expect(seen.map((f) => f.id)).toEqual(['0', '1', '2', '3', '4', '5']);
  const wire = JSON.parse(seen[0]!.data).id as string;

  // Resumed on B while the generation still runs (it was not cancelled by the disconnect): 1,800
  // tokens take seconds here, the six frames came with the first flushes.
  const [during] = await query<{ status: string }>(db.url, 'select status from ai.requests where id = $1', [requestId]);
  expect(during!.status).toBe('running');
  const resumed = await fetch(`${b.url}/v1/chat/completions/${wire}?stream=true`, { headers: headers(key, { 'last-event-id': '5' }) });
  expect(resumed.status).toBe(200);
  const rest = await frames(resumed);
  expect(rest.at(-1)).toEqual({ id: null, data: '[DONE]' });
  expect(rest[0]!.id).toBe('6');
  const [row] = await query<{ status: string }>(db.url, 'select status from ai.requests where id = $1', [requestId]);
  expect(row!.status).toBe('completed');

  // The whole stream replayed from the start equals what the two readers saw together, frame for frame.
  const whole = await frames(await fetch(`${b.url}/v1/chat/completions/${wire}?stream=true`, { headers: headers(key) }));
  expect([...seen, ...rest]).toEqual(whole);
  const chunks = whole.slice(0, -1).map((f) => JSON.parse(f.data));
  expect(chunks.at(-1).usage.completion_tokens).toBeGreaterThan(6);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  const [out] = await query<{ output: { choices: { text: string }[] } }>(db.url, 'select output from ai.requests where id = $1', [requestId]);
  expect(text).toBe(out!.output.choices[0]!.text);

  // starting_after=N is the same as Last-Event-ID: N.
  const after = await frames(await fetch(`${a.url}/v1/chat/completions/${wire}?stream=true&starting_after=5`, { headers: headers(key) }));
  expect(after).toEqual(rest);
});

it('without the opt-in a stream carries no ids (as OpenAI sends it), and a disconnect still cancels the generation', async () => {
  const abort = new AbortController();
  const live = await fetch(`${a.url}/v1/chat/completions`, { method: 'POST', headers: headers(key), body, signal: abort.signal });
  const requestId = live.headers.get('x-request-id')!;
  const seen = await frames(live, 3, abort);
  expect(seen.map((f) => f.id)).toEqual([null, null, null]);
  await until('the request to be cancelled', async () => (await query<{ status: string }>(db.url, 'select status from ai.requests where id = $1', [requestId]))[0]?.status === 'cancelled');
  // Resuming it replays what was made, then says it was cancelled.
  const wire = JSON.parse(seen[0]!.data).id as string;
  const replay = await frames(await fetch(`${b.url}/v1/chat/completions/${wire}?stream=true`, { headers: headers(key) }));
  expect(replay.at(-2)!.data).toContain('cancelled');
});

it("another key's stream is a 404, as an unknown id; bad resume parameters are 400s", async () => {
  const res = await fetch(`${a.url}/v1/chat/completions`, { method: 'POST', headers: headers(key, { 'x-switchyard-resumable': 'true' }), body });
  const wire = JSON.parse((await frames(res))[0]!.data).id as string;
  for (const [url, k] of [
    [`${b.url}/v1/chat/completions/${wire}?stream=true`, other],
    [`${b.url}/v1/chat/completions/chatcmpl-00000000000000000000000000000000?stream=true`, key],
    [`${b.url}/v1/chat/completions/nonsense?stream=true`, key],
  ] as const) {
    const r = await fetch(url, { headers: headers(k) });
    expect(r.status).toBe(404);
    expect(((await r.json()) as any).error.type).toBe('invalid_request_error');
  }
  const notStreamed = await fetch(`${a.url}/v1/chat/completions`, { method: 'POST', headers: headers(key), body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }) });
  const id = ((await notStreamed.json()) as any).id as string;
  expect((await fetch(`${b.url}/v1/chat/completions/${id}?stream=true`, { headers: headers(key) })).status).toBe(404);
  const bad = await fetch(`${b.url}/v1/chat/completions/${wire}?stream=true`, { headers: headers(key, { 'last-event-id': 'x' }) });
  expect(bad.status).toBe(400);
  expect(((await bad.json()) as any).error.param).toBe('Last-Event-ID');
  expect((await fetch(`${b.url}/v1/chat/completions/${wire}`, { headers: headers(key) })).status).toBe(400);
  expect((await fetch(`${b.url}/v1/chat/completions/${wire}?stream=true`)).status).toBe(401);
  // HEAD answers the headers without running a stream for nobody.
  const head = await fetch(`${b.url}/v1/chat/completions/${wire}?stream=true`, { method: 'HEAD', headers: headers(key) });
  expect(head.status).toBe(200);
  expect(head.headers.get('content-type')).toContain('text/event-stream');
});
