import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc, until } from '../helpers/stack.js';

/**
 * Who sees a stored response (issue 16: "a key sees only the responses created with keys of its
 * owner"): every key of the team it was made for, the key that made it (also after a rotation:
 * the same key, a new secret), and nobody else: not a key of another team, not another team-less
 * key, not the caller of a serve with auth off. The same for resumable chat-completions streams,
 * and the same set as the team's database role reads under row-level security.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let open: Proc & { url: string };
let worker: Proc;
const secret: Record<string, string> = {};
const keyId: Record<string, string> = {};
const tag = randomBytes(4).toString('hex');
const RED_ROLE = `sy_red_${tag}`;

const client = (name: string, url = serve.url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: secret[name] ?? 'unused', maxRetries: 0 });

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const r = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env);
  expect(r.code, r.stderr).toBe(0);
  for (const t of ['red', 'blue']) expect((await cli(['teams', 'create', t], env)).code).toBe(0);
  for (const [name, team] of [['red1', 'red'], ['red2', 'red'], ['red3', 'red'], ['blue1', 'blue'], ['solo1', null], ['solo2', null]] as const) {
    const k = await cli(['keys', 'create', '--name', name, ...(team ? ['--team', team] : []), '--json'], env);
    expect(k.code, k.stderr).toBe(0);
    const o = JSON.parse(k.stdout) as { id: string; key: string };
    secret[name] = o.key;
    keyId[name] = o.id;
  }
  [serve, open, worker] = await Promise.all([startServe(db.url), startServe(db.url, ['--no-auth']), startWorker(db.url)]);
});

afterAll(async () => {
  await Promise.all([serve?.stop(), open?.stop(), worker?.stop()]);
  await db?.drop();
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  await admin.query(`drop role if exists ${RED_ROLE}`);
  await admin.end();
});

const notFound = { status: 404, code: 'response_not_found' };

/** Every way to reach a stored response by its id; each must be a 404 for `name`. */
async function expectHidden(name: string, id: string, url = serve.url) {
  const c = client(name, url);
  for (const call of [() => c.responses.retrieve(id), () => c.responses.inputItems.list(id), () => c.responses.cancel(id), () => c.responses.delete(id)]) {
    await expect(call(), `${name} on ${id}`).rejects.toMatchObject(notFound);
  }
  await expect(c.responses.create({ model: 'tiny', input: 'x', previous_response_id: id, max_output_tokens: 2 })).rejects.toMatchObject({ status: 404, code: 'previous_response_not_found' });
  const item = (await client(ownerOf.get(id)!, ownerOf.get(id) === 'open' ? open.url : serve.url).responses.inputItems.list(id)).data[0]!.id;
  await expect(c.responses.create({ model: 'tiny', input: [{ type: 'item_reference', id: item }], max_output_tokens: 2 })).rejects.toMatchObject({ status: 404, code: 'item_not_found' });
  const res = await fetch(`${url}/v1/responses/${id}?stream=true`, { headers: name === 'open' ? {} : { authorization: `Bearer ${secret[name]}` } });
  expect(res.status).toBe(404);
  expect(((await res.json()) as { error: { code: string } }).error.code).toBe('response_not_found');
}

/** Who made each response (a key's name, or 'open' for the serve with auth off). */
const ownerOf = new Map<string, string>();
const create = async (name: string, body: OpenAI.Responses.ResponseCreateParamsNonStreaming, url = serve.url) => {
  const r = await client(name, url).responses.create({ model: 'tiny', max_output_tokens: 3, ...body });
  ownerOf.set(r.id, name);
  return r;
};
const requestMessages = async (responseId: string) => {
  const h = responseId.slice('resp_'.length);
  const [row] = await query<{ input: { messages: { role: string; content: string }[] } }>(db.url, 'select input from ai.requests where id = $1', [
    `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`,
  ]);
  return row!.input.messages;
};

