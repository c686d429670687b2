import type pg from 'pg';
import type { EngineEvent } from '../engine/types.js';
import { noticeFor, type EventPublisher } from './publisher.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { toJsonb, toJsonbOrNull } from '../db/jsonb.js';

/** What a worker reads of a request it claimed (ai.claim_chat). */
export interface ClaimedRow {
  input: unknown;
  params: unknown;
  /** False: the waiter wants the whole answer at once, and no deltas are published (publisher.ts). */
  stream: boolean;
}

/**
 * Writes the outcome and the last events in one statement (so one transaction and one round
 * trip): what no flush took yet (the whole text, for a request that does not stream) and the
 * final event. Unless the request was cancelled meanwhile: then nothing is written. False when
 * the request is no longer this attempt's (nothing written; see ai.finish_request).
 */
export async function finish(
  pool: pg.Pool,
  publisher: EventPublisher,
  status: 'completed' | 'failed',
  fields: { output?: unknown; usage?: unknown; error?: unknown },
  event: EngineEvent,
): Promise<boolean> {
  // After any flush carrying earlier events: they must be written first (they need the row
  // 'running' to be accepted), and numbered before these.
  await publisher.settled();
  const events = publisher.closing(event);
  const { requestId, workerId, attempt } = publisher.owner;
  // The waiter takes these from the notification, sealed, without reading them back.
  const notice = noticeFor(publisher.owner, events);
  // Retried through a database restart: a retry after an earlier try committed finds the
  // request ended by this attempt, and writes nothing.
  const r = await retryWhileUnavailable(() => pool.query<{ owned: boolean }>(
    'select ai.finish_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) as owned',
    [requestId, workerId, attempt, status, toJsonbOrNull(fields.output), toJsonbOrNull(fields.usage), toJsonbOrNull(fields.error), publisher.firstTokenAt, events[0]!.seq, toJsonb(events.map((e) => e.data)), notice],
  ));
  return r.rows[0]!.owned;
}
