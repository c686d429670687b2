import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { FakeEngine, fakeApp } from '../helpers/fake-app.js';

/**
 * A client that goes away cancels every generation its request queued: /v1/completions with
 * a list of prompts queues one per prompt. Real sockets (inject cannot hang up mid-request),
 * over a fake engine whose generations run until cancelled.
 */
let app: FastifyInstance;
let engine: FakeEngine;
let port: number;

beforeAll(async () => {
  engine = new FakeEngine();
  engine.hold = true;
  app = fakeApp(engine, { auth: false });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
});

afterAll(async () => {
  await app?.close();
});

beforeEach(() => {
  engine.pause = null;
  engine.queued.length = 0;
  engine.cancelled.length = 0;
  engine.calls.length = 0;
});

const until = async (what: string, ok: () => boolean, ms = 5000) => {
  for (const end = Date.now() + ms; !ok(); await new Promise((r) => setTimeout(r, 10))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
  }
};

/** Starts a POST and returns a function that hangs up on it. */
function post(path: string, body: unknown): () => void {
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path, headers: { 'content-type': 'application/json' } });
  req.on('error', () => {});
  req.end(JSON.stringify(body));
  return () => req.destroy();
}

const PROMPTS = { model: 'tiny-chat', prompt: ['one', 'two', 'three'], max_tokens: 1000 };

for (const stream of [false, true]) {
  it(`a disconnect cancels every prompt's generation (stream: ${stream})`, async () => {
    const hangUp = post('/v1/completions', { ...PROMPTS, stream });
    await until('three generations', () => engine.queued.length === 3);
    await new Promise((r) => setTimeout(r, 50));
    expect(engine.cancelled).toEqual([]);
    hangUp();
    await until('every generation cancelled', () => engine.queued.every((id) => engine.cancelled.includes(id)));
  });
}

it('a generation queued after the client left is cancelled as it is queued', async () => {
  let release!: () => void;
  engine.pause = new Promise<void>((r) => (release = r));
  const hangUp = post('/v1/completions', PROMPTS);
  await until('the first generate call', () => engine.calls.includes('generate'));
  hangUp();
  await new Promise((r) => setTimeout(r, 100));
  expect(engine.queued).toEqual([]);
  release();
  await until('a generation queued', () => engine.queued.length > 0);
  await until('every generation cancelled', () => engine.queued.every((id) => engine.cancelled.includes(id)));
  // None is left running: the request stopped at the first prompt or cancelled each it queued.
  await new Promise((r) => setTimeout(r, 100));
  expect(engine.queued.filter((id) => !engine.cancelled.includes(id))).toEqual([]);
});
