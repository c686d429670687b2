import { createKey, listKeys, revokeKey, rotateKey, updateKey } from '../db/keys-repo.js';
import type { Db } from '../db/pool.js';
import type { ApiKeyRow } from '../db/types.js';
import { errors } from '../protocol/errors.js';
import { asBody, flag, LIMIT_FIELDS, limitsPatch, names, only, text, UUID } from './input.js';
import { findTeam, spendOf, type Spend } from './teams.js';

/** API keys: the admin API's /admin/keys and the CLI's `keys` (the same functions). */

export interface KeyObject {
  id: string;
  object: 'api_key';
  name: string;
  /** The key's first characters, to recognise it; the key itself is shown once, at creation or rotation. */
  prefix: string;
  models: string[] | null;
  admin: boolean;
  team_id: string | null;
  budget_tokens: number | null;
  budget_period: string;
  rpm_limit: number | null;
  tpm_limit: number | null;
  created_at: number;
  revoked_at: number | null;
  spend: Spend;
}

const seconds = (d: Date | string | null) => (d ? Math.floor(new Date(d).getTime() / 1000) : null);

export async function keyObject(db: Db, k: ApiKeyRow): Promise<KeyObject> {
  return {
    id: k.id, object: 'api_key', name: k.name, prefix: k.prefix, models: k.models, admin: k.admin, team_id: k.team_id,
    budget_tokens: k.budget_tokens, budget_period: k.budget_period, rpm_limit: k.rpm_limit, tpm_limit: k.tpm_limit,
    created_at: seconds(k.created_at)!, revoked_at: seconds(k.revoked_at), spend: await spendOf(db, k.id, k.budget_period),
  };
}

/** `team`: a team's id or name, or null (none). */
async function teamId(db: Db, body: Record<string, unknown>): Promise<string | null | undefined> {
  if (body.team === undefined || body.team === null) return body.team as null | undefined;
  const ref = text(body, 'team', true);
  try {
    return (await findTeam(db, ref)).id;
  } catch {
    throw errors.invalid(`No such team: ${ref}`, 'team', 'team_not_found');
  }
}

const checkId = (id: string) => {
  if (!UUID.test(id)) throw errors.notFound(`No such API key: ${id}`);
};

/** Creates a key; `key` in the answer is the secret, shown this once. */
export async function createApiKey(db: Db, input: unknown): Promise<KeyObject & { key: string }> {
  const body = asBody(input);
  only(body, ['name', 'models', 'admin', 'team', ...LIMIT_FIELDS]);
  const name = text(body, 'name', true);
  const { key, row } = await createKey(db, name, names(body, 'models') ?? null, {
    admin: flag(body, 'admin') ?? false,
    team_id: (await teamId(db, body)) ?? null,
    ...limitsPatch(body),
  });
  return { ...(await keyObject(db, row)), key };
}

export async function listApiKeys(db: Db): Promise<{ object: 'list'; data: KeyObject[] }> {
  return { object: 'list', data: await Promise.all((await listKeys(db)).map((k) => keyObject(db, k))) };
}

async function existing(db: Db, id: string): Promise<ApiKeyRow> {
  checkId(id);
  const row = await db.selectFrom('ai.api_keys').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw errors.notFound(`No such API key: ${id}`);
  return row;
}

export async function getApiKey(db: Db, id: string): Promise<KeyObject> {
  return keyObject(db, await existing(db, id));
}

/** Changes a key's name, models, team or limits (not its admin flag: make a new key for that). */
export async function updateApiKey(db: Db, id: string, input: unknown): Promise<KeyObject> {
  const body = asBody(input);
  only(body, ['name', 'models', 'team', ...LIMIT_FIELDS]);
  await existing(db, id);
  const models = names(body, 'models');
  const team = await teamId(db, body);
  const row = await updateKey(db, id, {
    ...(body.name !== undefined ? { name: text(body, 'name', true) } : {}),
    ...(models !== undefined ? { models } : {}),
    ...(team !== undefined ? { team_id: team } : {}),
    ...limitsPatch(body),
  });
  return keyObject(db, row);
}

/** Revokes a key: every serve refuses it within the key cache's second (http/auth.ts). */
export async function revokeApiKey(db: Db, id: string): Promise<KeyObject> {
  const row = await existing(db, id);
  if (row.revoked_at) throw errors.invalid(`API key ${id} is already revoked.`, null, 'key_revoked');
  await revokeKey(db, id);
  return keyObject(db, await existing(db, id));
}

/**
 * Rotates a key: a new secret for the same key (its id, scopes, team, limits, spend and request
 * history stay); the old secret stops working within the key cache's second.
 */
export async function rotateApiKey(db: Db, id: string): Promise<KeyObject & { key: string }> {
  const row = await existing(db, id);
  if (row.revoked_at) throw errors.invalid(`API key ${id} is revoked; create a new one.`, null, 'key_revoked');
  const { key, row: rotated } = await rotateKey(db, id);
  return { ...(await keyObject(db, rotated)), key };
}
