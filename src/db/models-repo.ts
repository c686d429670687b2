import { sql } from 'kysely';
import type { Db } from './pool.js';
import type { ModelRow, NewModel } from './types.js';

/** Models answer to their name or any alias. */
export async function findModel(db: Db, nameOrAlias: string): Promise<ModelRow | undefined> {
  return db
    .selectFrom('ai.models')
    .selectAll()
    .where((eb) => eb.or([eb('name', '=', nameOrAlias), eb(sql<string>`${nameOrAlias}`, '=', sql<string>`any(aliases)`)]))
    .executeTakeFirst();
}

export function listModels(db: Db): Promise<ModelRow[]> {
  return db.selectFrom('ai.models').selectAll().orderBy('name').execute();
}

export async function addModel(db: Db, model: NewModel): Promise<ModelRow> {
  return db.insertInto('ai.models').values(model).returningAll().executeTakeFirstOrThrow();
}

export async function removeModel(db: Db, name: string): Promise<boolean> {
  const r = await db.deleteFrom('ai.models').where('name', '=', name).executeTakeFirst();
  return Number(r.numDeletedRows) > 0;
}

export async function countModels(db: Db): Promise<number> {
  const r = await db.selectFrom('ai.models').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
  return Number(r.n);
}
