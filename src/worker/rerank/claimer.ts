import type pg from 'pg';
import type { LogFn } from '../../log.js';
import type { ErrorBody } from '../../protocol/errors.js';
import { retryWhileUnavailable } from '../../db/errors.js';
import { toJsonb } from '../../db/jsonb.js';
import type { RerankInput, RerankOutput } from './score.js';
import { BatchClaimer } from '../batch-claimer.js';

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
export class RerankClaimer extends BatchClaimer<{ id: string; input: unknown }> {
  constructor(private readonly deps: RerankClaimerDeps) {
    super(deps, `${deps.model} rerank`);
  }

  protected async claim(): Promise<{ id: string; input: unknown }[]> {
    const { pool, model, workerId } = this.deps;
    return (await pool.query<{ id: string; input: unknown }>('select id::text, input from ai.claim_rerank($1, $2, $3)', [model, workerId, CLAIM_LIMIT])).rows;
  }

  protected run(rows: { id: string; input: unknown }[]): Promise<void> {
    return this.process(rows);
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
