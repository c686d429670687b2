import type { Db } from '../db/pool.js';
import { enqueueEmbeddings, type NewEmbedding } from '../db/requests-repo.js';

type Item = Omit<NewEmbedding, 'model' | 'maxAttempts' | 'listener' | 'queueBound'> & {
  /** Told the key's rate-limit state once admitted (budgets and limits, sql/074_admission.sql). */
  onLimits?(limits: Record<string, unknown>): void;
};
interface Waiter {
  item: Item;
  resolve(queued: boolean): void;
  reject(err: unknown): void;
}
interface Group {
  opts: { maxAttempts: number; listener: string | null; queueBound: number; rateWindowSeconds?: number };
  waiting: Waiter[];
  flushing: boolean;
}

/**
 * Most requests written by one enqueue statement. 256 single-input requests are about 40 KB of
 * parameters; a statement this size takes a few ms, and the worker claims up to 256 at once.
 */
const MAX_GROUP = 256;

/**
 * Coalesces the embedding requests of one model that arrive together into one enqueue
 * statement (issue 14): one transaction, one commit and one notification for the group, with
 * a row per API request as before (its own id, key, usage, timings).
 *
 * Group commit, no timer: a request that finds no enqueue of its model in flight goes out at
 * the end of the current event-loop turn (with whatever else the same socket reads parsed);
 * requests that arrive while one is in flight wait for it and go out together right after. An
 * isolated request pays nothing; a burst of 256 (measured: each HTTP request costs serve about
 * 1–2 ms of parsing, auth and validation on this 2-core machine) becomes a handful of statements
 * instead of 256, and the worker's claim finds them together. Requests of different models
 * never share a statement (the queue bound is per model).
 */
export class EmbedEnqueueCoalescer {
  private readonly groups = new Map<string, Group>();
  /** Statements sent and requests they carried (for tests and the bench's notes). */
  readonly stats = { statements: 0, requests: 0 };

  constructor(private readonly db: Db) {}

  /** Resolves true once the request's row is committed, false when the queue was full. */
  enqueue(model: string, item: Item, opts: Group['opts']): Promise<boolean> {
    let g = this.groups.get(model);
    if (!g) this.groups.set(model, (g = { opts, waiting: [], flushing: false }));
    // The latest caller's bound and listener: they change only when the model row does.
    g.opts = opts;
    const group = g;
    return new Promise<boolean>((resolve, reject) => {
      group.waiting.push({ item, resolve, reject });
      if (!group.flushing && group.waiting.length === 1) setImmediate(() => void this.flush(model, group));
    });
  }

  /**
   * One statement for the batch. If the database refuses its data (SQLSTATE class 22, e.g. a
   * value jsonb cannot hold), each request is sent alone, so that one request's bad input fails
   * only that request, never the others it happened to travel with.
   */
  private async send(model: string, batch: Waiter[], opts: Group['opts']): Promise<void> {
    try {
      const outcomes = await enqueueEmbeddings(this.db, model, batch.map((w) => w.item), { ...opts, rateWindowSeconds: opts.rateWindowSeconds ?? 60 });
      for (const w of batch) {
        const o = outcomes.get(w.item.id);
        // A budget or rate limit refused this one alone: the error ai.enqueue_request would raise.
        if (o?.refusal) w.reject(Object.assign(new Error('admission refused'), { code: 'SY429', detail: o.refusal }));
        else {
          if (o?.limits) w.item.onLimits?.(o.limits);
          w.resolve(o !== undefined);
        }
      }
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (batch.length > 1 && typeof code === 'string' && code.startsWith('22')) {
        for (const w of batch) await this.send(model, [w], opts);
      } else {
        for (const w of batch) w.reject(err);
      }
    }
  }

  private async flush(model: string, g: Group): Promise<void> {
    if (g.flushing) return;
    g.flushing = true;
    try {
      while (g.waiting.length > 0) {
        const batch = g.waiting.splice(0, MAX_GROUP);
        this.stats.statements++;
        this.stats.requests += batch.length;
        await this.send(model, batch, g.opts);
      }
    } finally {
      g.flushing = false;
      if (g.waiting.length === 0 && this.groups.get(model) === g) this.groups.delete(model);
    }
  }
}