describe('stored responses belong to the key’s team', () => {
  let red1First: OpenAI.Responses.Response;

  it('every key of the team reads, lists, chains to, references and deletes what another made', async () => {
    red1First = await create('red1', { input: 'red one speaks' });
    const red2 = client('red2');
    const seen = await red2.responses.retrieve(red1First.id);
    expect(seen).toMatchObject({ id: red1First.id, status: red1First.status, output: red1First.output });
    expect((await red2.responses.inputItems.list(red1First.id)).data).toEqual((await client('red1').responses.inputItems.list(red1First.id)).data);

    // red2 goes on with red1's conversation: the prompt holds red1's turn.
    const second = await create('red2', { input: 'red two answers', previous_response_id: red1First.id });
    const messages = await requestMessages(second.id);
    expect(messages.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    expect(messages[0]!.content).toBe('red one speaks');
    // And red1 sees red2's turn too, and chains on it.
    expect((await client('red1').responses.retrieve(second.id)).previous_response_id).toBe(red1First.id);
    const third = await create('red1', { input: 'red one again', previous_response_id: second.id });
    expect((await requestMessages(third.id)).map((m) => m.content).filter((_, i) => i % 2 === 0)).toEqual(['red one speaks', 'red two answers', 'red one again']);

    // An item of red1's response named by reference from red2.
    const item = (await client('red1').responses.inputItems.list(red1First.id)).data[0]!.id;
    const byRef = await create('red2', { input: [{ type: 'item_reference', id: item }] });
    expect((await requestMessages(byRef.id))[0]!.content).toBe('red one speaks');

    // Deleted by the other key of the team: gone for both.
    const doomed = await create('red1', { input: 'to be deleted' });
    expect(await red2.responses.delete(doomed.id)).toMatchObject({ id: doomed.id, deleted: true });
    await expect(client('red1').responses.retrieve(doomed.id)).rejects.toMatchObject(notFound);
  });

  it('a key of another team, a team-less key and a serve with auth off get a 404 for every route', async () => {
    for (const name of ['blue1', 'solo1']) await expectHidden(name, red1First.id);
    await expectHidden('open', red1First.id, open.url);
    // Still there for its team.
    expect((await client('red2').responses.retrieve(red1First.id)).id).toBe(red1First.id);
  });

  it('a team-less key’s responses are its own: other team-less keys and team keys get a 404', async () => {
    const mine = await create('solo1', { input: 'solo' });
    expect((await client('solo1').responses.retrieve(mine.id)).id).toBe(mine.id);
    for (const name of ['solo2', 'red1', 'blue1']) await expectHidden(name, mine.id);
  });

  it('background: a key of the team streams it again from a sequence number and cancels it; another team cannot', async () => {
    const bg = await client('red1').responses.create({ model: 'tiny', input: 'A long story, please', max_output_tokens: 1500, background: true });
    ownerOf.set(bg.id, 'red1');
    const res = await fetch(`${serve.url}/v1/responses/${bg.id}?stream=true&starting_after=1`, { headers: { authorization: `Bearer ${secret.red2}` } });
    expect(res.status).toBe(200);
    // The first events after 1, then cancelled by red2 (the stream ends with it).
    const reader = res.body!.getReader();
    let text = '';
    while (!/"sequence_number":3\b/.test(text)) {
      const { done, value } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    await reader.cancel();
    expect(text).not.toMatch(/"sequence_number":[01]\b/);
    expect(text).toMatch(/"sequence_number":2\b/);
    await expectHidden('blue1', bg.id);
    const cancelled = await client('red2').responses.cancel(bg.id);
    expect(cancelled.status).toBe('cancelled');
    expect((await client('red1').responses.retrieve(bg.id)).status).toBe('cancelled');
  });

  it('a rotated key keeps its responses: the new secret reads them, the old one is refused', async () => {
    const before = await create('red1', { input: 'before rotation' });
    const old = secret.red1!;
    const r = await cli(['keys', 'rotate', keyId.red1!, '--json'], { DATABASE_URL: db.url });
    expect(r.code, r.stderr).toBe(0);
    secret.red1 = (JSON.parse(r.stdout) as { key: string }).key;
    expect((await client('red1').responses.retrieve(before.id)).id).toBe(before.id);
    const stale = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: old, maxRetries: 0 });
    await until('the old secret to be refused', async () => {
      try {
        await stale.responses.retrieve(before.id);
        return false;
      } catch (err) {
        return (err as { status?: number }).status === 401;
      }
    });
  });

  it('a key moved to another team keeps what it made; what the old team made stays the old team’s', async () => {
    const mover = await create('red3', { input: 'made in red' });
    const stay = await create('red1', { input: 'red stays' });
    const u = await cli(['keys', 'update', keyId.red3!, '--team', 'blue'], { DATABASE_URL: db.url });
    expect(u.code, u.stderr).toBe(0);
    // red3 still made it; red1 still shares the team it was made for; blue1 never did.
    expect((await client('red3').responses.retrieve(mover.id)).id).toBe(mover.id);
    expect((await client('red1').responses.retrieve(mover.id)).id).toBe(mover.id);
    await expectHidden('blue1', mover.id);
    await expectHidden('red3', stay.id);
    // What red3 makes now is blue's.
    const blue = await create('red3', { input: 'made in blue' });
    expect((await client('blue1').responses.retrieve(blue.id)).id).toBe(blue.id);
    await expectHidden('red1', blue.id);
  });

  it("the team's database role reads (row-level security) exactly the responses its keys may see", async () => {
    const su = new pg.Client({ connectionString: db.url });
    await su.connect();
    try {
      await su.query(`create role ${RED_ROLE} login`);
      await su.query(`select ai.grant_team($1, 'red')`, [RED_ROLE]);
    } finally {
      await su.end();
    }
    const u = new URL(db.url);
    u.username = RED_ROLE;
    const rows = await query<{ id: string }>(u.toString(), `select replace(id::text, '-', '') as id from ai.responses order by 1`);
    const byRole = rows.map((r) => `resp_${r.id}`).sort();
    // What red1 (still in red) may retrieve, among every response this file made.
    const all = await query<{ id: string }>(db.url, `select replace(id::text, '-', '') as id from ai.responses`);
    const visible: string[] = [];
    for (const { id } of all) {
      const wire = `resp_${id}`;
      try {
        await client('red1').responses.retrieve(wire);
        visible.push(wire);
      } catch (err) {
        expect((err as { status?: number }).status).toBe(404);
      }
    }
    expect(byRole.length).toBeGreaterThan(3);
    expect(visible.sort()).toEqual(byRole);
  });
});

