import type pg from 'pg';
import type { ChoiceDelta, EngineEvent } from '../engine/types.js';
import type { TokenLogprob } from './generation/logprobs.js';
import type { FinishReason } from '../protocol/shared.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { toJsonb } from '../db/jsonb.js';

/**
 * Publishes one request's events. Deltas are coalesced: while one publish is in flight, new
 * text accumulates and goes out in the next, so a fast model costs one round trip per flush,
 * not per token, and a slow one still sends every token at once.
 */
export class EventPublisher {
  private pending = new Map<number, ChoiceDelta>();
  private pendingSince = 0;
  private inFlight: Promise<void> | null = null;
  private failure: Error | null = null;
  firstTokenAt: Date | null = null;

  constructor(
    private readonly pool: pg.Pool,
    readonly requestId: string,
    private seq: number,
  ) {}

  /**
   * Next seq to use: continues after events of an earlier attempt, if any. A first attempt
   * starts at 0 without asking (one round trip less per request).
   */
  static async open(pool: pg.Pool, requestId: string, attempt: number): Promise<EventPublisher> {
    if (attempt <= 1) return new EventPublisher(pool, requestId, 0);
    const r = await retryWhileUnavailable(() =>
      pool.query<{ next: number }>('select coalesce(max(seq) + 1, 0)::int as next from ai.request_events where request_id = $1', [requestId]),
    );
    return new EventPublisher(pool, requestId, r.rows[0]!.next);
  }

  /** Retried through a database restart; a retry of an insert that did commit is a no-op. */
  async publish(event: EngineEvent): Promise<void> {
    const seq = this.nextSeq();
    await retryWhileUnavailable(() =>
      this.pool.query('select ai.publish_event($1, $2, $3)', [this.requestId, seq, toJsonb(event)]).catch((err: { code?: string }) => {
        if (err.code !== '23505') throw err; // that seq is already stored: an earlier try committed
      }),
    );
  }

  /** Reserves the next sequence number (for an event published by someone else, e.g. finish()). */
  nextSeq(): number {
    return this.seq++;
  }

  delta(index: number, text: string, finishReason: FinishReason | null, logprobs?: TokenLogprob[]): void {
    if (text && !this.firstTokenAt) this.firstTokenAt = new Date();
    if (this.pending.size === 0) this.pendingSince = Date.now();
    const prev = this.pending.get(index);
    const merged = prev?.logprobs || logprobs ? [...(prev?.logprobs ?? []), ...(logprobs ?? [])] : undefined;
    this.pending.set(index, {
      index,
      text: (prev?.text ?? '') + text,
      finishReason: finishReason ?? prev?.finishReason ?? null,
      ...(merged ? { logprobs: merged } : {}),
    });
    if (!this.inFlight) this.inFlight = this.drain();
  }

  private async drain(): Promise<void> {
    try {
      while (this.pending.size > 0) {
        const choices = [...this.pending.values()].sort((a, b) => a.index - b.index);
        const at = this.pendingSince;
        this.pending = new Map();
        await this.publish({ type: 'delta', choices, at });
      }
    } catch (err) {
      this.failure = err as Error;
    } finally {
      this.inFlight = null;
    }
  }

  /** Waits until every delta so far is published; rethrows a publish failure. */
  async flush(): Promise<void> {
    while (this.inFlight) await this.inFlight;
    if (this.pending.size > 0) {
      this.inFlight = this.drain();
      await this.inFlight;
    }
    if (this.failure) throw this.failure;
  }
}
