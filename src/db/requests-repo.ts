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
  maxAttempts: number;
  /** The LISTEN channel of the process waiting on the request (its EventHub's); null: none. */
  listener: string | null;
  /** Refuse (return false, write nothing) when this many requests of the model are queued. */
  queueBound: number;
  /** What the request may use at most, reserved against budgets and charged to tokens-per-minute limits. */
  reservedTokens: number;
  /** The rate limits' window (60: per minute). */
  rateWindowSeconds: number;
  /** The trace the worker continues (W3C traceparent); null: none. */
  traceparent?: string | null;
  /**
   * Wait for the enqueue's commit to reach disk (synchronous commit): for requests acknowledged
   * before their result (a background response's `queued`). Default false: see lightCommit.
   */
  durable?: boolean;
  /** The secret the worker seals the events in its notifications with (engine/notice.ts); absent: none. */
  notifyKey?: Buffer | null;
}

/**
 * The enqueue of a request whose client waits for its result commits without waiting for the
 * WAL flush (synchronous_commit off for that transaction alone: 0.6–2 ms at p50 and 7–13 ms at
 * p99 on this machine's disk). A lost commit can only follow a crash of PostgreSQL itself, and then the
 * client has had no answer (its connection to the gateway fails with the database), so it
 * retries: nothing it was told was lost. The worker's writes already commit this way (pool.ts),
 * and any later synchronous commit (a stored response, an admin write) flushes the WAL before
 * it, this enqueue's record included.
 */
const lightCommit = (durable: boolean | undefined) => (durable ? sql`` : sql`, set_config('synchronous_commit', 'off', true)`);

/**
 * The queue-bound test of an enqueue statement: fewer than `bound` queued interactive requests
 * of `model` (batch work waits behind them, so it does not count: migrations/0096). It reads at
 * most `bound` index entries, so it stays cheap however deep the bound is.
 */
const roomFor = (model: string, bound: number) =>
  sql`(select count(*) from (select 1 from ai.requests where model = ${model} and status = 'queued' and priority = 0 limit ${bound}) q) < ${bound}`;

/**
 * ai.enqueue_request (sql/074_admission.sql): the queue bound, the key's and team's budgets and
 * rate limits, and the row, in one statement, hence one round trip and one transaction; the
 * notification (sent at commit) wakes the workers serving the model. `queued: false` (nothing
 * written or charged) when the model's queue is full; a refusal throws SQLSTATE SY429.
 */
export async function enqueueRequest(db: Db, r: NewRequest): Promise<{ queued: boolean; limits: Record<string, unknown> }> {
  const res = await sql<{ r: { queued: boolean; limits?: Record<string, unknown> } }>`
    select ai.enqueue_request(${r.id}::uuid, ${r.endpoint}, ${r.model}, ${r.requestedModel}, ${JSON.stringify(r.input)}::jsonb,
                              ${JSON.stringify(r.params)}::jsonb, ${r.stream}, ${r.keyId}::uuid, ${r.maxAttempts}, ${r.listener},
                              ${r.queueBound}, ${r.reservedTokens}, make_interval(secs => ${r.rateWindowSeconds}), ${r.traceparent ?? null},
                              ${r.notifyKey ?? null}::bytea) as r
                              ${lightCommit(r.durable)}
  `.execute(db);
  const out = res.rows[0]!.r;
  return { queued: out.queued, limits: out.limits ?? {} };
}

export interface NewEmbedding {
  id: string;
  model: string;
  requestedModel: string;
  inputs: unknown[];
  meta: Record<string, unknown>;
  keyId: string | null;
  maxAttempts: number;
  listener: string | null;
  queueBound: number;
  /** What its inputs may use at most, for budgets and token limits (ai.enqueue_embeddings). */
  reservedTokens?: number;
}

/** An embedding request (ai.enqueue_embedding) behind the same queue-bound test; false when full. */
export async function enqueueEmbedding(db: Db, r: NewEmbedding): Promise<boolean> {
  const res = await sql`
    select ai.enqueue_embedding(${r.id}::uuid, ${r.model}, ${r.requestedModel}, ${JSON.stringify(r.inputs)}::jsonb,
                                ${JSON.stringify(r.meta)}::jsonb, ${r.keyId}::uuid, ${r.maxAttempts}, ${r.listener})
     where ${roomFor(r.model, r.queueBound)}`.execute(db);
  return res.rows.length > 0;
}

/** What the embedding enqueue answered for one request: written (with its limits), refused by admission, or absent (queue full). */
export interface EmbeddingAdmission {
  refusal: string | null;
  limits: Record<string, unknown> | null;
}

/**
 * Several embedding requests of one model in one statement (ai.enqueue_embeddings: one
 * transaction, one notification, still a row each). The queue bound is checked inside that
 * statement, then each limited key's request is admitted alone; returns, per request written or
 * refused, its outcome (a refusal: the SY429 detail); the rest found the queue full.
 */
export async function enqueueEmbeddings(
  db: Db,
  model: string,
  rs: Omit<NewEmbedding, 'model' | 'maxAttempts' | 'listener' | 'queueBound'>[],
  opts: { maxAttempts: number; listener: string | null; queueBound: number; rateWindowSeconds: number },
): Promise<Map<string, EmbeddingAdmission>> {
  const res = await sql<{ id: string; refusal: string | null; limits: Record<string, unknown> | null }>`
    select id::text, refusal::text, limits
      from ai.enqueue_embeddings(${rs.map((r) => r.id)}::uuid[], ${model}, ${rs.map((r) => r.requestedModel)}::text[],
                                 ${JSON.stringify(rs.map((r) => r.inputs))}::jsonb, ${rs.map((r) => JSON.stringify(r.meta))}::jsonb[],
                                 ${rs.map((r) => r.keyId)}::uuid[], ${opts.maxAttempts}, ${opts.listener}, ${opts.queueBound},
                                 ${rs.map((r) => r.reservedTokens ?? 0)}::bigint[], make_interval(secs => ${opts.rateWindowSeconds}))
                                 ${lightCommit(false)}`.execute(db);
  return new Map(res.rows.map((r) => [r.id, { refusal: r.refusal, limits: r.limits }]));
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
