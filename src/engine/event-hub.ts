import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { PgListener } from '../db/listener.js';
import type { LogFn } from '../log.js';
import type { EngineEvent } from './types.js';
import { openNotice } from './notice.js';

/**
 * Each hub listens on a channel of its own, named on the requests it waits on (ai.requests.listener):
 * workers notify only the process that holds the client, so no process parses another's traffic.
 * Random, so a restarted process never receives what was meant for its predecessor.
 */
export const newEventsChannel = (): string => `ai_events_${randomBytes(8).toString('hex')}`;
/** A subscription that heard nothing for this long re-reads its rows (a notification may be lost). */
const IDLE_RECHECK_MS = 2000;

const isTerminal = (e: EngineEvent) => e.type === 'done' || e.type === 'embedded' || e.type === 'reranked' || e.type === 'moderated' || e.type === 'error';

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
    /** The request's notify_key: events sealed with it are taken from notifications (notice.ts). */
    readonly key: Buffer | null = null,
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
 * What a notification may say, in items separated by spaces (one notification per flush names
 * every request it advanced): `<request id>` (read its state), `<request id>:<seq>` (events up
 * to seq), or `<request id>:<seq>:<seal>:<events>` (the events themselves, sealed: notice.ts).
 */
const NOTIFICATION_ITEM = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?::(\d{1,9})(?::([A-Za-z0-9_-]{38}):([A-Za-z0-9_-]+))?)?$/;
/** A payload is at most 8000 bytes: a longer one is not ours. */
const MAX_ITEMS = 200;

/**
 * One LISTEN connection per process, fanned out in memory to the requests this process waits
 * on. Events are always read from ai.request_events: any role that can connect may NOTIFY
 * any channel, ours too, so a notification only says which request to look at, and one for a request
 * nobody here waits on, or for an event already read, costs nothing. Notifications that arrive
 * together share one read, for every request they name; the same read also sees a request that
 * ended without a final event (cancelled, failed by a reaper). Reconnects and lost
 * notifications are recovered the same way, by reading from each subscription's `nextSeq`.
 */
export class EventHub {
  private readonly subs = new Map<string, Subscription>();
  private readonly listener: PgListener;
  private timer: NodeJS.Timeout | null = null;
  /** Subscriptions to read, with the highest seq announced for each (Infinity: read its state too). */
  private readonly due = new Map<Subscription, number>();
  /** The read in progress (one at a time: what is announced meanwhile waits for the next). */
  private reading: Promise<void> | null = null;
  /** This hub's LISTEN channel: enqueue writes it on each request (ai.requests.listener). */
  readonly channel = newEventsChannel();
  /** Notifications received, and sealed items taken from them without a read (for tests and metrics). */
  notifications = 0;
  sealed = 0;

  constructor(
    private readonly pool: pg.Pool,
    connectionString: string,
    private readonly log: { info: LogFn; warn: LogFn },
  ) {
    this.listener = new PgListener({
      connectionString,
      channels: [this.channel],
      log,
      onNotification: (_channel, payload) => this.onNotification(payload),
      onConnected: () => {
        for (const s of this.subs.values()) this.due.set(s, Infinity);
        this.schedule();
      },
    });
  }

  async start(): Promise<void> {
    await this.listener.start();
    this.timer = setInterval(() => {
      const now = Date.now();
      for (const s of this.subs.values()) if (now - s.lastActivity > IDLE_RECHECK_MS) this.due.set(s, Infinity);
      this.schedule();
    }, IDLE_RECHECK_MS / 2);
    this.timer.unref();
  }

  get listening(): boolean {
    return this.listener.connected;
  }

  /** Subscribe before the request is committed, so no event can slip past. `key`: its notify_key, if it has one. */
  subscribe(requestId: string, key: Buffer | null = null): Subscription {
    const sub = new Subscription(requestId, (s) => {
      if (this.subs.get(s.requestId) === s) this.subs.delete(s.requestId);
    }, key);
    this.subs.set(requestId, sub);
    return sub;
  }

