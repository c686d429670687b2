import Fastify from 'fastify';
import { expect, it } from 'vitest';
import { sendSse } from '../../src/http/sse.js';
import { errors } from '../../src/protocol/errors.js';

async function* slow(): AsyncGenerator<unknown> {
  yield { n: 1 };
  await new Promise((r) => setTimeout(r, 2300));
  yield { n: 2 };
  throw errors.invalid('boom', 'x');
}

it('keeps an idle stream alive with comments, turns a late error into an error event, and ends with [DONE]', async () => {
  process.env.SWITCHYARD_SSE_KEEPALIVE = '1';
  try {
    const app = Fastify();
    app.get('/s', async (_req, reply) => sendSse(reply, slow()));
    const res = await app.inject({ method: 'GET', url: '/s' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/text\/event-stream/);
    const events = res.body.split('\n\n').filter(Boolean);
    expect(events[0]).toBe('data: {"n":1}');
    expect(events.filter((e) => e === ': keep-alive').length).toBeGreaterThanOrEqual(1);
    expect(events.at(-3)).toBe('data: {"n":2}');
    expect(JSON.parse(events.at(-2)!.slice(6))).toEqual({ error: { message: 'boom', type: 'invalid_request_error', param: 'x', code: null } });
    expect(events.at(-1)).toBe('data: [DONE]');
    await app.close();
  } finally {
    delete process.env.SWITCHYARD_SSE_KEEPALIVE;
  }
});
