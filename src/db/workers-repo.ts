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
  /** Now: sequences decoding, requests waiting for a slot, requests being prefilled. */
  decoding: number;
  waiting: number;
  prefilling: number;
}

/** Registers or refreshes a live worker; one small row per worker, updated every few seconds. */
export async function heartbeat(pool: pg.Pool, w: WorkerRecord, jobWorkerIds: string[], stats: Record<string, WorkerBatchStats> = {}): Promise<void> {
  await pool.query(
    `insert into ai.workers (id, hostname, pid, models, job_worker_ids, stats) values ($1, $2, $3, $4, $5, $6)
     on conflict (id) do update set heartbeat_at = now(), models = excluded.models, job_worker_ids = excluded.job_worker_ids,
                                    stats = excluded.stats`,
    [w.id, w.hostname, w.pid, w.models, jobWorkerIds, JSON.stringify(stats)],
  );
}

export async function unregister(pool: pg.Pool, id: string): Promise<void> {
  await pool.query('delete from ai.workers where id = $1', [id]);
}

/** Removes workers silent for longer than `timeoutMs` and returns them (each reaped once). */
export async function takeDeadWorkers(pool: pg.Pool, timeoutMs: number): Promise<{ id: string; job_worker_ids: string[] }[]> {
  const r = await pool.query<{ id: string; job_worker_ids: string[] }>(
    `delete from ai.workers where heartbeat_at < now() - make_interval(secs => $1::double precision / 1000)
     returning id, job_worker_ids`,
    [timeoutMs],
  );
  return r.rows;
}
