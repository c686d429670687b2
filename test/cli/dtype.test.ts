import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query } from '../helpers/stack.js';

/** Which dtype `models add` picks without --dtype: int8 on CPU where the model ships it (cli/dtype.ts). */
let db: TestDatabase;
let env: Record<string, string>;

beforeAll(async () => {
  db = await createTestDatabase();
  env = { DATABASE_URL: db.url, SWITCHYARD_MODELS_DIR: modelsDir() };
});
afterAll(() => db?.drop());

async function added(name: string, args: string[], extraEnv: Record<string, string> = {}): Promise<{ dtype: string; stdout: string }> {
  const r = await cli(['models', 'add', name, ...args], { ...env, ...extraEnv });
  expect(r.code, r.stderr).toBe(0);
  const [row] = await query<{ dtype: string }>(db.url, 'select dtype from ai.models where name = $1', [name]);
  return { dtype: row!.dtype, stdout: r.stdout };
}

it('picks q8 for a CPU model that ships onnx/model_quantized.onnx, and says why', { timeout: 120_000 }, async () => {
  const r = await added('tiny', ['--task', 'chat', '--source', 'tiny-chat']);
  expect(r.dtype).toBe('q8');
  expect(r.stdout).toMatch(/dtype q8 \(int8 weights\): the model ships onnx\/model_quantized\.onnx and runs on CPU/);
  // A path source is looked at the same way.
  expect((await added('tiny-path', ['--task', 'chat', '--source', join(modelsDir(), 'tiny-chat')], { SWITCHYARD_MODELS_DIR: '' })).dtype).toBe('q8');
});

// Each `models add` is a process of its own: slow on a loaded machine.
it('keeps fp32 where there is no int8 export, on cuda, and when --dtype says so', { timeout: 180_000 }, async () => {
  const embed = await added('embed', ['--task', 'embedding', '--source', 'tiny-embed']);
  expect(embed.dtype).toBe('fp32');
  expect(embed.stdout).toMatch(/the model ships no onnx\/model_quantized\.onnx/);
  expect((await added('tiny-gpu', ['--task', 'chat', '--source', 'tiny-chat', '--device', 'cuda'])).dtype).toBe('fp32');
  const pinned = await added('tiny-fp32', ['--task', 'chat', '--source', 'tiny-chat', '--dtype', 'fp32']);
  expect(pinned.dtype).toBe('fp32');
  expect(pinned.stdout).toMatch(/dtype fp32 \(--dtype\)/);
});

it('falls back to fp32 when the hub cannot say (offline, or no such repository)', { timeout: 120_000 }, async () => {
  const r = await added('hubby', ['--task', 'chat', '--source', 'switchyard-tests/no-such-model']);
  expect(r.dtype).toBe('fp32');
  expect(r.stdout).toMatch(/could not list the hub repository's files/);
});