describe('auth off: responses made without a key', () => {
  it('are read, chained and deleted on a serve with auth off, and are a 404 for every key', async () => {
    const c = client('open', open.url);
    const r = await create('open', { input: 'no key at all' }, open.url);
    expect((await c.responses.retrieve(r.id)).id).toBe(r.id);
    const next = await create('open', { input: 'and again', previous_response_id: r.id }, open.url);
    expect((await requestMessages(next.id)).map((m) => m.content)[0]).toBe('no key at all');
    for (const name of ['red1', 'blue1', 'solo1']) await expectHidden(name, r.id);
    expect(await c.responses.delete(next.id)).toMatchObject({ deleted: true });
    await expect(c.responses.retrieve(next.id)).rejects.toMatchObject(notFound);
  });
});

describe('resumable chat-completions streams belong to the key’s team too', () => {
  const body = JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'Tell me a story.' }], max_tokens: 12, temperature: 0, stream: true });
  const headers = (name: string, extra: Record<string, string> = {}) => ({ ...(name === 'open' ? {} : { authorization: `Bearer ${secret[name]}` }), 'content-type': 'application/json', ...extra });
  const streamed = async (name: string, url = serve.url) => {
    const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: headers(name, { 'x-switchyard-resumable': 'true' }), body });
    expect(res.status).toBe(200);
    const text = await res.text();
    return { text, id: (JSON.parse(/^data: (.*)$/m.exec(text)![1]!) as { id: string }).id };
  };
  const resume = (name: string, id: string, url = serve.url) => fetch(`${url}/v1/chat/completions/${id}?stream=true`, { headers: headers(name) });

  it('another key of the team resumes it frame for frame; other teams, team-less keys and auth off get a 404', async () => {
    const s = await streamed('red1');
    const own = await resume('red1', s.id);
    expect(own.status).toBe(200);
    const whole = await own.text();
    expect(whole).toContain('[DONE]');
    // The whole stream replayed, by the key that made it and by its teammate alike.
    const teammate = await resume('red2', s.id);
    expect(teammate.status).toBe(200);
    expect(await teammate.text()).toBe(whole);
    for (const name of ['blue1', 'solo1']) expect((await resume(name, s.id)).status, name).toBe(404);
    expect((await resume('open', s.id, open.url)).status).toBe(404);

    const solo = await streamed('solo1');
    expect((await resume('solo1', solo.id)).status).toBe(200);
    for (const name of ['solo2', 'red1']) expect((await resume(name, solo.id)).status, name).toBe(404);

    const o = await streamed('open', open.url);
    const replay = await resume('open', o.id, open.url);
    expect(replay.status).toBe(200);
    expect(await replay.text()).toContain('[DONE]');
    expect((await resume('red1', o.id)).status).toBe(404);
  });
});
