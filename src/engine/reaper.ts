import type pg from 'pg';
import { makeWorkerUtils, type WorkerUtils } from 'graphile-worker';
import { takeDeadWorkers } from '../db/workers-repo.js';
import { graphileLogger, type LogFn } from '../log.js';

/** How long a worker may stay silent before it is taken for dead (SWITCHYARD_WORKER_TIMEOUT, seconds). */
export function workerTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const s = Number(env.SWITCHYARD_WORKER_TIMEOUT ?? 30);
  return Number.isFinite(s) && s > 0 ? s * 1000 : 30_000;
}

/**
 * How long an ended `store: false` request may keep its text before the sweep removes it
 * (SWITCHYARD_UNSTORED_GRACE, seconds): time for a slow serve to read its last events.
 */
export function unstoredGraceS(env: NodeJS.ProcessEnv = process.env): number {
  const s = Number(env.SWITCHYARD_UNSTORED_GRACE ?? 30);
  return Number.isFinite(s) && s >= 0 ? s : 30;
}

const WORKER_LOST = {
  message: 'The worker running this request stopped responding, and the request has no attempts left.',
  type: 'server_error',
  param: null,
  code: 'worker_lost',
};

/**
 * Releases the work of workers that stopped heartbeating (crashed, killed, partitioned).
 * graphile-worker alone keeps a crashed worker's jobs locked for 4 hours. Runs in every
 * `serve` and `worker`; each dead worker is reaped once (its row is deleted by the reaper that
 * takes it).
 * - chat jobs are unlocked, so another worker runs them again (attempts stay bounded); a
 *   request whose job has no attempts left is failed, with an error its client receives;
 * - embedding requests it had claimed go back to the queue at once.
 * On the same tick it sweeps the text out of ended `store: false` requests (sweepUnstored).
 */
export class Reaper {
  private timer: NodeJS.Timeout | null = null;
  private utils: Promise<WorkerUtils> | null = null;
  private running: Promise<void> | null = null;

  constructor(
    private readonly pool: pg.Pool,
    private readonly log: { info: LogFn; warn: LogFn },
    private readonly timeoutMs = workerTimeoutMs(),
    private readonly graceS = unstoredGraceS(),
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.running ??= this.reap()
        .then(() => undefined)
        .catch((err: Error) => this.log.warn(`reaping dead workers failed: ${err.message}`))
        .then(() => this.sweepUnstored())
        .then(() => undefined)
        .catch((err: Error) => this.log.warn(`redacting store:false requests failed: ${err.message}`))
        .finally(() => (this.running = null));
    }, Math.max(500, this.timeoutMs / 2));
    this.timer.unref();
  }

  async reap(): Promise<number> {
    const dead = await takeDeadWorkers(this.pool, this.timeoutMs);
    if (dead.length === 0) return 0;
    this.utils ??= makeWorkerUtils({ pgPool: this.pool, logger: graphileLogger });
    const utils = await this.utils;
    const jobWorkers = dead.flatMap((d) => d.job_worker_ids);
    if (jobWorkers.length) await utils.forceUnlockWorkers(jobWorkers);
    const ids = dead.map((d) => d.id);
    // Chat requests whose job has used every attempt: fail them and retire the job.
    const exhausted = await this.pool.query<{ id: string; job_id: string }>(
      `select r.id, j.id::text as job_id
         from ai.requests r
         join graphile_worker.jobs j on j.id = r.job_id
        where r.worker = any($1) and r.status = 'running' and r.endpoint = 'chat.completions'
          and j.attempts >= j.max_attempts`,
      [ids],
    );
    for (const row of exhausted.rows) {
      await this.pool.query(
        `with f as (update ai.requests set status = 'failed', error = $2, finished_at = clock_timestamp()
                     where id = $1 and status = 'running' returning id)
         select ai.publish_final(id, jsonb_build_object('type', 'error', 'status', 500, 'error', $2::jsonb)) from f`,
        [row.id, JSON.stringify(WORKER_LOST)],
      );
    }
    if (exhausted.rowCount) await utils.permanentlyFailJobs(exhausted.rows.map((r) => r.job_id), 'worker lost, attempts exhausted');
    const requeued = await this.pool.query<{ model: string }>(
      `update ai.requests set status = 'queued' where worker = any($1) and status = 'running' and endpoint = 'embeddings'
       returning model`,
      [ids],
    );
    for (const model of new Set(requeued.rows.map((r) => r.model))) await this.pool.query(`select pg_notify('ai_embed', $1)`, [model]);
    this.log.warn(
      `worker(s) ${ids.join(', ')} silent for over ${this.timeoutMs / 1000} s: released their jobs` +
        (exhausted.rowCount ? `, failed ${exhausted.rowCount} request(s) out of attempts` : '') +
        (requeued.rowCount ? `, re-queued ${requeued.rowCount} embedding request(s)` : ''),
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
    if (this.utils) await (await this.utils).release();
  }
}
