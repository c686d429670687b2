import type pg from 'pg';

/**
 * The admin API's reads over the request log, usage and workers. Plain SQL on the pool: each is
 * one statement, and the row shapes are what the admin routes answer (timestamps as ISO strings).
 */

export type RequestStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

export interface RequestFilter {
  model?: string;
  keyId?: string;
  status?: RequestStatus;
  endpoint?: string;
  since?: Date;
  until?: Date;
  /** Rows strictly older than this position in the log's order (newest first). */
  after?: Cursor;
  limit: number;
}

/** A position in the log: queued_at in microseconds since the epoch (a JS Date keeps only ms), then id. */
export interface Cursor {
  micros: string;
  id: string;
}

export interface RequestSummary {
  id: string;
  endpoint: string;
  model: string;
  requested_model: string;
  status: RequestStatus;
  stream: boolean;
  key_id: string | null;
  key_name: string | null;
  worker: string | null;
  attempts: number;
  queued_at: string;
  started_at: string | null;
  first_token_at: string | null;
  finished_at: string | null;
  usage: { prompt_tokens?: number; completion_tokens?: number; total_tokens?: number } | null;
  error: unknown;
}

const SUMMARY = `r.id, r.endpoint, r.model, r.requested_model, r.status, r.stream, r.key_id, k.name as key_name,
  r.worker, r.attempts, r.queued_at, r.started_at, r.first_token_at, r.finished_at, r.usage, r.error,
  (extract(epoch from r.queued_at) * 1000000)::bigint::text as cursor_micros`;

const iso = (d: Date | null): string | null => (d ? d.toISOString() : null);

function summary(row: Record<string, unknown>): RequestSummary {
  return {
    id: row.id as string,
    endpoint: row.endpoint as string,
    model: row.model as string,
    requested_model: row.requested_model as string,
    status: row.status as RequestStatus,
    stream: row.stream as boolean,
    key_id: row.key_id as string | null,
    key_name: row.key_name as string | null,
    worker: row.worker as string | null,
    attempts: row.attempts as number,
    queued_at: iso(row.queued_at as Date)!,
    started_at: iso(row.started_at as Date | null),
    first_token_at: iso(row.first_token_at as Date | null),
    finished_at: iso(row.finished_at as Date | null),
    usage: (row.usage as RequestSummary['usage']) ?? null,
    error: row.error ?? null,
  };
}

/**
 * One page of the log, newest first, by (queued_at, id): the cursor is the last row's pair, so a
 * page never repeats or skips a row however many arrive meanwhile. The index on (queued_at, id)
 * (migration 0045) makes a page cost its rows, not the table. One row more than asked says
 * whether there is a next page.
 */
export async function listRequests(pool: Pick<pg.Pool, 'query'>, f: RequestFilter): Promise<{ rows: RequestSummary[]; hasMore: boolean; next: Cursor | null }> {
  const where: string[] = [];
  const values: unknown[] = [];
  const add = (clause: (p: string) => string, value: unknown) => {
    values.push(value);
    where.push(clause(`$${values.length}`));
  };
  if (f.model !== undefined) add((p) => `r.model = ${p}`, f.model);
  if (f.keyId !== undefined) add((p) => `r.key_id = ${p}::uuid`, f.keyId);
  if (f.status !== undefined) add((p) => `r.status = ${p}`, f.status);
  if (f.endpoint !== undefined) add((p) => `r.endpoint = ${p}`, f.endpoint);
  if (f.since !== undefined) add((p) => `r.queued_at >= ${p}`, f.since);
  if (f.until !== undefined) add((p) => `r.queued_at < ${p}`, f.until);
  if (f.after !== undefined) {
    values.push(f.after.micros, f.after.id);
    const n = values.length;
    where.push(`(r.queued_at, r.id) < (timestamptz 'epoch' + $${n - 1}::bigint * interval '1 microsecond', $${n}::uuid)`);
  }
  values.push(f.limit + 1);
  const r = await pool.query(
    `select ${SUMMARY}
       from ai.requests r left join ai.api_keys k on k.id = r.key_id
      ${where.length ? `where ${where.join(' and ')}` : ''}
      order by r.queued_at desc, r.id desc
      limit $${values.length}`,
    values,
  );
  const hasMore = r.rows.length > f.limit;
  const page = r.rows.slice(0, f.limit);
  const last = page.at(-1);
  return { rows: page.map(summary), hasMore, next: hasMore && last ? { micros: last.cursor_micros, id: last.id } : null };
}

export interface RequestDetail extends RequestSummary {
  input: unknown;
  params: unknown;
  output: unknown;
  /** Milliseconds between the timestamps (null where one is missing). */
  timings: { queue_ms: number | null; time_to_first_token_ms: number | null; run_ms: number | null; total_ms: number | null };
  events: { seq: number; created_at: string; data: unknown }[];
}

const between = (a: string | null, b: string | null) => (a && b ? Date.parse(b) - Date.parse(a) : null);

/** A request with its input, output and stored stream events; null when there is none. */
export async function getRequest(pool: pg.Pool, id: string): Promise<RequestDetail | null> {
  const [req, events] = await Promise.all([
    pool.query(
      `select ${SUMMARY}, r.input, r.params, r.output
         from ai.requests r left join ai.api_keys k on k.id = r.key_id where r.id = $1::uuid`,
      [id],
    ),
    pool.query<{ seq: number; created_at: Date; data: unknown }>(
      'select seq, created_at, data from ai.request_events where request_id = $1::uuid order by seq',
      [id],
    ),
  ]);
  const row = req.rows[0];
  if (!row) return null;
  const s = summary(row);
  return {
    ...s,
    input: row.input,
    params: row.params,
    output: row.output ?? null,
    timings: {
      queue_ms: between(s.queued_at, s.started_at),
      time_to_first_token_ms: between(s.queued_at, s.first_token_at),
      run_ms: between(s.started_at, s.finished_at),
      total_ms: between(s.queued_at, s.finished_at),
    },
    events: events.rows.map((e) => ({ seq: e.seq, created_at: e.created_at.toISOString(), data: e.data })),
  };
}
