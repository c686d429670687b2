import type pg from 'pg';
import { inTransaction } from '../db/transaction.js';
import { takeDeadWorkers } from '../db/workers-repo.js';
import type { LogFn } from '../log.js';

/** A setting in seconds: a finite number at least `min`, else `fallback`. */
function seconds(env: NodeJS.ProcessEnv, name: string, fallback: number, min: 'positive' | 'zero'): number {
  const s = Number(env[name] ?? fallback);
  return Number.isFinite(s) && (min === 'zero' ? s >= 0 : s > 0) ? s : fallback;
}

/** How long a worker may stay silent before it is taken for dead (SWITCHYARD_WORKER_TIMEOUT, seconds). */
export const workerTimeoutMs = (env: NodeJS.ProcessEnv = process.env): number => seconds(env, 'SWITCHYARD_WORKER_TIMEOUT', 30, 'positive') * 1000;

/** How often each process runs ai.prune (SWITCHYARD_PRUNE_INTERVAL, seconds; 0 turns it off). */
export const pruneIntervalMs = (env: NodeJS.ProcessEnv = process.env): number => seconds(env, 'SWITCHYARD_PRUNE_INTERVAL', 300, 'zero') * 1000;

/**
 * How long an ended `store: false` request may keep its text before the sweep removes it
 * (SWITCHYARD_UNSTORED_GRACE, seconds): time for a slow serve to read its last events.
 */
export const unstoredGraceS = (env: NodeJS.ProcessEnv = process.env): number => seconds(env, 'SWITCHYARD_UNSTORED_GRACE', 30, 'zero');

const WORKER_LOST = {
  message: 'The worker running this request stopped responding, and the request has no attempts left.',
  type: 'server_error',
  param: null,
  code: 'worker_lost',
};

/**
 * Releases the work of workers that stopped heartbeating (crashed, killed, partitioned).
 * graphile-worker alone keeps a crashed worker's (vectorizer) jobs locked for 4 hours. Runs in every
 * `serve` and `worker`; each dead worker is reaped once, in one transaction that deletes its
 * row and releases its work:
 * - its running requests go back to 'queued', which also fences it off: a worker that was only
 *   paused or cut off finds its writes refused (it no longer owns them, sql/010_events.sql),
 *   and its heartbeat finds its row gone;
 * - chat requests are claimed again by another worker (woken by a notification; attempts stay
 *   bounded); one with no attempts left is failed, with an error its client receives;
 * - embedding requests are claimable again at once, and its vectorizer jobs are unlocked.
 * On the same tick it sweeps the text out of ended `store: false` requests (sweepUnstored),
 * and every SWITCHYARD_PRUNE_INTERVAL it deletes what the retention settings expire (prune).
 */
export class Reaper {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  /** Since when this process has reached the database without a failed reap (null: not yet). */
  private reachableSince: number | null = null;
  /** When this process last pruned (a fresh process waits one interval). */
  private lastPrune = Date.now();

  constructor(
    private readonly pool: pg.Pool,
    private readonly log: { info: LogFn; warn: LogFn },
    private readonly timeoutMs = workerTimeoutMs(),
    private readonly graceS = unstoredGraceS(),
    private readonly pruneEveryMs = pruneIntervalMs(),
  ) {}

  /**
   * Deletes expired events, requests and cache entries (sql/095_retention.sql), a batch per
   * table, once per interval. Processes take turns (an advisory lock: one prunes, the others skip).
   */
  async pruneIfDue(): Promise<void> {
    if (this.pruneEveryMs === 0 || Date.now() - this.lastPrune < this.pruneEveryMs) return;
    this.lastPrune = Date.now();
    const r = (await this.pool.query<{ events: string; requests: string; cache: string }>('select * from ai.prune()')).rows[0];
    const n = r ? Number(r.events) + Number(r.requests) + Number(r.cache) : 0;
    if (n > 0) this.log.info(`pruned ${r!.events} events, ${r!.requests} requests, ${r!.cache} cache entries`);
  }

  /** Periodic work of the layers above (the batch sweep, serving/batches.ts), run after the rest on each tick. */
  private readonly sweeps: { name: string; run: () => Promise<number> }[] = [];

  addSweep(name: string, run: () => Promise<number>): void {
    this.sweeps.push({ name, run });
  }

