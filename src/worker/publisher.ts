import type pg from 'pg';
import type { ChoiceDelta, EngineEvent } from '../engine/types.js';
import type { TokenLogprob } from './generation/logprobs.js';
import type { FinishReason } from '../protocol/shared.js';
import { retryWhileUnavailable } from '../db/errors.js';
import type { EventFlusher } from './flusher.js';
import { sealNotice } from '../engine/notice.js';
import { toJsonb } from '../db/jsonb.js';

/** Who writes a request's events: one attempt of its job, in one worker. */
export interface Owner {
  requestId: string;
  workerId: string;
  attempt: number;
  /** The request's notify_key (ai.claim_chat): events are sealed into their notifications with it (engine/notice.ts). */
  notifyKey?: Buffer | null;
}

/** The item announcing `events` (the last of a request's events in one write) to its waiter, sealed; null: the plain `<id>:<seq>`. */
export function noticeFor(owner: Owner, events: Numbered[]): string | null {
  const last = events[events.length - 1];
  if (!owner.notifyKey || !last) return null;
  return sealNotice(owner.notifyKey, owner.requestId, last.seq, toJsonb(events.map((e) => e.data)));
}

/** The request is no longer this attempt's (a reaper re-queued it, another attempt took it). */
export class OwnershipLost extends Error {
  constructor(requestId: string) {
    super(`request ${requestId} is no longer this attempt's (taken over after this worker was taken for dead, or ended): nothing more is written`);
  }
}

/** An event and its place in the request's stream. */
export interface Numbered {
  seq: number;
  data: EngineEvent;
}

/** Text not yet handed to a flush: one delta event, whatever the number of tokens behind it. */
interface OpenDelta {
  choices: Map<number, ChoiceDelta>;
  /** When its oldest text was produced. */
  at: number;
}

function merge(into: OpenDelta, index: number, text: string, finishReason: FinishReason | null, logprobs?: TokenLogprob[], stopSequence?: string): void {
  const prev = into.choices.get(index);
  const merged = prev?.logprobs || logprobs ? [...(prev?.logprobs ?? []), ...(logprobs ?? [])] : undefined;
  into.choices.set(index, {
    index,
    text: (prev?.text ?? '') + text,
    finishReason: finishReason ?? prev?.finishReason ?? null,
    ...(merged ? { logprobs: merged } : {}),
    ...(stopSequence !== undefined ? { stopSequence } : {}),
  });
}

const toEvent = (d: OpenDelta): EngineEvent => ({ type: 'delta', choices: [...d.choices.values()].sort((a, b) => a.index - b.index), at: d.at });

/**
 * One request's events, on their way to the database. Nothing is written from here: events
 * queue, and the worker's EventFlusher writes those of every request that advanced in one
 * statement per flush (see flusher.ts). Text coalesces while it waits: a flush carries one delta
 * per request, however many tokens it holds. A request that does not stream sends no deltas at
 * all: its text is kept and written with the outcome (finish() in request-row.ts), so its
 * waiter reads one delta and the final event.
 *
 * The database refuses the events of an attempt that no longer owns the request; the first
 * refusal silences the publisher and calls `onRefused`, which stops the generation.
 */
export class EventPublisher {
  /** Events not yet handed to a flush, in order; text goes to `open` (after them). */
  private queued: EngineEvent[] = [];
  private open: OpenDelta | null = null;
  /** The whole text so far, for a request that does not stream. */
  private readonly held: OpenDelta | null;
  private sentText = false;
  /** Flushes under way that carry events of this request. */
  private inFlight = 0;
  private waiters: (() => void)[] = [];
  private failure: Error | null = null;
  firstTokenAt: Date | null = null;
  /** Set once the database refused an event: nothing more is sent. */
  refused = false;
  onRefused: (() => void) | null = null;

  constructor(
    private readonly flusher: EventFlusher,
    readonly owner: Owner,
    private seq: number,
    /** False: deltas are held until the end (see above). */
    readonly stream = true,
  ) {
    this.held = stream ? null : { choices: new Map(), at: 0 };
  }

  get requestId(): string {
    return this.owner.requestId;
  }

