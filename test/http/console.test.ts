import type { FastifyInstance } from 'fastify';
import { readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { inject } from 'vitest';
import { buildApp } from '../../src/http/app.js';
import { openDatabase, type Database } from '../../src/db/pool.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { FakeEngine } from '../helpers/fake-app.js';
import { ensureConsole, sourceHash } from '../../scripts/build-console.mjs';

/**
 * The console's static files as serve sends them, from the build the test setup made: the right
 * content types, a strict CSP on every answer, hashed assets cached for good and the page never,
 * and nothing but the build's own file names reachable.
 */
let tdb: TestDatabase;
let database: Database;
let app: FastifyInstance;
let bare: FastifyInstance;
const dir = inject('consoleDir' as never) as string;

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = openDatabase(tdb.url, { max: 2, applicationName: 'console-test' });
  app = buildApp({ engine: new FakeEngine(), database, auth: true, listening: () => true, consoleDir: dir });
  bare = buildApp({ engine: new FakeEngine(), database, auth: true, listening: () => true });
});

afterAll(async () => {
  await app?.close();
  await bare?.close();
  await database?.close();
  await tdb?.drop();
});

const CSP = /default-src 'none'.*script-src 'self'.*style-src 'self'.*connect-src 'self'.*frame-ancestors 'none'/;

it('serves the page without a key, with a strict CSP, never cached, and no inline script', async () => {
  const redirect = await app.inject({ method: 'GET', url: '/console' });
  expect(redirect.statusCode).toBe(308);
  expect(redirect.headers.location).toBe('/console/');
  const page = await app.inject({ method: 'GET', url: '/console/' });
  expect(page.statusCode).toBe(200);
  expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
  expect(page.headers['content-security-policy']).toMatch(CSP);
  expect(page.headers['content-security-policy']).not.toMatch(/unsafe-inline|unsafe-eval|\*/);
  expect(page.headers['cache-control']).toBe('no-cache');
  expect(page.headers['x-content-type-options']).toBe('nosniff');
  // Every <script> has a src (the CSP would block an inline one anyway), and nothing is fetched from elsewhere.
  expect(page.body).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
  expect(page.body).not.toMatch(/(src|href)="(https?:)?\/\//);
  const again = await app.inject({ method: 'GET', url: '/console/', headers: { 'if-none-match': page.headers.etag as string } });
  expect(again.statusCode).toBe(304);
});

it('serves each hashed asset with its type and a year of caching', async () => {
  const names = readdirSync(join(dir, 'assets'));
  expect(names.some((n) => /^app-[A-Z0-9]{8}\.js$/.test(n))).toBe(true);
  expect(names.some((n) => /^app-[A-Z0-9]{8}\.css$/.test(n))).toBe(true);
  for (const name of names) {
    const res = await app.inject({ method: 'GET', url: `/console/assets/${name}` });
    expect(res.statusCode, name).toBe(200);
    const type = { js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', svg: 'image/svg+xml' }[name.split('.').pop()!];
    expect(res.headers['content-type'], name).toBe(type);
    expect(res.headers['cache-control'], name).toBe('public, max-age=31536000, immutable');
    expect(res.headers['content-security-policy'], name).toMatch(CSP);
  }
});

it('reaches no file outside the build, however the name is spelled', async () => {
  for (const url of ['/console/assets/..%2Findex.html', '/console/assets/%2e%2e%2f%2e%2e%2fpackage.json', '/console/assets/../../package.json', '/console/assets/nope.js', '/console/index.html']) {
    const res = await app.inject({ method: 'GET', url });
    expect([404, 400], url).toContain(res.statusCode);
    expect(res.json().error, url).toBeDefined();
  }
});

it('says the console is not built, in the envelope, when serve has none', async () => {
  const res = await bare.inject({ method: 'GET', url: '/console/' });
  expect(res.statusCode).toBe(503);
  expect(res.json().error.message).toMatch(/build-console/);
});

it('keeps an up-to-date build: the folder is named by the sources, and a fresh one is not rebuilt', async () => {
  expect(basename(dir)).toBe(sourceHash());
  const before = statSync(join(dir, 'index.html')).mtimeMs;
  const built: string[] = [];
  expect(await ensureConsole({ log: (m) => built.push(m) })).toBe(dir);
  expect(built).toEqual([]);
  expect(statSync(join(dir, 'index.html')).mtimeMs).toBe(before);
});
