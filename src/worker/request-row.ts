import type pg from 'pg';
import type { EngineEvent } from '../engine/types.js';
import type { EventPublisher } from './publisher.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { toJsonb, toJsonbOrNull } from '../db/jsonb.js';

export interface ClaimedRow {
  input: unknown;
  params: unknown;
}

/**
 * Marks the request running as this worker's attempt `attempt` (graphile-worker's count): from
 * here on only this attempt may write its events and outcome. Null when it is already finished
 * or cancelled (nothing to do).
 */
export async function claim(pool: pg.Pool, requestId: string, workerId: string, attempt: number): Promise<ClaimedRow | null> {
  // A job that fails on a database blip would stay locked by graphile-worker (it cannot record
  // the failure either): wait the blip out instead.
  const r = await retryWhileUnavailable(() => pool.query<ClaimedRow>(
    `update ai.requests set status = 'running', started_at = clock_timestamp(), worker = $2, attempts = $3
      where id = $1 and status in ('queued', 'running')
      returning input, params`,
    [requestId, workerId, attempt],
  ));
  return r.rows[0] ?? null;
}

/**
 * Writes the outcome and its final event in one statement (so one transaction and one round
 * trip), unless the request was cancelled meanwhile: then neither happens. False when the
 * request is no longer this attempt's (nothing written; see ai.finish_request).
 */
export async function finish(
  pool: pg.Pool,
  publisher: EventPublisher,
  status: 'completed' | 'failed',
  fields: { output?: unknown; usage?: unknown; error?: unknown },
  event: EngineEvent,
): Promise<boolean> {
  const seq = publisher.nextSeq();
  const { requestId, workerId, attempt } = publisher.owner;
  // Retried through a database restart: a retry after an earlier try committed finds the
  // request ended by this attempt, and writes nothing.
  const r = await retryWhileUnavailable(() => pool.query<{ owned: boolean }>(
    'select ai.finish_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) as owned',
    [requestId, workerId, attempt, status, toJsonbOrNull(fields.output), toJsonbOrNull(fields.usage), toJsonbOrNull(fields.error), publisher.firstTokenAt, seq, toJsonb(event)],
  ));
  return r.rows[0]!.owned;
}
