import type pg from 'pg';
import type { LogFn } from '../log.js';
import type { ClaimedChat } from './chat-task.js';

/** SWITCHYARD_BATCH_SHARE: the share of a worker's chat slots batch work may hold (0 < share ≤ 1). */
export function batchShare(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.SWITCHYARD_BATCH_SHARE);
  return env.SWITCHYARD_BATCH_SHARE && Number.isFinite(v) && v > 0 && v <= 1 ? v : 0.25;
}

export interface ChatClaimerDeps {
  pool: pg.Pool;
  workerId: string;
  log: { warn: LogFn };
  /** Requests run at once (they share each decode step): SWITCHYARD_MAX_BATCH by default. */
  capacity: number;
  /** Requests this worker is still stopping: not claimed again until they have stopped. */
  stopping(): string[];
  /** Runs a claimed attempt to its end; never rejects. */
  run(row: ClaimedChat): Promise<void>;
  /** How often to look for work without being told (notifications can be lost across reconnects). */
  pollMs?: number;
}

/**
 * Takes chat and completions requests of the models served here straight from ai.requests:
 * one statement (ai.claim_chat) claims as many as there are free slots, oldest first, and each
 * runs at once. A notification on 'ai_chat' (sent when a request is queued or re-queued) names
 * the model and wakes the claimer; payloads are hints, since anyone may NOTIFY. Idle, it costs
 * one read every `pollMs`; busy, a claim only when a slot is free and there may be work.
 */
export class ChatClaimer {
  private readonly models = new Set<string>();
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;
  private wakeUp: (() => void) | null = null;
  /** A request may have been queued since the last claim started. */
  private woken = true;
  private loopDone: Promise<void> | null = null;
  /** Ids claimed here whose notification has not come yet (bounded: one lost stays at most until the set is cleared). */
  private readonly claimed = new Set<string>();
  /** Batch work (priority > 0) running here: it is owed `reserve` slots (see ai.claim_chat). */
  private batchRunning = 0;
  /** A quarter of the capacity (at least one slot) is reserved for batch work while it is queued. */
  private get reserve(): number {
    return Math.max(1, Math.floor(this.deps.capacity / 4));
  }
  /**
   * Batch work runs in at most SWITCHYARD_BATCH_SHARE of the slots (default 0.25, at least one),
   * so an interactive request arriving during a batch finds a free slot, and the decode steps it
   * joins are not full of batch rows. `npm run bench -- --only batch` (tiny model, 16 slots,
   * 1,000-line batches, 2 CPU cores): interactive p50 at 3.6× idle with batch work in every slot
   * (quick run), 2.0× with it in 12, 1.74× in 8, 1.56× in 4; the batches took about as long in
   * each (21–26 s): the cores, not the slots, bound them. On a GPU, where a batch row costs little,
   * a larger share finishes batches sooner.
   */
  private readonly batchCap: number;
  /** The last claim left batch work queued for want of a batch slot: claim again when one frees. */
  private batchCapped = false;

  constructor(private readonly deps: ChatClaimerDeps) {
    this.batchCap = Math.max(1, Math.floor(deps.capacity * batchShare()));
  }

  /** Starts claiming (again) for these models too. */
  serve(models: string[]): void {
    for (const m of models) this.models.add(m);
    if (!this.loopDone && !this.stopped) this.loopDone = this.loop();
    this.wake();
  }

  /**
   * A request of `model` was queued (or of some model, when `model` is absent). `id`, when the
   * notification names it: a request this worker's last claims already took (committed before
   * its notification arrived, so an earlier claim found it) needs no claim of its own; under a
   * burst most notifications are of such requests, and each empty claim was a transaction.
   */
  wake(model?: string, id?: string): void {
    if (model !== undefined && !this.models.has(model)) return;
    if (id !== undefined && this.claimed.delete(id)) return;
    this.woken = true;
    this.wakeUp?.();
  }

  /** A notification's payload: `<model>` or `<model> <request id>` (ai.enqueue_request). */
  wakeFor(payload: string): void {
    const [model, id] = payload.split(' ', 2);
    this.wake(model || undefined, id);
  }

  get running(): number {
    return this.inFlight.size;
  }

  /** Stops claiming, and waits for what runs to end. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wakeUp?.();
    await this.loopDone;
    await Promise.all(this.inFlight);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.wakeUp === done) self.wakeUp = null;
        resolve();
      }
      this.wakeUp = done;
    });
  }

  private async loop(): Promise<void> {
    const pollMs = this.deps.pollMs ?? 2000;
    while (!this.stopped) {
      const free = this.deps.capacity - this.inFlight.size;
      if (free <= 0) {
        // Full: the next claim when a request ends (or the poll, if a notification came).
        await Promise.race([...this.inFlight, this.sleep(pollMs)]);
        continue;
      }
      if (!this.woken) {
        // Batch work waits for a batch slot: the next ending may free one.
        if (this.batchCapped && this.inFlight.size > 0) await Promise.race([...this.inFlight, this.sleep(pollMs)]);
        else await this.sleep(pollMs);
        this.woken = true; // the poll: look once whether or not anyone said so
        continue;
      }
      this.woken = false;
      let rows: ClaimedChat[];
      const batchLimit = Math.max(0, this.batchCap - this.batchRunning);
      try {
        rows = (
          await this.deps.pool.query<ClaimedChat>('select * from ai.claim_chat($1, $2, $3, $4::uuid[], $5, $6)', [
            this.deps.workerId,
            [...this.models],
            free,
            this.deps.stopping(),
            Math.min(batchLimit, Math.max(0, this.reserve - this.batchRunning)),
            batchLimit,
          ])
        ).rows;
      } catch (err) {
        this.deps.log.warn(`claiming chat requests failed: ${(err as Error).message}`);
        await this.sleep(pollMs);
        this.woken = true;
        continue;
      }
      if (this.claimed.size + rows.length > 4096) this.claimed.clear();
      for (const row of rows) {
        this.claimed.add(row.id);
        const batch = (row.priority ?? 0) > 0;
        if (batch) this.batchRunning++;
        const run = this.deps.run(row).finally(() => {
          this.inFlight.delete(run);
          if (batch) this.batchRunning--;
        });
        this.inFlight.add(run);
      }
      // Every free slot filled: there may be more queued (claim again once a slot frees).
      if (rows.length === free) this.woken = true;
      this.batchCapped = rows.filter((r) => (r.priority ?? 0) > 0).length >= batchLimit;
    }
  }
}
