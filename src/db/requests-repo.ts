import { sql } from 'kysely';
import type { Db } from './pool.js';

export interface NewRequest {
  id: string;
  endpoint: string;
  model: string;
  requestedModel: string;
  input: unknown;
  params: Record<string, unknown>;
  stream: boolean;
  keyId: string | null;
  /** graphile-worker task identifier, e.g. `chat:smollm2`. */
  task: string;
  maxAttempts: number;
  /** The LISTEN channel of the process waiting on the request (its EventHub's); null: none. */
  listener: string | null;
}

/**
 * Records the request and queues its job in one statement, hence one transaction: there is
 * never a job without its row, nor a row without its job.
 */
export async function enqueueRequest(db: Db, r: NewRequest): Promise<void> {
  await sql`
    with job as (
      select (graphile_worker.add_job(${r.task}, json_build_object('request_id', ${r.id}::uuid),
                                      max_attempts => ${r.maxAttempts})).id as job_id
    )
    insert into ai.requests (id, endpoint, model, requested_model, input, params, stream, key_id, job_id, listener)
    select ${r.id}, ${r.endpoint}, ${r.model}, ${r.requestedModel}, ${JSON.stringify(r.input)}::jsonb,
           ${JSON.stringify(r.params)}::jsonb, ${r.stream}, ${r.keyId}, job.job_id, ${r.listener}
      from job
  `.execute(db);
}

export async function cancelRequest(db: Db, id: string): Promise<boolean> {
  const r = await sql<{ cancelled: boolean }>`select ai.cancel_request(${id}::uuid) as cancelled`.execute(db);
  return r.rows[0]?.cancelled ?? false;
}

/** `store: false`: drops the request's text once it has completed or failed (sql/075_store.sql). */
export async function redactRequest(db: Db, id: string): Promise<boolean> {
  const r = await sql<{ redacted: boolean }>`select ai.redact_request(${id}::uuid) as redacted`.execute(db);
  return r.rows[0]?.redacted ?? false;
}
