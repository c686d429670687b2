import { sql } from 'kysely';
import type { Db } from './pool.js';
import type { EngineEvent } from '../engine/types.js';
import type { ChatReplayStore, ReplayFields, StoredChat } from '../serving/chat-replay.js';
import type { ToolDefinition } from '../protocol/chat.js';

/** Streamed chat requests in ai.requests, seen by the keys of their owner (ai.visible_to_key, as stored responses). */
export class PgChatReplayStore implements ChatReplayStore {
  constructor(private readonly db: Db) {}

  async find(id: string, keyId: string | null): Promise<StoredChat | null> {
    const { rows } = await sql<{ model: string; requested_model: string; tools: ToolDefinition[] | null; replay: ReplayFields | null }>`
      select model, requested_model, input->'tools' as tools, params->'replay' as replay from ai.requests
       where id = ${id}::uuid and endpoint = 'chat.completions' and stream and ai.visible_to_key(key_id, team_id, ${keyId}::uuid)`.execute(this.db);
    const r = rows[0];
    if (!r || !r.replay || typeof r.replay !== 'object') return null;
    return { id, model: r.model, requestedModel: r.requested_model, tools: Array.isArray(r.tools) ? r.tools : null, replay: r.replay };
  }

  async events(id: string, fromSeq: number): Promise<{ events: { seq: number; data: EngineEvent }[]; status: string | null }> {
    const { rows } = await sql<{ status: string; seq: number | null; data: EngineEvent | null }>`
      select r.status, e.seq, e.data from ai.requests r
        left join ai.request_events e on e.request_id = r.id and e.seq >= ${fromSeq}
       where r.id = ${id}::uuid order by e.seq`.execute(this.db);
    return { status: rows[0]?.status ?? null, events: rows.flatMap((r) => (r.seq === null ? [] : [{ seq: r.seq, data: r.data! }])) };
  }
}
