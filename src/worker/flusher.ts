import type pg from 'pg';
import { retryWhileUnavailable } from '../db/errors.js';
import { toJsonb } from '../db/jsonb.js';
import { noticeFor, type EventPublisher } from './publisher.js';

/**
 * How often a worker writes stream events under load (SWITCHYARD_FLUSH_MS, default 100 ms). The
 * first event and the first text of a request go out at once; later text waits for the next
 * flush. A flush costs a transaction and a row per request that advanced, so the cost per token
 * falls with the tokens a row carries (per-stream decode rate × interval). scripts/dataplane-cost.ts,
 * 16 streams × 128 tokens of the fixture model on 2 cores: at 50 ms, 0.074 commits and 98 WAL
 * bytes per token; at 100 ms, 0.068 and 66 (SCALING.md). 100 ms is ten updates a second, below
 * what a reader notices, and halves Postgres's rows for a GPU's 30–100 tokens/s per stream.
 */
export function flushIntervalMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.SWITCHYARD_FLUSH_MS);
  return Number.isFinite(v) && v >= 0 && env.SWITCHYARD_FLUSH_MS !== '' ? v : 100;
}

/** Deadlocks against a reaper locking the same rows in another order: the flush is retried. */
const DEADLOCK = '40P01';
const UNIQUE_VIOLATION = '23505';

/**
 * Postgres pays per flush, not per token: one statement (ai.publish_events, one transaction,
 * one notification per waiting process) carries the events of every request of this worker
 * that advanced since the last flush. One flush at a time; what arrives meanwhile waits for the
 * next, which starts at once if it holds something urgent (a request's first event or first
 * text) and otherwise SWITCHYARD_FLUSH_MS after the previous one started.
 */
export class EventFlusher {
  private readonly dirty = new Set<EventPublisher>();
  private urgent = false;
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private lastAt = 0;
  /** Flushes written and events they carried (for tests and logs). */
  readonly stats = { flushes: 0, events: 0 };

  constructor(
    readonly pool: pg.Pool,
    private readonly intervalMs = flushIntervalMs(),
  ) {}

  /** A publisher has events to write; `urgent`: write them as soon as no flush is under way. */
  mark(publisher: EventPublisher, urgent: boolean): void {
    this.dirty.add(publisher);
    if (urgent) this.urgent = true;
    this.schedule();
  }

  private schedule(): void {
    if (this.running || this.dirty.size === 0) return;
    const wait = this.urgent ? 0 : this.lastAt + this.intervalMs - Date.now();
    if (wait > 0) {
      this.timer ??= setTimeout(() => {
        this.timer = null;
        this.schedule();
      }, wait);
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    // After this turn of the event loop: the deltas of one decode step (one message each from
    // the model thread) arrive together and share the flush.
    this.running = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.flush())
      .finally(() => {
        this.running = null;
        this.schedule();
      });
  }

  private async flush(): Promise<void> {
    const batch = [...this.dirty];
    this.dirty.clear();
    this.urgent = false;
    this.lastAt = Date.now();
    // Per worker id (one, except across the end of a shift: see run.ts).
    const byWorker = new Map<string, { publishers: EventPublisher[]; events: unknown[] }>();
    for (const p of batch) {
      const events = p.take();
      if (events.length === 0) continue;
      const group = byWorker.get(p.owner.workerId) ?? { publishers: [], events: [] };
      byWorker.set(p.owner.workerId, group);
      group.publishers.push(p);
      const notice = noticeFor(p.owner, events);
      events.forEach((e, i) => group.events.push({
        request: p.requestId, attempt: p.owner.attempt, seq: e.seq, data: e.data,
        ...(notice && i === events.length - 1 ? { notice } : {}),
      }));
    }
    await Promise.all(
      [...byWorker].map(async ([workerId, { publishers, events }]) => {
        let refused: Set<string>;
        try {
          refused = new Set(await this.write(workerId, events));
        } catch (err) {
          for (const p of publishers) p.landed(err as Error, false);
          return;
        }
        this.stats.flushes++;
        this.stats.events += events.length;
        for (const p of publishers) p.landed(null, refused.has(p.requestId));
      }),
    );
  }

  /** Returns the requests refused. Retried through a database restart (a retry writes nothing twice). */
  private write(workerId: string, events: unknown[]): Promise<string[]> {
    const json = toJsonb(events);
    let tries = 0;
    return retryWhileUnavailable(async () => {
      tries++;
      for (let attempt = 1; ; attempt++) {
        try {
          const r = await this.pool.query<{ refused: string[] }>('select ai.publish_events($1, $2::jsonb)::text[] as refused', [workerId, json]);
          return r.rows[0]!.refused;
        } catch (err) {
          const code = (err as { code?: string }).code;
          // On a retry (the connection died with the commit's answer): those seqs are stored, so
          // that try committed, all of it (one transaction). A request refused meanwhile is
          // refused at its next write.
          if (code === UNIQUE_VIOLATION && tries > 1) return [];
          if (code !== DEADLOCK || attempt >= 5) throw err;
        }
      }
    });
  }
}
