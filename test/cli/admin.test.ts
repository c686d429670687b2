import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { buildApp } from '../../src/http/app.js';
import { openDatabase, type Database } from '../../src/db/pool.js';
import { createKey } from '../../src/db/keys-repo.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { FakeEngine } from '../helpers/fake-app.js';
import { cli } from '../helpers/stack.js';

/** The CLI and the admin API run the same operations: what one writes, the other reads back identically. */
let tdb: TestDatabase;
let database: Database;
let app: FastifyInstance;
let adminKey: string;
let env: Record<string, string>;

beforeAll(async () => {
  tdb = await createTestDatabase();
  env = { DATABASE_URL: tdb.url };
  database = openDatabase(tdb.url, { max: 2, applicationName: 'cli-admin-test' });
  app = buildApp({ engine: new FakeEngine(), database, auth: true, listening: () => true });
  adminKey = (await createKey(database.db, 'ops', null, { admin: true })).key;
});

afterAll(async () => {
  await app?.close();
  await database?.close();
  await tdb?.drop();
});

const api = async (method: 'GET' | 'POST', url: string, payload?: object) =>
  (await app.inject({ method, url, headers: { authorization: `Bearer ${adminKey}` }, ...(payload ? { payload } : {}) })).json();

it('teams and keys: the CLI writes what the API reads, and refuses what the API refuses, with the same message', async () => {
  const made = await cli(['teams', 'create', 'research', '--budget', '5000', '--budget-period', 'day', '--rpm', '30', '--json'], env);
  expect(made.code, made.stderr).toBe(0);
  const team = JSON.parse(made.stdout);
  expect(await api('GET', '/admin/teams/research')).toEqual(team);

  const dup = await cli(['teams', 'create', 'research'], env);
  const viaApi = await api('POST', '/admin/teams', { name: 'research' });
  expect(dup.code).toBe(1);
  expect(dup.stderr).toContain(viaApi.error.message);

  const k = await cli(['keys', 'create', '--name', 'svc', '--models', 'a,b', '--team', 'research', '--tpm', '1000', '--json'], env);
  expect(k.code, k.stderr).toBe(0);
  const key = JSON.parse(k.stdout);
  expect(key).toMatchObject({ models: ['a', 'b'], team_id: team.id, tpm_limit: 1000, budget_tokens: null });
  const { key: secret, ...shown } = key;
  expect(await api('GET', `/admin/keys/${key.id}`)).toEqual(shown);
  expect((await cli(['keys', 'list', '--json'], env)).stdout).toBe(`${JSON.stringify((await api('GET', '/admin/keys')).data, null, 2)}\n`);

  const rotated = await cli(['keys', 'rotate', key.id], env);
  expect(rotated.code, rotated.stderr).toBe(0);
  expect(rotated.stdout.trim()).toMatch(/^sy-/);
  expect(rotated.stdout.trim()).not.toBe(secret);
  expect((await cli(['teams', 'delete', 'research'], env)).stderr).toMatch(/still has active keys/);
  expect((await cli(['keys', 'update', key.id, '--team', 'none', '--rpm', '5'], env)).code).toBe(0);
  expect(await api('GET', `/admin/keys/${key.id}`)).toMatchObject({ team_id: null, rpm_limit: 5 });
  expect((await cli(['teams', 'delete', 'research'], env)).code).toBe(0);
  expect((await api('GET', '/admin/teams')).data).toEqual([]);
}, 120_000);

it('models: defaults set by the CLI are what the API lists', async () => {
  await api('POST', '/admin/models', { name: 'chatty', task: 'chat', source: 'org/chatty' });
  const set = await cli(['models', 'defaults', 'chatty', '{"temperature":0.3}'], env);
  expect(set.code, set.stderr).toBe(0);
  const listed = JSON.parse((await cli(['models', 'list', '--json'], env)).stdout);
  expect(listed).toEqual((await api('GET', '/admin/models')).data);
  expect(listed[0].defaults).toEqual({ temperature: 0.3 });
  const bad = await cli(['models', 'defaults', 'chatty', '[1]'], env);
  expect(bad.code).toBe(2);
}, 60_000);
