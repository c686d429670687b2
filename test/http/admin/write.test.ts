import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../../../src/http/app.js';
import { openDatabase, type Database } from '../../../src/db/pool.js';
import { createKey } from '../../../src/db/keys-repo.js';
import { createTestDatabase, type TestDatabase } from '../../helpers/db.js';
import { FakeEngine } from '../../helpers/fake-app.js';

/**
 * The admin write API (keys, teams, models) on the real app and a real database: each operation
 * works for an admin key and is a 403 for a model key, and bad input is a 4xx in OpenAI's envelope.
 */
let tdb: TestDatabase;
let database: Database;
let app: FastifyInstance;
let adminKey: string;
let modelKey: string;

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = openDatabase(tdb.url, { max: 2, applicationName: 'admin-write-test' });
  app = buildApp({ engine: new FakeEngine(), database, auth: true, listening: () => true });
  adminKey = (await createKey(database.db, 'ops', null, { admin: true })).key;
  modelKey = (await createKey(database.db, 'app', null)).key;
});

afterAll(async () => {
  await app?.close();
  await database?.close();
  await tdb?.drop();
});

const call = (method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE', url: string, payload?: unknown, key = adminKey) =>
  app.inject({ method, url, headers: { authorization: `Bearer ${key}` }, ...(payload !== undefined ? { payload: payload as object } : {}) });

const OPS: [string, string, unknown?][] = [
  ['POST', '/admin/keys', { name: 'x' }], ['GET', '/admin/keys'], ['GET', '/admin/keys/00000000-0000-0000-0000-000000000000'],
  ['PATCH', '/admin/keys/00000000-0000-0000-0000-000000000000', {}], ['POST', '/admin/keys/00000000-0000-0000-0000-000000000000/revoke'],
  ['DELETE', '/admin/keys/00000000-0000-0000-0000-000000000000'], ['POST', '/admin/keys/00000000-0000-0000-0000-000000000000/rotate'],
  ['POST', '/admin/teams', { name: 'x' }], ['GET', '/admin/teams'], ['GET', '/admin/teams/x'], ['PATCH', '/admin/teams/x', {}], ['DELETE', '/admin/teams/x'],
  ['GET', '/admin/models'], ['POST', '/admin/models', { name: 'x', task: 'chat', source: 'x' }], ['DELETE', '/admin/models/x'],
  ['PUT', '/admin/models/x/defaults', { defaults: {} }],
];

it('refuses a model key on every write operation (403 admin_required), and changes nothing', async () => {
  for (const [method, url, body] of OPS) {
    const res = await call(method as 'GET', url, body, modelKey);
    expect(res.statusCode, `${method} ${url}`).toBe(403);
    expect(res.json().error.code).toBe('admin_required');
  }
  const [{ n }] = (await database.pool.query(`select (select count(*) from ai.teams) + (select count(*) from ai.models) + (select count(*) from ai.api_keys) - 2 as n`)).rows;
  expect(n).toBe(0);
});

describe('teams', () => {
  it('create, list, get, update, delete; duplicates and unknown fields refused', async () => {
    const created = await call('POST', '/admin/teams', { name: 'research', budget_tokens: 1000, budget_period: 'day', rpm_limit: 10 });
    expect(created.statusCode).toBe(201);
    const team = created.json();
    expect(team).toMatchObject({ object: 'team', name: 'research', budget_tokens: 1000, budget_period: 'day', rpm_limit: 10, tpm_limit: null, spend: { reserved: 0, spent: 0 } });
    expect((await call('POST', '/admin/teams', { name: 'research' })).json().error).toMatchObject({ code: 'team_exists', param: 'name' });
    expect((await call('POST', '/admin/teams', { name: 'r2', budget: 5 })).json().error).toMatchObject({ code: 'unknown_field', param: 'budget' });
    expect((await call('POST', '/admin/teams', { name: 'r2', rpm_limit: -1 })).statusCode).toBe(400);
    expect((await call('POST', '/admin/teams', { name: 'r2', budget_period: 'week' })).json().error.param).toBe('budget_period');
    expect((await call('POST', '/admin/teams', [1])).json().error.message).toMatch(/JSON object/);
    expect((await call('GET', '/admin/teams')).json().data.map((t: { name: string }) => t.name)).toEqual(['research']);
    expect((await call('GET', `/admin/teams/${team.id}`)).json().name).toBe('research');
    const updated = await call('PATCH', '/admin/teams/research', { tpm_limit: 500, rpm_limit: null });
    expect(updated.json()).toMatchObject({ tpm_limit: 500, rpm_limit: null, budget_tokens: 1000 });
    expect((await call('GET', '/admin/teams/nope')).statusCode).toBe(404);
    // A team with an active key cannot go (its keys would lose their team budget silently).
    const key = await call('POST', '/admin/keys', { name: 'member', team: 'research' });
    expect(key.json().team_id).toBe(team.id);
    const refused = await call('DELETE', '/admin/teams/research');
    expect(refused.statusCode).toBe(409);
    expect(refused.json().error.code).toBe('team_in_use');
    await call('POST', `/admin/keys/${key.json().id}/revoke`);
    expect((await call('DELETE', '/admin/teams/research')).json()).toEqual({ id: team.id, object: 'team', deleted: true });
    expect((await call('GET', '/admin/teams')).json().data).toEqual([]);
  });
});

describe('keys', () => {
  it('create with scopes, admin flag, team and limits; list; update; rotate; revoke', async () => {
    await call('POST', '/admin/teams', { name: 'ops-team' });
    const res = await call('POST', '/admin/keys', { name: 'svc', models: ['tiny'], admin: false, team: 'ops-team', budget_tokens: 5000, budget_period: 'month', rpm_limit: 60, tpm_limit: 10000 });
    expect(res.statusCode).toBe(201);
    const k = res.json();
    expect(k.key).toMatch(/^sy-/);
    expect(k).toMatchObject({ object: 'api_key', name: 'svc', models: ['tiny'], admin: false, budget_tokens: 5000, rpm_limit: 60, tpm_limit: 10000, revoked_at: null });
    // The secret works at once, and only it is stored hashed.
    expect((await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${k.key}` } })).statusCode).toBe(200);
    const listed = (await call('GET', '/admin/keys')).json().data;
    expect(JSON.stringify(listed)).not.toContain(k.key);
    expect(listed.find((x: { id: string }) => x.id === k.id)).toMatchObject({ name: 'svc', prefix: k.key.slice(0, 10) });
    expect((await call('POST', '/admin/keys', { name: 'y', team: 'no-such-team' })).json().error).toMatchObject({ code: 'team_not_found', param: 'team' });
    expect((await call('POST', '/admin/keys', { name: 'y', models: 'tiny' })).json().error.param).toBe('models');
    expect((await call('POST', '/admin/keys', { name: 'y', admin: 'yes' })).json().error.param).toBe('admin');

    const patched = await call('PATCH', `/admin/keys/${k.id}`, { budget_tokens: null, team: null, models: null });
    expect(patched.json()).toMatchObject({ budget_tokens: null, team_id: null, models: null, rpm_limit: 60 });
    expect((await call('PATCH', `/admin/keys/${k.id}`, { admin: true })).json().error).toMatchObject({ code: 'unknown_field', param: 'admin' });

    const rotated = (await call('POST', `/admin/keys/${k.id}/rotate`)).json();
    expect(rotated.id).toBe(k.id);
    expect(rotated.key).not.toBe(k.key);
    await new Promise((r) => setTimeout(r, 1100)); // the key cache's second
    expect((await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${k.key}` } })).statusCode).toBe(401);
    expect((await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${rotated.key}` } })).statusCode).toBe(200);

    const revoked = await call('DELETE', `/admin/keys/${k.id}`);
    expect(revoked.json().revoked_at).toBeGreaterThan(0);
    expect((await call('POST', `/admin/keys/${k.id}/revoke`)).json().error.code).toBe('key_revoked');
    expect((await call('POST', `/admin/keys/${k.id}/rotate`)).json().error.code).toBe('key_revoked');
    expect((await call('GET', '/admin/keys/not-a-uuid')).statusCode).toBe(404);
    expect((await call('GET', '/admin/keys/00000000-0000-0000-0000-000000000000')).json().error.code).toBe('not_found');
  });

  it('an admin key can create another admin key', async () => {
    const res = (await call('POST', '/admin/keys', { name: 'ops2', admin: true })).json();
    expect((await call('GET', '/admin/keys', undefined, res.key)).statusCode).toBe(200);
  });
});

describe('models', () => {
  it('add, list, set defaults, remove; bad input is a 400 naming the field', async () => {
    const res = await call('POST', '/admin/models', { name: 'chatty', task: 'chat', source: 'org/chatty', aliases: ['gpt-4o-mini'], dtype: 'q8', context_length: 4096, tool_call_format: 'hermes' });
    expect(res.statusCode).toBe(201);
    expect(res.json()).toMatchObject({ id: 'chatty', object: 'model', task: 'chat', aliases: ['gpt-4o-mini'], dtype: 'q8', context_length: 4096 });
    expect((await call('POST', '/admin/models', { name: 'other', task: 'chat', source: 'x', aliases: ['gpt-4o-mini'] })).json().error.code).toBe('model_exists');
    expect((await call('POST', '/admin/models', { name: 'other', task: 'speech', source: 'x' })).json().error.param).toBe('task');
    expect((await call('POST', '/admin/models', { name: '-bad', task: 'chat', source: 'x' })).json().error.param).toBe('name');
    expect((await call('POST', '/admin/models', { name: 'other', task: 'chat', source: 'x', tool_call_format: 'nope' })).json().error.param).toBe('tool_call_format');
    expect((await call('GET', '/admin/models')).json().data.map((m: { id: string }) => m.id)).toEqual(['chatty']);
    const d = await call('PUT', '/admin/models/chatty/defaults', { defaults: { temperature: 0.2 } });
    expect(d.json().defaults).toEqual({ temperature: 0.2 });
    expect((await call('PUT', '/admin/models/chatty/defaults', { defaults: [1] })).statusCode).toBe(400);
    expect((await call('PUT', '/admin/models/nope/defaults', { defaults: {} })).statusCode).toBe(404);
    expect((await call('DELETE', '/admin/models/chatty')).json()).toEqual({ id: 'chatty', object: 'model', deleted: true });
    expect((await call('DELETE', '/admin/models/chatty')).json().error.code).toBe('model_not_found');
  });
});
