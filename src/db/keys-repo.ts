import { createHash, randomBytes } from 'node:crypto';
import type { Db } from './pool.js';
import type { ApiKeyRow, ApiKeysTable } from './types.js';
import type { Updateable } from 'kysely';

/** What a key may be given besides its name and models (migrations 0040, 0041). */
export interface KeyOptions {
  admin?: boolean;
  team_id?: string | null;
  budget_tokens?: number | null;
  budget_period?: 'day' | 'month' | 'total';
  rpm_limit?: number | null;
  tpm_limit?: number | null;
}

const newSecret = () => KEY_PREFIX + randomBytes(32).toString('base64url');

const KEY_PREFIX = 'sy-';

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

/** Creates a key; the plaintext is returned once and only its hash is stored. */
export async function createKey(
  db: Db,
  name: string,
  models: string[] | null,
  opts: KeyOptions = {},
): Promise<{ key: string; row: ApiKeyRow }> {
  const key = newSecret();
  const row = await db
    .insertInto('ai.api_keys')
    .values({ name, prefix: key.slice(0, 10), key_hash: hashKey(key), models, ...opts, admin: opts.admin ?? false })
    .returningAll()
    .executeTakeFirstOrThrow();
  return { key, row };
}

/** A new secret for an active key, in place: its id, and so its history and spend, stay. */
export async function rotateKey(db: Db, id: string): Promise<{ key: string; row: ApiKeyRow }> {
  const key = newSecret();
  const row = await db
    .updateTable('ai.api_keys')
    .set({ prefix: key.slice(0, 10), key_hash: hashKey(key) })
    .where('id', '=', id)
    .where('revoked_at', 'is', null)
    .returningAll()
    .executeTakeFirstOrThrow();
  return { key, row };
}

export async function updateKey(db: Db, id: string, patch: Omit<Updateable<ApiKeysTable>, 'id' | 'key_hash' | 'prefix'>): Promise<ApiKeyRow> {
  if (Object.keys(patch).length === 0) return db.selectFrom('ai.api_keys').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
  return db.updateTable('ai.api_keys').set(patch).where('id', '=', id).returningAll().executeTakeFirstOrThrow();
}

export function listKeys(db: Db): Promise<ApiKeyRow[]> {
  return db.selectFrom('ai.api_keys').selectAll().orderBy('created_at').execute();
}

export async function revokeKey(db: Db, id: string): Promise<boolean> {
  const r = await db
    .updateTable('ai.api_keys')
    .set({ revoked_at: new Date() })
    .where('id', '=', id)
    .where('revoked_at', 'is', null)
    .executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

export async function countActiveKeys(db: Db): Promise<number> {
  const r = await db
    .selectFrom('ai.api_keys')
    .where('revoked_at', 'is', null)
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .executeTakeFirstOrThrow();
  return Number(r.n);
}

/**
 * Looks a presented key up by its hash. The lookup is an index probe on a SHA-256 digest, so
 * its timing says nothing useful about how close a guess was.
 */
export async function findActiveKey(db: Db, key: string): Promise<ApiKeyRow | undefined> {
  return db
    .selectFrom('ai.api_keys')
    .selectAll()
    .where('key_hash', '=', hashKey(key))
    .where('revoked_at', 'is', null)
    .executeTakeFirst();
}
