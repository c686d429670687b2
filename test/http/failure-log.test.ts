import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, beforeEach, expect, it, vi } from 'vitest';
import { FakeEngine, fakeApp } from '../helpers/fake-app.js';

/**
 * A 5xx leaves one JSON line on stderr with the request id the client got, the route, the
 * status and the cause (message and stack), never the credential or the prompt.
 */
let app: FastifyInstance;
let engine: FakeEngine;
let written: string[];

const KEY = 'sy-SecretKeyThatMustNeverBeLogged0123456789';
const PROMPT = 'my very private prompt text';

beforeAll(async () => {
  engine = new FakeEngine();
  app = fakeApp(engine, { auth: false });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
});

beforeEach(() => {
  written = [];
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    written.push(String(chunk));
    return true;
  });
});

afterEach(() => {
  vi.restoreAllMocks();
  engine.failWith = null;
  engine.failAfterQueue = null;
});

const chat = () =>
  app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { authorization: `Bearer ${KEY}` },
    payload: { model: 'tiny-chat', messages: [{ role: 'user', content: PROMPT }] },
  });

const failures = () =>
  written
    .flatMap((l) => l.split('\n'))
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === 'request failed');

it('a failure before queueing: logged with the request id the client got, route, status and stack', async () => {
  engine.failWith = new Error('engine exploded');
  const res = await chat();
  expect(res.statusCode).toBe(500);
  expect(res.json().error.code).toBe('internal_error');
  const id = res.headers['x-request-id'];
  expect(id).toMatch(/^[0-9a-f-]{36}$/);
  const lines = failures();
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatchObject({ level: 'error', request_id: id, method: 'POST', route: '/v1/chat/completions', status: 500, error: { message: 'engine exploded' } });
  expect((lines[0]!.error as { stack: string }).stack).toMatch(/engine exploded\n\s+at /);
  const all = written.join('');
  expect(all).not.toContain(KEY);
  expect(all).not.toContain(PROMPT);
});

it('a failure after queueing carries that request id; a credential quoted by the error is cut out', async () => {
  engine.failWith = new Error(`the driver echoed Bearer ${KEY} back`);
  const first = await chat();
  expect(first.statusCode).toBe(500);
  expect((failures()[0]!.error as { message: string }).message).toMatch(/^the driver echoed .*\[redacted\] back$/);
  engine.failWith = null;
  engine.failAfterQueue = 'worker blew up';
  written = [];
  const res = await chat();
  expect(res.statusCode).toBe(500);
  const id = res.headers['x-request-id'];
  expect(id).toMatch(/^00000000-0000-4000-8000-/);
  expect(failures()).toEqual([expect.objectContaining({ request_id: id, route: '/v1/chat/completions', status: 500, error: expect.objectContaining({ message: 'worker blew up' }) })]);
  expect(written.join('')).not.toContain(KEY);
});
