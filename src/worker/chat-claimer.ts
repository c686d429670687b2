import type pg from 'pg';
import type { LogFn } from '../log.js';
import type { ClaimedChat } from './chat-task.js';

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
  /** Batch work (priority > 0) running here: it is owed `reserve` slots (see ai.claim_chat). */
  private batchRunning = 0;
  /** A quarter of the capacity (at least one slot) is reserved for batch work while it is queued. */
  private get reserve(): number {
    return Math.max(1, Math.floor(this.deps.capacity / 4));
  }

  constructor(private readonly deps: ChatClaimerDeps) {}

  /** Starts claiming (again) for these models too. */
  serve(models: string[]): void {
    for (const m of models) this.models.add(m);
    if (!this.loopDone && !this.stopped) this.loopDone = this.loop();
    this.wake();
  }

  /** A request of `model` was queued (or of some model, when `model` is absent). */
  wake(model?: string): void {
    if (model !== undefined && !this.models.has(model)) return;
    this.woken = true;
    this.wakeUp?.();
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
        await this.sleep(pollMs);
        this.woken = true; // the poll: look once whether or not anyone said so
        continue;
      }
      this.woken = false;
      let rows: ClaimedChat[];
      try {
        rows = (
          await this.deps.pool.query<ClaimedChat>('select * from ai.claim_chat($1, $2, $3, $4::uuid[], $5)', [
            this.deps.workerId,
            [...this.models],
            free,
            this.deps.stopping(),
            Math.max(0, this.reserve - this.batchRunning),
          ])
        ).rows;
      } catch (err) {
        this.deps.log.warn(`claiming chat requests failed: ${(err as Error).message}`);
        await this.sleep(pollMs);
        this.woken = true;
        continue;
      }
      for (const row of rows) {
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
    }
  }
}