  private onNotification(payload: string): void {
    this.notifications++;
    const items = payload.split(' ', MAX_ITEMS + 1);
    if (items.length > MAX_ITEMS) return;
    for (const item of items) {
      const m = NOTIFICATION_ITEM.exec(item);
      const sub = m && this.subs.get(m[1]!);
      if (!sub) continue;
      const seq = m[2] === undefined ? Infinity : Number(m[2]);
      if (seq < sub.nextSeq) continue; // its row came with an earlier read
      if (m[3] !== undefined && sub.key && this.takeSealed(sub, seq, m[3], m[4]!)) continue;
      this.due.set(sub, Math.max(seq, this.due.get(sub) ?? -1));
    }
    this.schedule();
  }

  /**
   * Offers the events a sealed item carries; true when the subscription has them all, up to
   * `seq`, and needs no read (false: an item that does not open, or a gap before them, which a read fills).
   */
  private takeSealed(sub: Subscription, seq: number, mac: string, body: string): boolean {
    const events = openNotice(sub.key!, sub.requestId, seq, mac, body);
    if (!events) return false;
    const first = seq - events.length + 1;
    events.forEach((e, i) => sub.offer(first + i, e));
    this.sealed++;
    return sub.finished || sub.nextSeq > seq;
  }

  private schedule(): void {
    if (this.reading || this.due.size === 0) return;
    // Notifications parsed from one socket read are delivered in one turn of the event loop:
    // setImmediate runs after them, so they share the read.
    this.reading = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.readDue())
      .finally(() => {
        this.reading = null;
        this.schedule();
      });
  }

  private async readDue(): Promise<void> {
    const subs = [...this.due].filter(([s, seq]) => !s.finished && seq >= s.nextSeq).map(([s]) => s);
    this.due.clear();
    if (subs.length === 0) return;
    const now = Date.now();
    for (const s of subs) s.lastActivity = now;
    try {
      await this.read(subs);
    } catch (err) {
      // The idle recheck tries again.
      this.log.warn(`reading events of ${subs.length} request(s) failed: ${(err as Error).message}`);
    }
  }

  /**
   * Offers each subscription its stored events from its next seq on, and ends one whose request
   * ended without a final event (cancelled, or failed by a reaper). One statement, so one
   * snapshot: a final event written with the status is seen with it.
   */
  private async read(subs: Subscription[]): Promise<void> {
    // An embedding request's vectors (float32 bytes) come with its final event, in this read.
    const { rows } = await this.pool.query<{ id: string; status: string | null; seq: number | null; data: EngineEvent | null; vectors: Buffer | null }>(
      `select s.id::text as id, r.status, e.seq, e.data,
              case when e.data->>'type' = 'embedded' then r.vectors end as vectors
         from unnest($1::uuid[], $2::int[]) as s(id, next)
         left join ai.requests r on r.id = s.id
         left join ai.request_events e on e.request_id = s.id and e.seq >= s.next
        order by s.id, e.seq`,
      [subs.map((s) => s.requestId), subs.map((s) => s.nextSeq)],
    );
    const byId = new Map(subs.map((s) => [s.requestId, s]));
    const status = new Map<string, string | null>();
    for (const r of rows) {
      status.set(r.id, r.status);
      if (r.seq !== null) byId.get(r.id)?.offer(r.seq, r.vectors ? { ...r.data!, vectors: r.vectors } as EngineEvent : r.data!);
    }
    for (const sub of subs) {
      const s = status.get(sub.requestId);
      if (sub.finished || (s !== 'failed' && s !== 'cancelled')) continue;
      const cancelled = s === 'cancelled';
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
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const s of [...this.subs.values()]) s.close();
    this.due.clear();
    await this.listener.stop();
    await this.reading;
  }
}
