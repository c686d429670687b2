import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errors } from '../../src/protocol/errors.js';
import { FakeEngine, fakeApp } from '../helpers/fake-app.js';
import { KEYED_ROOT_ROUTES, spellings, V1_ROUTES } from '../helpers/url-spellings.js';

/**
 * Auth is decided on the route a request reached, never on how its URL was spelled: every
 * spelling of every /v1 route is sent without a key to the real app over a fake engine. Sent
 * to an app with auth off first, it shows whether the spelling reaches a handler at all (the
 * engine is asked something); with auth on the answer must then be 401, and otherwise 401 or
 * 404, and the engine is never asked anything.
 */
let open: { app: FastifyInstance; engine: FakeEngine };
let closed: { app: FastifyInstance; engine: FakeEngine };
const routes: string[] = [];

beforeAll(async () => {
  const make = (auth: boolean) => {
    const engine = new FakeEngine();
    return { engine, app: fakeApp(engine, { auth }) };
  };
  open = make(false);
  closed = make(true);
  // The /v1 scope registers its routes when the app loads: every one of them is seen here.
  closed.app.addHook('onRoute', (r) => {
    for (const m of [r.method].flat()) routes.push(`${m} ${r.url}`);
  });
  await Promise.all([open.app.ready(), closed.app.ready()]);
});

afterAll(async () => {
  await Promise.all([open?.app.close(), closed?.app.close()]);
});

const MISSING_KEY = errors.unauthenticated().toBody();
/** Anthropic's routes answer in Anthropic's envelope; a spelling that misses them meets /v1's. */
const ANTHROPIC_MISSING_KEY = { type: 'error', error: { type: 'authentication_error', message: errors.unauthenticated().message } };
const missingKeyBody = (route: string, reaches: boolean) => (reaches && route.startsWith('/v1/messages') ? ANTHROPIC_MISSING_KEY : MISSING_KEY);

describe('auth on the routed path', () => {
  it('the matrix covers every /v1 route the app has', () => {
    const v1 = routes.filter((r) => r.split(' ')[1]!.startsWith('/v1') || KEYED_ROOT_ROUTES.includes(r.split(' ')[1]!)).sort();
    expect(v1).toEqual([...new Set(V1_ROUTES.map((r) => `${r.method} ${r.route}`))].sort());
  });

  it('every spelling of every /v1 route needs a key, and the engine is never asked', async () => {
    const problems: string[] = [];
    const reached: string[] = [];
    let sent = 0;
    for (const route of V1_ROUTES) {
      for (const url of spellings(route.path)) {
        const request = { method: route.method as 'GET', url, ...(route.body ? { payload: route.body as object } : {}) };
        const before = open.engine.calls.length;
        const served = await open.app.inject(request);
        const reaches = open.engine.calls.length > before || (served.statusCode >= 200 && served.statusCode < 300);
        if (reaches) reached.push(`${route.method} ${url}`);
        const res = await closed.app.inject(request);
        sent++;
        const what = `${route.method} ${url} -> ${res.statusCode}`;
        if (reaches ? res.statusCode !== 401 : ![401, 404].includes(res.statusCode)) problems.push(`${what} (reaches a handler: ${reaches})`);
        else if (res.statusCode === 401 && route.method !== 'HEAD' && JSON.stringify(res.json()) !== JSON.stringify(missingKeyBody(route.route, reaches))) problems.push(`${what} body ${res.body}`);
      }
    }
    expect(problems).toEqual([]);
    expect(closed.engine.calls).toEqual([]);
    // The spellings are not vacuous: many reach the handlers, the percent-encoded prefix among them.
    expect(sent).toBeGreaterThan(500);
    expect(reached.length).toBeGreaterThan(200);
    for (const r of ['GET /v%31/models', 'GET /%761/models', 'POST /%76%31/%63%68%61%74/%63%6F%6D%70%6C%65%74%69%6F%6E%73', 'POST /v%31/completions', 'POST /v%31/embeddings', 'GET /v%31/models/tiny-chat',
      'POST /v%31/responses', 'GET /v%31/responses/resp_0123456789abcdef0123456789abcdef', 'DELETE /v%31/responses/resp_0123456789abcdef0123456789abcdef',
      'POST /v%31/responses/resp_0123456789abcdef0123456789abcdef/cancel', 'GET /v%31/responses/resp_0123456789abcdef0123456789abcdef/input_items',
      'POST /v%31/messages', 'POST /v1/%6Dessages/count_tokens', 'POST /%74okenize', 'POST /%64etokenize']) {
      expect(reached).toContain(r);
    }
  });

  it('x-api-key counts only on the routes that take it (Anthropic\'s), never elsewhere', async () => {
    for (const url of ['/v1/models', '/v1/chat/completions', '/tokenize', '/v%31/models', '/v1/messagesx']) {
      const res = await closed.app.inject({ method: url === '/v1/models' || url === '/v%31/models' ? 'GET' : 'POST', url, headers: { 'x-api-key': 'sk-anything' }, payload: url.startsWith('/v') && url !== '/v1/models' && url !== '/v%31/models' ? {} : undefined });
      expect([401, 404], `${url}: ${res.statusCode}`).toContain(res.statusCode);
      if (res.statusCode === 401) expect(res.json()).toEqual(MISSING_KEY);
    }
    expect(closed.engine.calls).toEqual([]);
  });

  it('an unknown /v1 path needs a key first; /health and /metrics need none', async () => {
    const unknown = await closed.app.inject({ method: 'GET', url: '/v1/nothing' });
    expect(unknown.statusCode).toBe(401);
    expect(unknown.json()).toEqual(MISSING_KEY);
    expect((await closed.app.inject({ method: 'GET', url: '/v2/models' })).statusCode).toBe(404);
    expect((await closed.app.inject({ method: 'GET', url: '/health' })).statusCode).toBe(200);
    expect((await closed.app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(200);
    // With auth off the same unknown path is a 404 in the envelope.
    const off = await open.app.inject({ method: 'GET', url: '/v1/nothing' });
    expect(off.statusCode).toBe(404);
    expect(off.json().error.code).toBe('route_not_found');
  });
});
