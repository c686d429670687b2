import type pg from 'pg';
import type { EngineEvent } from '../engine/types.js';
import type { EventPublisher } from './publisher.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { toJsonb, toJsonbOrNull } from '../db/jsonb.js';

export interface ClaimedRow {
  input: unknown;
  params: unknown;
}

/** Marks the request running; null when it is already finished or cancelled (nothing to do). */
export async function claim(pool: pg.Pool, requestId: string, workerId: string): Promise<ClaimedRow | null> {
  // A job that fails on a database blip would stay locked by graphile-worker (it cannot record
  // the failure either): wait the blip out instead.
  const r = await retryWhileUnavailable(() => pool.query<ClaimedRow>(
    `update ai.requests set status = 'running', started_at = clock_timestamp(), worker = $2
      where id = $1 and status in ('queued', 'running')
      returning input, params`,
    [requestId, workerId],
  ));
  return r.rows[0] ?? null;
}

/**
 * Writes the outcome and its final event in one statement (so one transaction and one round
 * trip), unless the request was cancelled meanwhile: then neither happens.
 */
export async function finish(
  pool: pg.Pool,
  publisher: EventPublisher,
  status: 'completed' | 'failed',
  fields: { output?: unknown; usage?: unknown; error?: unknown },
  event: EngineEvent,
): Promise<void> {
  const seq = publisher.nextSeq();
  // Retried through a database restart: the update matches nothing once an earlier try committed.
  await retryWhileUnavailable(() => pool.query(
    `with done as (
       update ai.requests
          set status = $2, output = $3, usage = $4, error = $5,
              first_token_at = $6, finished_at = clock_timestamp()
        where id = $1 and status = 'running'
       returning id)
     select ai.publish_event(id, $7, $8) from done`,
    [publisher.requestId, status, toJsonbOrNull(fields.output), toJsonbOrNull(fields.usage), toJsonbOrNull(fields.error), publisher.firstTokenAt, seq, toJsonb(event)],
  ));
}
