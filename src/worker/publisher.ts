import type pg from 'pg';
import type { ChoiceDelta, EngineEvent } from '../engine/types.js';
import type { TokenLogprob } from './generation/logprobs.js';
import type { FinishReason } from '../protocol/shared.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { toJsonb } from '../db/jsonb.js';

/** Who writes a request's events: one attempt of its job, in one worker. */
export interface Owner {
  requestId: string;
  workerId: string;
  attempt: number;
}

/** The request is no longer this attempt's (a reaper re-queued it, another attempt took it). */
export class OwnershipLost extends Error {
  constructor(requestId: string) {
    super(`request ${requestId} is no longer this attempt's (taken over after this worker was taken for dead, or ended): nothing more is written`);
  }
}

/**
 * Publishes one request's events. Deltas are coalesced: while one publish is in flight, new
 * text accumulates and goes out in the next, so a fast model costs one round trip per flush,
 * not per token, and a slow one still sends every token at once. The database refuses the
 * events of an attempt that no longer owns the request; the first refusal silences the
 * publisher (no retry loop) and calls `onRefused`, which stops the generation.
 */
export class EventPublisher {
  private pending = new Map<number, ChoiceDelta>();
  private pendingSince = 0;
  private inFlight: Promise<void> | null = null;
  private failure: Error | null = null;
  firstTokenAt: Date | null = null;
  /** Set once the database refused an event: nothing more is sent. */
  refused = false;
  onRefused: (() => void) | null = null;

  constructor(
    private readonly pool: pg.Pool,
    readonly owner: Owner,
    private seq: number,
  ) {}

  get requestId(): string {
    return this.owner.requestId;
  }

  /**
   * Next seq to use: continues after events of an earlier attempt, if any. A first attempt
   * starts at 0 without asking (one round trip less per request). Read after the claim, which
   * waited for any earlier owner's event in flight (ai.publish_event locks the row).
   */
  static async open(pool: pg.Pool, owner: Owner): Promise<EventPublisher> {
    if (owner.attempt <= 1) return new EventPublisher(pool, owner, 0);
    const r = await retryWhileUnavailable(() =>
      pool.query<{ next: number }>('select coalesce(max(seq) + 1, 0)::int as next from ai.request_events where request_id = $1', [owner.requestId]),
    );
    return new EventPublisher(pool, owner, r.rows[0]!.next);
  }

  /** Retried through a database restart; a retry of an insert that did commit is a no-op. */
  async publish(event: EngineEvent): Promise<void> {
    if (this.refused) throw new OwnershipLost(this.requestId);
    const seq = this.nextSeq();
    const { requestId, workerId, attempt } = this.owner;
    const written = await retryWhileUnavailable(() =>
      this.pool
        .query<{ ok: boolean }>('select ai.publish_event($1, $2, $3, $4, $5) as ok', [requestId, workerId, attempt, seq, toJsonb(event)])
        .then((r) => r.rows[0]!.ok)
        .catch((err: { code?: string }) => {
          if (err.code !== '23505') throw err; // that seq is already stored: an earlier try committed
          return true;
        }),
    );
    if (!written) {
      if (!this.refused) {
        this.refused = true;
        this.pending.clear();
        this.onRefused?.();
      }
      throw new OwnershipLost(requestId);
    }
  }

  /** Reserves the next sequence number (for an event published by someone else, e.g. finish()). */
  nextSeq(): number {
    return this.seq++;
  }

  delta(index: number, text: string, finishReason: FinishReason | null, logprobs?: TokenLogprob[]): void {
    if (this.refused) return;
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
