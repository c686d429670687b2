import { afterAll, beforeAll, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { FakeEngine, fakeApp } from '../helpers/fake-app.js';

/** /metrics labels only registered model names: client-chosen strings must not add series. */
let app: FastifyInstance;

beforeAll(async () => {
  app = fakeApp(new FakeEngine(), { auth: false });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
});

const series = (text: string, metric: string) => text.split('\n').filter((l) => l.startsWith(`${metric}{`));

it('1000 distinct unknown model names add one label set, not 1000', async () => {
  for (let i = 0; i < 1000; i++) {
    const url = i % 2 ? '/v1/chat/completions' : '/v1/embeddings';
    const payload = i % 2 ? { model: `bogus-${i}`, messages: [{ role: 'user', content: 'hi' }] } : { model: `bogus-${i}`, input: 'x' };
    const res = await app.inject({ method: 'POST', url, payload });
    expect(res.statusCode).toBe(404);
  }
  // A registered model, by name and by alias, is counted under its name.
  for (const model of ['tiny-chat', 'gpt-4o-mini']) {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 } });
    expect(res.statusCode).toBe(200);
  }
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body;
  const requests = series(text, 'switchyard_requests_total');
  expect(requests.filter((l) => l.includes('bogus'))).toEqual([]);
  expect(requests.sort()).toEqual(
    [
      'switchyard_requests_total{endpoint="/v1/chat/completions",model="tiny-chat",status="200"} 2',
      'switchyard_requests_total{endpoint="/v1/chat/completions",model="unknown",status="404"} 500',
      'switchyard_requests_total{endpoint="/v1/embeddings",model="unknown",status="404"} 500',
    ].sort(),
  );
  for (const line of text.split('\n').filter((l) => /model="/.test(l))) expect(line).toMatch(/model="(tiny-chat|tiny-embed|unknown|)"/);
});
