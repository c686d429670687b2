import { sql } from 'kysely';
import type { Db } from './pool.js';

export interface NewRerank {
  id: string;
  /** The registered name. */
  model: string;
  requestedModel: string;
  query: string;
  documents: string[];
  meta: Record<string, unknown>;
  keyId: string | null;
  maxAttempts: number;
  /** The LISTEN channel of the process waiting for it. */
  listener: string | null;
  queueBound: number;
  /** What it may use at most, reserved against budgets and charged to tokens-per-minute limits. */
  reservedTokens: number;
  /** The rate limits' window in seconds (60: per minute). */
  rateWindowSeconds: number;
}

/** Queues a rerank request (sql/085_rerank.sql); false when the model's queue is full. */
export async function enqueueRerank(db: Db, r: NewRerank): Promise<boolean> {
  const res = await sql<{ queued: boolean }>`
    select ai.enqueue_rerank(${r.id}::uuid, ${r.model}, ${r.requestedModel}, ${r.query}, ${JSON.stringify(r.documents)}::jsonb,
                             ${JSON.stringify(r.meta)}::jsonb, ${r.keyId}::uuid, ${r.maxAttempts}, ${r.listener}, ${r.queueBound},
                             ${r.reservedTokens}, make_interval(secs => ${r.rateWindowSeconds})) as queued`.execute(db);
  return res.rows[0]?.queued ?? false;
}
