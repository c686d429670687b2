import net from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, type Proc } from '../helpers/stack.js';
import { spellings, V1_ROUTES } from '../helpers/url-spellings.js';

/**
 * Auth on the routed path, over real sockets against a real `switchyard serve`: request lines
 * are written byte for byte, so absolute-form targets, dot segments and doubled slashes reach
 * the server exactly as sent (no client normalises them). No worker runs: a request that got
 * past the key check would be queued, and ai.requests must stay empty.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let key: string;
let port: number;

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const results = await Promise.all([
    cli(['models', 'add', 'tiny-chat', '--task', 'chat', '--source', 'tiny-chat'], env),
    cli(['models', 'add', 'tiny-embed', '--task', 'embedding', '--source', 'tiny-embed'], env),
    cli(['keys', 'create', '--name', 'urls'], env),
  ]);
  for (const r of results) expect(r.code, r.stderr).toBe(0);
  key = results[2]!.stdout.trim();
  serve = await startServe(db.url);
  port = Number(new URL(serve.url).port);
});

afterAll(async () => {
  await serve?.stop();
  await db?.drop();
});

interface Answer {
  status: number;
  body: string;
}

/** Writes one HTTP/1.1 request as given and reads the answer until the server closes. */
function raw(method: string, target: string, opts: { key?: string; body?: unknown }): Promise<Answer> {
  const payload = opts.body === undefined ? '' : JSON.stringify(opts.body);
  const head =
    `${method} ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n` +
    (opts.key ? `Authorization: Bearer ${opts.key}\r\n` : '') +
    (payload ? `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n` : '');
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => socket.destroy(new Error(`no answer to ${method} ${target} after 5 s`)), 5000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (!m) return reject(new Error(`not an HTTP answer to ${method} ${target}: ${JSON.stringify(text.slice(0, 200))}`));
      resolve({ status: Number(m[1]), body: text.slice(text.indexOf('\r\n\r\n') + 4) });
    });
    // Not end(): a half-closed socket may be dropped before an answer that needs a query.
    socket.write(`${head}\r\n${payload}`);
  });
}

/** Whether an answer came from a /v1 handler, not from the router, the parser or the key check (HEAD: no body to tell by). */
const handled = (method: string, a: Answer) =>
  a.status < 300 ||
  (method !== 'HEAD' && ((a.status === 404 && codeOf(a) === 'model_not_found') || (a.status === 400 && !['bad_request', 'invalid_url'].includes(codeOf(a) ?? ''))));

const codeOf = (a: Answer) => {
  try {
    // Anthropic's envelope (/v1/messages) has no code: its error type stands in for it.
    const body = JSON.parse(a.body) as { type?: string; error?: { code?: string; type?: string } };
    return body.type === 'error' ? body.error?.type ?? null : body.error?.code ?? null;
  } catch {
    return null;
  }
};

it('every spelling of every /v1 route, sent as raw bytes without a key, is a 401 (or misses every route)', { timeout: 120_000 }, async () => {
  const cases = V1_ROUTES.flatMap((route) => spellings(route.path).map((target) => ({ route, target })));
  const problems: string[] = [];
  const reached: string[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < cases.length) {
        const { route, target } = cases[next++]!;
        // With the key and an empty body a POST stops at validation (nothing is queued): whether
        // the answer came from a handler says whether the spelling reaches the route.
        const keyed = await raw(route.method, target, { key, ...(route.body ? { body: {} } : {}) });
        const reaches = handled(route.method, keyed);
        if (reaches) reached.push(`${route.method} ${target}`);
        const bare = await raw(route.method, target, route.body ? { body: route.body } : {});
        const what = `${route.method} ${target}: ${bare.status} ${bare.body.slice(0, 120)} (with the key: ${keyed.status} ${codeOf(keyed)})`;
        if (reaches ? bare.status !== 401 : ![400, 401, 404].includes(bare.status)) problems.push(what);
        else if (route.method !== 'HEAD' && bare.status === 401 && !['invalid_api_key', 'authentication_error'].includes(codeOf(bare) ?? '')) problems.push(what);
      }
    }),
  );
  expect(problems).toEqual([]);
  // Not vacuous: the encoded prefix and absolute-form reach the routes on a real server.
  for (const r of ['GET /v%31/models', 'GET http://host/v%31/models', 'POST /%761/embeddings', 'POST /v%31/chat/completions', 'POST /v%31/completions', 'GET /v%31/models/tiny-chat', 'POST /v%31/messages', 'POST /%74okenize']) {
    expect(reached).toContain(r);
  }
  expect(reached.length).toBeGreaterThan(200);
  const rows = await query<{ n: number }>(db.url, 'select count(*)::int as n from ai.requests');
  expect(rows[0]!.n).toBe(0);
  expect(serve.exited()).toBe(false);
});
