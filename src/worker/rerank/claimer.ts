import type pg from 'pg';
import type { LogFn } from '../../log.js';
import type { ErrorBody } from '../../protocol/errors.js';
import { retryWhileUnavailable } from '../../db/errors.js';
import { toJsonb } from '../../db/jsonb.js';
import type { RerankInput, RerankOutput } from './score.js';

export interface RerankClaimerDeps {
  pool: pg.Pool;
  model: string;
  workerId: string;
  /** One model call for the pairs of every request given (the model thread sub-batches them). */
  rerank(inputs: RerankInput[]): Promise<RerankOutput[]>;
  log: { info: LogFn; warn: LogFn; error: LogFn };
}

/**
 * Requests claimed per statement. A request may hold up to 1,000 documents, so this bounds a
 * model call at 32,000 pairs; typical requests (tens of documents) share one call by the dozen.
 */
const CLAIM_LIMIT = 32;
/** Notifications can be lost (reconnects, a reaper's re-queue wakes chat claimers): look anyway. */
const POLL_MS = 2000;

/** A stored request can outlive the code that stored it; the model thread checks the rest. */
function readInput(input: unknown): RerankInput | null {
  const v = input as { query?: unknown; documents?: unknown } | null;
  return v && typeof v.query === 'string' && Array.isArray(v.documents) ? { query: v.query, documents: v.documents as string[] } : null;
}

/**
 * Serves one rerank model's queue, as EmbedClaimer serves an embedding model's: claims every
 * queued request at once (ai.claim_rerank, FOR UPDATE SKIP LOCKED, so workers share the queue),
 * scores all their pairs in one model call (batching across requests), and finishes the batch
 * with one statement (ai.finish_embeddings, which any endpoint's batch can use).
 */
export class RerankClaimer {
  private stopped = false;
  private woken = false;
  private wakeUp: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;

  constructor(private readonly deps: RerankClaimerDeps) {}

  start(): void {
    this.loopDone = this.loop();
  }

  /** A request for this model was queued (pg_notify 'ai_embed' with the model's name). */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loopDone;
  }

  private sleep(ms: number): Promise<void> {
    if (this.woken) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = done;
    });
  }

  private async loop(): Promise<void> {
    const { pool, model, workerId, log } = this.deps;
    while (!this.stopped) {
      this.woken = false;
      let rows: { id: string; input: unknown }[];
      try {
        ({ rows } = await pool.query<{ id: string; input: unknown }>('select id::text, input from ai.claim_rerank($1, $2, $3)', [model, workerId, CLAIM_LIMIT]));
      } catch (err) {
        log.warn(`claiming ${model} rerank requests failed: ${(err as Error).message}`);
        await this.sleep(POLL_MS);
        continue;
      }
      if (rows.length === 0) {
        await this.sleep(POLL_MS);
        continue;
      }
      try {
        await this.process(rows);
      } catch (err) {
        log.error(`rerank batch of ${rows.length} failed: ${(err as Error).message}; re-queueing it`);
        // Reclaimed once stale (ai.claim_rerank) even if this fails, so nothing is lost.
        await retryWhileUnavailable(() =>
          pool.query(`update ai.requests set status = 'queued' where id = any($1) and status = 'running' and worker = $2`, [rows.map((r) => r.id), workerId]),
        ).catch(() => {});
        await this.sleep(POLL_MS);
      }
    }
  }

  private async process(rows: { id: string; input: unknown }[]): Promise<void> {
    const inputs = rows.map((r) => readInput(r.input));
    const runnable = inputs.flatMap((x) => (x ? [x] : []));
    const t0 = performance.now();
    const results = runnable.length ? await this.deps.rerank(runnable) : [];
    const modelMs = Math.round((performance.now() - t0) * 10) / 10;
    let next = 0;
    const outcomes = rows.map((r, i) => {
      if (!inputs[i]) {
        const error: ErrorBody = { message: 'Stored request is invalid: input is not {query, documents}.', type: 'server_error', param: null, code: 'invalid_stored_request' };
        return { id: r.id, status: 'failed', output: null, usage: null, error, event: { type: 'error', status: 500, error } };
      }
      const res = results[next++]!;
      if ('error' in res) return { id: r.id, status: 'failed', output: null, usage: null, error: res.error, event: { type: 'error', status: 400, error: res.error } };
      return {
        id: r.id,
        status: 'completed',
        output: { scores: res.scores, model_ms: modelMs, batch_requests: runnable.length },
        usage: { prompt_tokens: res.tokens, total_tokens: res.tokens },
        error: null,
        event: { type: 'reranked', promptTokens: res.tokens, scores: res.scores },
      };
    });
    await retryWhileUnavailable(() =>
      this.deps.pool.query(
        `select ai.finish_embeddings($1, $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::jsonb[], ''::bytea, $8::int[], $8::int[])`,
        [
          this.deps.workerId,
          outcomes.map((o) => o.id),
          outcomes.map((o) => o.status),
          outcomes.map((o) => toJsonb(o.output)),
          outcomes.map((o) => toJsonb(o.usage)),
          outcomes.map((o) => toJsonb(o.error)),
          outcomes.map((o) => toJsonb(o.event)),
          outcomes.map(() => 0),
        ],
      ),
    );
  }
}