  /**
   * Next seq to use: continues after events of an earlier attempt, if any. A first attempt
   * starts at 0 without asking (one round trip less per request). Read after the claim, which
   * waited for any earlier owner's events in flight (ai.publish_events locks the row).
   */
  static async open(pool: pg.Pool, flusher: EventFlusher, owner: Owner, stream: boolean): Promise<EventPublisher> {
    if (owner.attempt <= 1) return new EventPublisher(flusher, owner, 0, stream);
    const r = await retryWhileUnavailable(() =>
      pool.query<{ next: number }>('select coalesce(max(seq) + 1, 0)::int as next from ai.request_events where request_id = $1', [owner.requestId]),
    );
    return new EventPublisher(flusher, owner, r.rows[0]!.next, stream);
  }

  /** The text gathered so far becomes a queued delta event (after the events queued before it). */
  private closeOpen(): void {
    if (this.open) this.queued.push(toEvent(this.open));
    this.open = null;
  }

  private get silenced(): boolean {
    return this.refused || this.failure !== null;
  }

  /**
   * Queues an event (start, restart): it goes out with the next flush, at once if `urgent`. A
   * request that does not stream writes it with the outcome instead (its waiter reads nothing
   * before that).
   */
  publish(event: EngineEvent, urgent = true): void {
    if (this.silenced) return;
    this.closeOpen();
    this.queued.push(event);
    if (!this.held) this.flusher.mark(this, urgent);
  }

  delta(index: number, text: string, finishReason: FinishReason | null, logprobs?: TokenLogprob[], stopSequence?: string): void {
    if (this.silenced) return;
    const now = Date.now();
    if (text && !this.firstTokenAt) this.firstTokenAt = new Date(now);
    if (this.held) {
      if (this.held.choices.size === 0) this.held.at = now;
      merge(this.held, index, text, finishReason, logprobs, stopSequence);
      return;
    }
    this.open ??= { choices: new Map(), at: now };
    merge(this.open, index, text, finishReason, logprobs, stopSequence);
    // The first text goes out at once; later text with the next flush (SWITCHYARD_FLUSH_MS).
    const first = !!text && !this.sentText;
    if (first) this.sentText = true;
    this.flusher.mark(this, first);
  }

  /** For the flusher: what to write now, numbered. */
  take(): Numbered[] {
    if (this.silenced) {
      this.queued = [];
      this.open = null;
      this.wakeIfIdle();
      return [];
    }
    this.closeOpen();
    const out = this.queued.map((data) => ({ seq: this.seq++, data }));
    this.queued = [];
    if (out.length) this.inFlight++;
    return out;
  }

  /** For the flusher: a flush that carried events taken from here is over. */
  landed(error: Error | null, refused: boolean): void {
    this.inFlight--;
    if (refused && !this.refused) {
      this.refused = true;
      this.queued = [];
      this.open = null;
      this.onRefused?.();
    } else if (error && !this.failure) {
      // Later events would leave a gap in the stream: send nothing more. The attempt fails
      // when it flushes (graphile-worker retries it).
      this.failure = error;
    }
    this.wakeIfIdle();
  }

  private wakeIfIdle(): void {
    if (this.inFlight === 0) for (const w of this.waiters.splice(0)) w();
  }

  /** Waits until no flush carries events of this request (those not yet taken stay queued). */
  async settled(): Promise<void> {
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** Throws if the database refused an event (OwnershipLost) or a flush failed. */
  check(): void {
    if (this.refused) throw new OwnershipLost(this.requestId);
    if (this.failure) throw this.failure;
  }

  /** Writes every event so far (at once), and waits for it; throws as check(). */
  async flush(): Promise<void> {
    while (this.queued.length > 0 || this.open || this.inFlight > 0) {
      if (this.queued.length > 0 || this.open) this.flusher.mark(this, true);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.check();
  }

  /**
   * The events that end the stream, numbered, for finish() to write with the outcome: whatever
   * no flush took yet, the held text of a request that does not stream, then `final`. Call it
   * once no flush carries events of this request (settled()).
   */
  closing(final: EngineEvent): Numbered[] {
    this.closeOpen();
    if (this.held?.choices.size) this.queued.push(toEvent(this.held));
    this.held?.choices.clear();
    const out = [...this.queued, final].map((data) => ({ seq: this.seq++, data }));
    this.queued = [];
    return out;
  }
}
