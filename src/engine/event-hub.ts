import type pg from 'pg';
import { PgListener } from '../db/listener.js';
import type { LogFn } from '../log.js';
import type { EngineEvent } from './types.js';

export const EVENTS_CHANNEL = 'ai_events';
/** A subscription that heard nothing for this long re-reads its rows (a notification may be lost). */
const IDLE_RECHECK_MS = 2000;

const isTerminal = (e: EngineEvent) => e.type === 'done' || e.type === 'embedded' || e.type === 'error';

/** Events of one request, in `seq` order, exactly once, ending after `done` or `error`. */
export class Subscription implements AsyncIterable<EngineEvent> {
  nextSeq = 0;
  lastActivity = Date.now();
  finished = false;
  private readonly queue: EngineEvent[] = [];
  private readonly early = new Map<number, EngineEvent>();
  private wake: (() => void) | null = null;

  constructor(
    readonly requestId: string,
    private readonly release: (s: Subscription) => void,
  ) {}

  /** Accepts an event with its seq; out-of-order events wait for the gap to be filled. */
  offer(seq: number, event: EngineEvent): boolean {
    if (this.finished || seq < this.nextSeq) return true;
    if (seq > this.nextSeq) {
      this.early.set(seq, event);
      return false;
    }
    this.push(event);
    for (let e = this.early.get(this.nextSeq); e && !this.finished; e = this.early.get(this.nextSeq)) {
      this.early.delete(this.nextSeq);
      this.push(e);
    }
    return true;
  }

  private push(event: EngineEvent): void {
    this.nextSeq++;
    this.lastActivity = Date.now();
    this.queue.push(event);
    if (isTerminal(event)) this.end();
    this.wake?.();
  }

  /** Ends the stream with a final event that no row carries (e.g. the request row says failed). */
  fail(event: Extract<EngineEvent, { type: 'error' }>): void {
    if (this.finished) return;
    this.queue.push(event);
    this.end();
    this.wake?.();
  }

  close(): void {
    this.end();
    this.wake?.();
  }

  private end(): void {
    if (this.finished) return;
    this.finished = true;
    this.early.clear();
    this.release(this);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<EngineEvent> {
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next) {
          yield next;
          continue;
        }
        if (this.finished) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = null;
      }
    } finally {
      this.close();
    }
  }
}

/**
 * One LISTEN connection per process, fanned out in memory to the requests this process waits
 * on. Rows in ai.request_events back it up: large events, reconnects and lost notifications
 * are all recovered by reading from `nextSeq`.
 */
export class EventHub {
  private readonly subs = new Map<string, Subscription>();
  private readonly listener: PgListener;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly pool: pg.Pool,
    connectionString: string,
    private readonly log: { info: LogFn; warn: LogFn },
  ) {
    this.listener = new PgListener({
      connectionString,
      channels: [EVENTS_CHANNEL],
      log,
      onNotification: (_channel, payload) => this.onNotification(payload),
      onConnected: () => {
        for (const s of this.subs.values()) void this.catchUp(s);
      },
    });
  }

  async start(): Promise<void> {
    await this.listener.start();
    this.timer = setInterval(() => {
      const now = Date.now();
      for (const s of this.subs.values()) if (now - s.lastActivity > IDLE_RECHECK_MS) void this.catchUp(s);
    }, IDLE_RECHECK_MS / 2);
    this.timer.unref();
  }

  get listening(): boolean {
    return this.listener.connected;
  }

  /** Subscribe before the request is committed, so no event can slip past. */
  subscribe(requestId: string): Subscription {
    const sub = new Subscription(requestId, (s) => {
      if (this.subs.get(s.requestId) === s) this.subs.delete(s.requestId);
    });
    this.subs.set(requestId, sub);
    return sub;
  }

  private onNotification(payload: string): void {
    let msg: { r: string; s: number; d?: EngineEvent };
    try {
      msg = JSON.parse(payload);
    } catch {
      return;
    }
    const sub = this.subs.get(msg.r);
    if (!sub) return;
    if (!msg.d || !sub.offer(msg.s, msg.d)) void this.catchUp(sub);
  }

  /** Offers the subscription every stored event from its next seq on; returns how many there were. */
  private async replay(sub: Subscription): Promise<number> {
    const { rows } = await this.pool.query<{ seq: number; data: EngineEvent }>(
      'select seq, data from ai.request_events where request_id = $1 and seq >= $2 order by seq',
      [sub.requestId, sub.nextSeq],
    );
    for (const r of rows) sub.offer(r.seq, r.data);
    return rows.length;
  }

  private async catchUp(sub: Subscription): Promise<void> {
    if (sub.finished) return;
    sub.lastActivity = Date.now();
    try {
      if ((await this.replay(sub)) > 0 || sub.finished) return;
      // No new events: has the request ended without a final event (cancelled while queued,
      // or its job gave up)? Then say so instead of waiting forever.
      const { rows } = await this.pool.query<{ status: string }>('select status from ai.requests where id = $1', [sub.requestId]);
      const status = rows[0]?.status;
      if (status !== 'failed' && status !== 'cancelled') return;
      // An event may have landed between the two reads.
      await this.replay(sub);
      if (sub.finished) return;
      const cancelled = status === 'cancelled';
      sub.fail({
        type: 'error',
        status: cancelled ? 499 : 500,
        error: {
          message: cancelled ? 'The request was cancelled.' : 'The request failed.',
          type: cancelled ? 'invalid_request_error' : 'server_error',
          param: null,
          code: cancelled ? 'cancelled' : 'internal_error',
        },
      });
    } catch (err) {
      this.log.warn(`catching up on request ${sub.requestId} failed: ${(err as Error).message}`);
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const s of [...this.subs.values()]) s.close();
    await this.listener.stop();
  }
}
