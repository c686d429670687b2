import { sql } from 'kysely';
import type { Db } from '../db/pool.js';
import type { TeamRow } from '../db/types.js';
import { ApiError, errors } from '../protocol/errors.js';
import { rateWindowSeconds } from '../engine/admission.js';
import { asBody, LIMIT_FIELDS, limitsPatch, only, text, UUID } from './input.js';

/** Teams: the admin API's /admin/teams and the CLI's `teams` (the same functions). */

export interface Spend {
  period_start: string | null;
  reserved: number;
  spent: number;
  window_requests: number;
  window_tokens: number;
}

export interface TeamObject {
  id: string;
  object: 'team';
  name: string;
  created_at: number;
  budget_tokens: number | null;
  budget_period: string;
  rpm_limit: number | null;
  tpm_limit: number | null;
  /** The current period's and rate window's counts (sql/074_admission.sql). */
  spend: Spend;
}

/** A key's or team's counts as they stand now (zeros for a period or window that has rolled over). */
export async function spendOf(db: Db, subject: string, period: string): Promise<Spend> {
  const r = await sql<Spend>`select period_start, reserved, spent, window_requests, window_tokens
                               from ai.spend_of(${subject}::uuid, ${period}, make_interval(secs => ${rateWindowSeconds()}))`.execute(db);
  const s = r.rows[0]!;
  return { ...s, period_start: s.period_start ? new Date(s.period_start).toISOString() : null };
}

async function toObject(db: Db, t: TeamRow): Promise<TeamObject> {
  return {
    id: t.id, object: 'team', name: t.name, created_at: Math.floor(new Date(t.created_at).getTime() / 1000),
    budget_tokens: t.budget_tokens, budget_period: t.budget_period, rpm_limit: t.rpm_limit, tpm_limit: t.tpm_limit,
    spend: await spendOf(db, t.id, t.budget_period),
  };
}

const duplicate = (name: string) => new ApiError(409, `A team named '${name}' exists.`, 'invalid_request_error', 'team_exists', 'name');

/** A team by id or name; 404 when none. */
export async function findTeam(db: Db, ref: string): Promise<TeamRow> {
  const row = await db.selectFrom('ai.teams').selectAll()
    .where((eb) => (UUID.test(ref) ? eb.or([eb('id', '=', ref), eb('name', '=', ref)]) : eb('name', '=', ref)))
    .executeTakeFirst();
  if (!row) throw errors.notFound(`No such team: ${ref}`);
  return row;
}

export async function createTeam(db: Db, input: unknown): Promise<TeamObject> {
  const body = asBody(input);
  only(body, ['name', ...LIMIT_FIELDS]);
  const name = text(body, 'name', true);
  try {
    const row = await db.insertInto('ai.teams').values({ name, ...limitsPatch(body) }).returningAll().executeTakeFirstOrThrow();
    return await toObject(db, row);
  } catch (err) {
    if ((err as { code?: string }).code === '23505') throw duplicate(name);
    throw err;
  }
}

export async function listTeams(db: Db): Promise<{ object: 'list'; data: TeamObject[] }> {
  const rows = await db.selectFrom('ai.teams').selectAll().orderBy('created_at').execute();
  return { object: 'list', data: await Promise.all(rows.map((r) => toObject(db, r))) };
}

export async function getTeam(db: Db, ref: string): Promise<TeamObject> {
  return toObject(db, await findTeam(db, ref));
}

/** Renames a team or changes its limits; a new limit applies to the next admission. */
export async function updateTeam(db: Db, ref: string, input: unknown): Promise<TeamObject> {
  const body = asBody(input);
  only(body, ['name', ...LIMIT_FIELDS]);
  const team = await findTeam(db, ref);
  const patch = { ...(body.name !== undefined ? { name: text(body, 'name', true) } : {}), ...limitsPatch(body) };
  if (Object.keys(patch).length === 0) return toObject(db, team);
  try {
    const row = await db.updateTable('ai.teams').set(patch).where('id', '=', team.id).returningAll().executeTakeFirstOrThrow();
    return await toObject(db, row);
  } catch (err) {
    if ((err as { code?: string }).code === '23505') throw duplicate(patch.name!);
    throw err;
  }
}

/**
 * Deletes a team that no active key belongs to (deleting one that has some would silently lift
 * their team budget: move or revoke them first). Its requests keep their rows, without the team.
 */
export async function deleteTeam(db: Db, ref: string): Promise<{ id: string; object: 'team'; deleted: true }> {
  const team = await findTeam(db, ref);
  const r = await sql<{ id: string }>`
    with gone as (
      delete from ai.teams t where t.id = ${team.id}
         and not exists (select from ai.api_keys k where k.team_id = t.id and k.revoked_at is null)
      returning t.id
    ), counts as (delete from ai.spend s using gone where s.subject = gone.id)
    select id from gone`.execute(db);
  if (r.rows.length === 0) {
    throw new ApiError(409, `Team '${team.name}' still has active keys: move them to another team or revoke them first.`, 'invalid_request_error', 'team_in_use');
  }
  return { id: team.id, object: 'team', deleted: true };
}