  private async runSweeps(): Promise<void> {
    for (const s of this.sweeps) {
      try {
        const n = await s.run();
        if (n) this.log.info(`${s.name}: ${n}`);
      } catch (err) {
        this.log.warn(`${s.name} failed: ${(err as Error).message}`);
      }
    }
  }

  start(): void {
    this.timer = setInterval(() => {
      this.running ??= this.reap()
        .then(() => undefined)
        .catch((err: Error) => {
          this.reachableSince = null;
          this.log.warn(`reaping dead workers failed: ${err.message}`);
        })
        .then(() => this.sweepUnstored())
        .then(() => undefined)
        .catch((err: Error) => this.log.warn(`redacting store:false requests failed: ${err.message}`))
        .then(() => this.pruneIfDue())
        .catch((err: Error) => this.log.warn(`pruning expired rows failed: ${err.message}`))
        .then(() => this.runSweeps())
        .finally(() => (this.running = null));
    }, Math.max(500, this.timeoutMs / 2));
    this.timer.unref();
  }

  /** Reaps the workers silent for longer than the timeout; returns how many. */
  async reap(): Promise<number> {
    if (this.reachableSince === null) {
      await this.pool.query('select 1');
      this.reachableSince = Date.now();
    }
    // After a database outage every heartbeat is old, those of healthy workers too: give them
    // a full timeout to beat again before taking anyone for dead (otherwise one restart of
    // Postgres would restart every generation).
    if (Date.now() - this.reachableSince < this.timeoutMs) return 0;
    let failed = 0;
    let requeued = 0;
    const dead = await inTransaction(this.pool, async (client) => {
      const silent = await takeDeadWorkers(client, this.timeoutMs);
      if (silent.length > 0) {
        const ids = silent.map((d) => d.id);
        // Their event writes in flight land first; later ones find the requests taken (sql/010_events.sql).
        await client.query(`select ai._fence_requests(array(select id from ai.requests where worker = any($1) and status = 'running'))`, [ids]);
        // Chat requests that have used every attempt: fail them, with an error their waiter receives.
        const exhausted = await client.query(
          `with f as (
             update ai.requests r set status = 'failed', error = $2, finished_at = clock_timestamp()
              where r.worker = any($1) and r.status = 'running' and r.endpoint <> 'embeddings'
                and r.attempts >= coalesce(r.max_attempts, 3)
             returning r.id)
           select ai.publish_final(f.id, jsonb_build_object('type', 'error', 'status', 500, 'error', $2::jsonb)) from f`,
          [ids, JSON.stringify(WORKER_LOST)],
        );
        failed = exhausted.rowCount ?? 0;
        // The rest back to the queue; the notifications (sent at commit) wake the claimers.
        const q = await client.query<{ n: number }>(
          `with q as (update ai.requests set status = 'queued' where worker = any($1) and status = 'running' returning endpoint, model)
           select count(*)::int as n,
                  (select count(pg_notify(ai._queue_channel(e), m))
                     from (select distinct endpoint, model from q) d(e, m)) as notified
             from q`,
          [ids],
        );
        requeued = q.rows[0]!.n;
        // Their vectorizer jobs to other workers.
        const jobWorkers = silent.flatMap((d) => d.job_worker_ids);
        if (jobWorkers.length) await client.query('select graphile_worker.force_unlock_workers($1::text[])', [jobWorkers]);
      }
      return silent;
    });
    if (dead.length === 0) return 0;
    this.log.warn(
      `worker(s) ${dead.map((d) => d.id).join(', ')} silent for over ${this.timeoutMs / 1000} s: released their work` +
        (failed ? `, failed ${failed} request(s) out of attempts` : '') +
        (requeued ? `, re-queued ${requeued} request(s)` : ''),
    );
    return dead.length;
  }

  /**
   * Removes the text of `store: false` requests that ended over the grace ago and still have
   * it: their serve died before it could, or their client left (sql/075_store.sql). Cheap to
   * run this often: it reads a partial index of those rows only.
   */
  async sweepUnstored(): Promise<number> {
    const r = await this.pool.query<{ n: number }>('select ai.redact_unstored(make_interval(secs => $1)) as n', [this.graceS]);
    const n = r.rows[0]?.n ?? 0;
    if (n) this.log.info(`removed the text of ${n} store:false request(s) after they ended`);
    return n;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.running;
  }
}
