import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query } from '../helpers/stack.js';

let db: TestDatabase;
let env: Record<string, string>;

beforeAll(async () => {
  db = await createTestDatabase();
  env = { DATABASE_URL: db.url };
});
afterAll(() => db?.drop());

it('models add, list and remove, with aliases that must stay unique', async () => {
  const add = await cli(['models', 'add', 'chatty', '--task', 'chat', '--source', 'org/chatty', '--alias', 'gpt-4o-mini,gpt-3.5-turbo', '--dtype', 'q8', '--context-length', '4096', '--defaults', '{"temperature":0.5}'], env);
  expect(add.code, add.stderr).toBe(0);
  const clash = await cli(['models', 'add', 'other', '--task', 'chat', '--source', 'x', '--alias', 'gpt-4o-mini'], env);
  expect(clash.code).toBe(1);
  expect(clash.stderr).toMatch(/already in use/);
  const shadow = await cli(['models', 'add', 'gpt-3.5-turbo', '--task', 'chat', '--source', 'x'], env);
  expect(shadow.code).toBe(1);

  const listed = JSON.parse((await cli(['models', 'list', '--json'], env)).stdout);
  expect(listed).toHaveLength(1);
  expect(listed[0]).toMatchObject({ name: 'chatty', task: 'chat', source: 'org/chatty', dtype: 'q8', device: 'cpu', aliases: ['gpt-4o-mini', 'gpt-3.5-turbo'], context_length: 4096, defaults: { temperature: 0.5 } });

  const bad = await cli(['models', 'add', 'x', '--task', 'vision', '--source', 'y'], env);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/--task must be one of chat, embedding/);

  expect((await cli(['models', 'remove', 'chatty'], env)).code).toBe(0);
  expect((await cli(['models', 'remove', 'chatty'], env)).code).toBe(2);
  expect((await cli(['models', 'list'], env)).stdout).toMatch(/no models registered/);
});

it('keys create prints the key once and stores only its hash; revoke marks it', async () => {
  const created = await cli(['keys', 'create', '--name', 'ci', '--models', 'a,b'], env);
  expect(created.code, created.stderr).toBe(0);
  const key = created.stdout.trim();
  expect(key).toMatch(/^sy-[A-Za-z0-9_-]{43}$/);
  const rows = await query<{ id: string; key_hash: Buffer; models: string[]; prefix: string }>(db.url, 'select * from ai.api_keys');
  expect(rows).toHaveLength(1);
  expect(JSON.stringify(rows)).not.toContain(key);
  expect(rows[0]!.key_hash).toHaveLength(32);
  expect(rows[0]!.models).toEqual(['a', 'b']);

  const listed = (await cli(['keys', 'list'], env)).stdout;
  expect(listed).toContain(rows[0]!.id);
  expect(listed).not.toContain(key);
  expect((await cli(['keys', 'revoke', rows[0]!.id], env)).code).toBe(0);
  expect((await cli(['keys', 'list'], env)).stdout).toMatch(/revoked/);
});
