import type pg from 'pg';

export interface WorkerRecord {
  id: string;
  hostname: string;
  pid: number;
  models: string[];
}

/**
 * A worker's decode-batch counters for one chat model, since its model thread started: what its
 * heartbeat stores in ai.workers.stats (keyed by model) and GET /metrics exports.
 */
export interface WorkerBatchStats {
  /** Batched decode steps, and the sum of their batch sizes (mean batch = sequences / steps). */
  steps: number;
  stepSequences: number;
  /** Largest batch seen. */
  maxBatch: number;
  decodeTokens: number;
  prefillTokens: number;
  /** Prefill forward passes (several prompts that arrive together share one). */
  prefills: number;
  decodeMs: number;
  prefillMs: number;
  /** Requests admitted, and their summed wait between arriving and being admitted. */
  admitted: number;
  admitWaitMs: number;
  /**
   * The prefix cache (worker/generation/prefix-cache.ts): prompts looked up, those that reused
   * cached blocks, prompt tokens not prefilled thanks to it, blocks evicted, and bytes held now.
   * Absent from heartbeats of workers older than the cache.
   */
  prefixLookups?: number;
  prefixHits?: number;
  prefixTokensSaved?: number;
  prefixEvictions?: number;
  prefixBytes?: number;
  /** Now: sequences decoding, requests waiting for a slot, requests being prefilled. */
  decoding: number;
  waiting: number;
  prefilling: number;
}

/** Registers a worker under a new id. */
export async function register(pool: pg.Pool, w: WorkerRecord, jobWorkerIds: string[]): Promise<void> {
  await pool.query('insert into ai.workers (id, hostname, pid, models, job_worker_ids) values ($1, $2, $3, $4, $5)', [
    w.id,
    w.hostname,
    w.pid,
    w.models,
    jobWorkerIds,
  ]);
}

/**
 * Refreshes a live worker's row; one small row per worker, updated every few seconds. False
 * when the row is gone: a reaper took the worker for dead and released its work, so the row
 * is not recreated (the worker must not go on as if nothing happened; see worker/run.ts).
 */
export async function heartbeat(pool: pg.Pool, w: WorkerRecord, jobWorkerIds: string[], stats: Record<string, WorkerBatchStats> = {}): Promise<boolean> {
  const r = await pool.query(
    'update ai.workers set heartbeat_at = now(), models = $2, job_worker_ids = $3, stats = $4 where id = $1',
    [w.id, w.models, jobWorkerIds, JSON.stringify(stats)],
  );
  return r.rowCount === 1;
}

export async function unregister(pool: pg.Pool, id: string): Promise<void> {
  await pool.query('delete from ai.workers where id = $1', [id]);
}

/**
 * Removes workers silent for longer than `timeoutMs` and returns them (each reaped once: the
 * reaper's transaction that deletes a row releases that worker's work).
 */
export async function takeDeadWorkers(db: Pick<pg.ClientBase, 'query'>, timeoutMs: number): Promise<{ id: string; job_worker_ids: string[] }[]> {
  const r = await db.query<{ id: string; job_worker_ids: string[] }>(
    `delete from ai.workers where heartbeat_at < now() - make_interval(secs => $1::double precision / 1000)
     returning id, job_worker_ids`,
    [timeoutMs],
  );
  return r.rows;
}
