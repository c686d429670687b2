import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../../helpers/db.js';
import { cacheKey, modelFingerprint } from '../../../src/worker/embedding/cache-key.js';
import type { ModelSpec } from '../../../src/worker/models-source.js';

/** The worker's cache keys against SQL's (ai.embed reads the cache without a worker). */
let db: TestDatabase;
let sql: pg.Client;

const spec: ModelSpec = {
  name: 'e', task: 'embedding', source: 'org/mini-ünï', revision: 'main', dtype: 'fp32', device: 'cpu',
  chatTemplate: null, contextLength: null, pooling: 'mean', normalize: true, truncate: false,
};

beforeAll(async () => {
  db = await createTestDatabase();
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});

afterAll(async () => {
  await sql?.end();
  await db?.drop();
});

async function register(s: ModelSpec): Promise<void> {
  await sql.query(
    `insert into ai.models (name, task, source, revision, dtype, pooling, normalize, truncate, context_length)
     values ($1, 'embedding', $2, $3, $4, $5, $6, $7, $8)
     on conflict (name) do update set source = $2, revision = $3, dtype = $4, pooling = $5, normalize = $6, truncate = $7, context_length = $8`,
    [s.name, s.source, s.revision, s.dtype, s.pooling, s.normalize, s.truncate, s.contextLength],
  );
}

const sqlKey = async (model: string, input: unknown): Promise<Buffer> =>
  (await sql.query<{ k: Buffer }>('select ai.embedding_input_hash($1, $2::jsonb) as k', [model, JSON.stringify(input)])).rows[0]!.k;

describe('embedding cache keys', () => {
  it('SQL and the worker compute the same fingerprint and keys', async () => {
    for (const s of [spec, { ...spec, name: 'e2', contextLength: 128, truncate: true, pooling: 'cls' as const }]) {
      await register(s);
      const [row] = (await sql.query<{ f: Buffer }>('select ai.embedding_model_fingerprint($1) as f', [s.name])).rows;
      expect(row!.f.toString('hex')).toBe(modelFingerprint(s).toString('hex'));
      for (const input of ['hello', 'naïve ☃ 𝄞', 'ids:[1, 2]', '[1, 2]', [1, 2], [0], [49151, 7, 300]]) {
        expect((await sqlKey(s.name, input)).toString('hex'), JSON.stringify(input)).toBe(cacheKey(modelFingerprint(s), input).toString('hex'));
      }
    }
  });

  it('a text never shares a key with token ids', async () => {
    await register(spec);
    const f = modelFingerprint(spec);
    // The old scheme hashed ids [1, 2] as the text 'ids:[1, 2]'.
    for (const text of ['ids:[1, 2]', '[1, 2]']) {
      expect(cacheKey(f, text).equals(cacheKey(f, [1, 2]))).toBe(false);
      expect((await sqlKey(spec.name, text)).equals(await sqlKey(spec.name, [1, 2]))).toBe(false);
    }
  });

  it('a key changes with every part of the model configuration', () => {
    const base = cacheKey(modelFingerprint(spec), 'hello').toString('hex');
    const variants: Partial<ModelSpec>[] = [
      { source: 'org/other' }, { revision: 'v2' }, { dtype: 'q8' }, { pooling: 'cls' },
      { normalize: false }, { truncate: true }, { contextLength: 256 },
      // Length prefixes: moving characters between fields is a different configuration.
      { source: 'org/mini-ünïmain', revision: '' },
    ];
    const keys = variants.map((v) => cacheKey(modelFingerprint({ ...spec, ...v }), 'hello').toString('hex'));
    expect(new Set([base, ...keys]).size).toBe(variants.length + 1);
  });

  it('an unknown model has no key (nothing in the cache can match)', async () => {
    const [row] = (await sql.query<{ k: Buffer | null }>(`select ai.embedding_input_hash('nobody', '"x"'::jsonb) as k`)).rows;
    expect(row!.k).toBeNull();
  });
});
