import { sql } from 'kysely';
import type { EngineEvent } from '../engine/types.js';
import type { NewStoredResponse, ResponseStore, StoredResponse } from '../serving/response-store.js';
import type { ResponseOutcome } from '../serving/response-events.js';
import { toJsonb } from './jsonb.js';
import type { Db } from './pool.js';

interface Row {
  id: string;
  key_id: string | null;
  previous_id: string | null;
  model: string;
  background: boolean;
  request: StoredResponse['request'];
  input_items: StoredResponse['inputItems'];
  created_at: number;
  status: ResponseOutcome['status'] | null;
  output: ResponseOutcome['output'] | null;
  usage: ResponseOutcome['usage'];
  error: ResponseOutcome['error'];
  incomplete_details: ResponseOutcome['incomplete_details'];
  completed_at: number | null;
  request_status: StoredResponse['requestStatus'];
  request_output: { choices?: { index: number; text?: string; finish_reason?: string }[] } | null;
  request_usage: StoredResponse['requestUsage'];
  request_error: StoredResponse['requestError'];
}

const columns = sql`s.id::text as id, s.key_id::text as key_id, s.previous_id::text as previous_id, s.model, s.background,
  s.request, s.input_items, extract(epoch from s.created_at)::float8 as created_at, s.status, s.output, s.usage, s.error,
  s.incomplete_details, extract(epoch from s.completed_at)::float8 as completed_at,
  r.status as request_status, r.output as request_output, r.usage as request_usage, r.error as request_error`;

function toStored(r: Row): StoredResponse {
  const choice = r.request_output?.choices?.find((c) => c.index === 0);
  return {
    id: r.id,
    keyId: r.key_id,
    previousId: r.previous_id,
    model: r.model,
    background: r.background,
    request: r.request,
    inputItems: r.input_items,
    createdAt: Math.floor(Number(r.created_at)),
    final: r.status
      ? { status: r.status, output: r.output ?? [], usage: r.usage, error: r.error, incomplete_details: r.incomplete_details, completed_at: r.completed_at === null ? null : Math.floor(Number(r.completed_at)) }
      : null,
    requestStatus: r.request_status,
    requestText: typeof choice?.text === 'string' ? choice.text : null,
    requestFinish: choice?.finish_reason === 'length' ? 'length' : choice?.finish_reason === 'stop' ? 'stop' : null,
    requestUsage: r.request_usage,
    requestError: r.request_error,
  };
}

/** Responses in ai.responses (migrations/0016_responses.sql), each seen by the keys of its owner (ai.visible_to_key). */
export class PgResponseStore implements ResponseStore {
  constructor(private readonly db: Db) {}

  async insert(r: NewStoredResponse): Promise<void> {
    await sql`
      insert into ai.responses (id, key_id, db_role, previous_id, model, background, request, input_items, created_at)
      values (${r.id}::uuid, ${r.keyId}::uuid, case when ${r.keyId}::uuid is null then current_user end, ${r.previousId}::uuid, ${r.model},
              ${r.background}, ${toJsonb(r.request)}::jsonb, ${toJsonb(r.inputItems)}::jsonb, to_timestamp(${r.createdAt}))`.execute(this.db);
  }

  async find(id: string, keyId: string | null): Promise<StoredResponse | null> {
    const { rows } = await sql<Row>`
      select ${columns} from ai.responses s join ai.requests r on r.id = s.id
       where s.id = ${id}::uuid and ai.visible_to_key(s.key_id, r.team_id, ${keyId}::uuid)`.execute(this.db);
    return rows[0] ? toStored(rows[0]) : null;
  }

  async chain(id: string, keyId: string | null): Promise<StoredResponse[]> {
    // Bounded: a chain is as long as a conversation; a cycle cannot be made (ids are new), but
    // a depth limit costs nothing.
    const { rows } = await sql<Row & { depth: number }>`
      with recursive chain as (
        select s.id, s.previous_id, 0 as depth from ai.responses s join ai.requests r on r.id = s.id
         where s.id = ${id}::uuid and ai.visible_to_key(s.key_id, r.team_id, ${keyId}::uuid)
        union all
        select p.id, p.previous_id, c.depth + 1 from ai.responses p join chain c on p.id = c.previous_id join ai.requests r on r.id = p.id
         where ai.visible_to_key(p.key_id, r.team_id, ${keyId}::uuid) and c.depth < 10000
      )
      select ${columns}, c.depth from chain c join ai.responses s on s.id = c.id join ai.requests r on r.id = s.id
       order by c.depth desc`.execute(this.db);
    return rows.map(toStored);
  }

  async events(id: string, fromSeq: number): Promise<{ events: { seq: number; data: EngineEvent }[]; status: StoredResponse['requestStatus'] | null }> {
    const { rows } = await sql<{ status: StoredResponse['requestStatus']; seq: number | null; data: EngineEvent | null }>`
      select r.status, e.seq, e.data from ai.requests r
        left join ai.request_events e on e.request_id = r.id and e.seq >= ${fromSeq}
       where r.id = ${id}::uuid order by e.seq`.execute(this.db);
    return { status: rows[0]?.status ?? null, events: rows.flatMap((r) => (r.seq === null ? [] : [{ seq: r.seq, data: r.data! }])) };
  }

  async finalize(id: string, o: ResponseOutcome): Promise<void> {
    await sql`
      update ai.responses set status = ${o.status}, output = ${toJsonb(o.output)}::jsonb, usage = ${toJsonb(o.usage)}::jsonb,
             error = ${toJsonb(o.error)}::jsonb, incomplete_details = ${toJsonb(o.incomplete_details)}::jsonb,
             completed_at = case when ${o.completed_at}::float8 is null then null else to_timestamp(${o.completed_at}::float8) end
       where id = ${id}::uuid and status is null`.execute(this.db);
  }

  async delete(id: string, keyId: string | null): Promise<boolean> {
    const { rows } = await sql<{ deleted: boolean }>`select ai.delete_response(${id}::uuid, ${keyId}::uuid) as deleted`.execute(this.db);
    return rows[0]?.deleted === true;
  }
}
