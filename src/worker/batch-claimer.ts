import type pg from 'pg';
import type { LogFn } from '../log.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { Waker } from './waker.js';

/** Notifications can be lost (reconnects, a reaper's re-queue wakes chat claimers): look anyway. */
const POLL_MS = 2000;

export interface BatchClaimerBase {
  pool: pg.Pool;
  workerId: string;
  log: { info: LogFn; warn: LogFn; error: LogFn };
}

/**
 * The loop of a claimer that serves one model's queue a batch at a time (rerank, moderation):
 * claim (one statement), run the batch, repeat; sleep until woken (an 'ai_embed' notification
 * naming the model) or POLL_MS when there is nothing to do. A batch that throws goes back to the
 * queue (and is reclaimed once stale if even that fails), so nothing is lost; the loop then
 * pauses rather than retry at once. The embedding claimer has its own loop: it overlaps the
 * database work of consecutive batches with the model.
 */
export abstract class BatchClaimer<R extends { id: string }> {
  private stopped = false;
  private readonly waker = new Waker();
  private loopDone: Promise<void> | null = null;

  /** `what`: the work, as the log names it ("tiny-rerank rerank"). */
  constructor(
    private readonly base: BatchClaimerBase,
    private readonly what: string,
  ) {}

  /** Claims up to a batch of queued requests for this worker (one statement). */
  protected abstract claim(): Promise<R[]>;
  /** Runs and finishes a claimed batch. */
  protected abstract run(rows: R[]): Promise<void>;

  start(): void {
    this.loopDone = this.loop();
  }

  /** A request for this model was queued. */
  wake(): void {
    this.waker.wake();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loopDone;
  }

  private async loop(): Promise<void> {
    const { pool, workerId, log } = this.base;
    while (!this.stopped) {
      this.waker.arm();
      let rows: R[];
      try {
        rows = await this.claim();
      } catch (err) {
        log.warn(`claiming ${this.what} requests failed: ${(err as Error).message}`);
        await this.waker.sleep(POLL_MS);
        continue;
      }
      if (rows.length === 0) {
        await this.waker.sleep(POLL_MS);
        continue;
      }
      try {
        await this.run(rows);
      } catch (err) {
        log.error(`${this.what} batch of ${rows.length} failed: ${(err as Error).message}; re-queueing it`);
        await retryWhileUnavailable(() =>
          pool.query(`update ai.requests set status = 'queued' where id = any($1) and status = 'running' and worker = $2`, [rows.map((r) => r.id), workerId]),
        ).catch(() => {});
        await this.waker.sleep(POLL_MS);
      }
    }
  }
}
