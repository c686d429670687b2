import type pg from 'pg';
import type { LogFn } from '../../log.js';
import type { ErrorBody } from '../../protocol/errors.js';
import type { EmbeddingResult } from '../model-host.js';
import type { EmbedInput } from './embed.js';
import { MAX_CALL_INPUTS } from './batcher.js';
import { retryWhileUnavailable } from '../../db/errors.js';
import { toJsonb } from '../../db/jsonb.js';
import { cacheKey } from './cache-key.js';

export interface ClaimerDeps {
  pool: pg.Pool;
  model: string;
  /** The model's configuration fingerprint, part of every cache key (cache-key.ts). */
  fingerprint: Buffer;
  workerId: string;
  embed(inputs: EmbedInput[]): Promise<EmbeddingResult>;
  log: { info: LogFn; warn: LogFn; error: LogFn };
}

/** Requests claimed per statement: a model call's worth of single-input requests. */
const CLAIM_LIMIT = MAX_CALL_INPUTS;
/** Notifications can be lost (reconnects): look for work this often anyway. */
const POLL_MS = 1000;
/**
 * Batches processed at once. One: requests that arrive while a batch is in the model wait and
 * go together in the next claim. With two in flight a burst split into many small calls on a
 * loaded machine (a CI run saw 61 calls for 256 requests). The database work of a batch is
 * milliseconds against the model call, so little overlap is lost.
 */
const MAX_IN_FLIGHT = 1;
/**
 * Requests of a burst arrive a few at a time (each one is an HTTP request, a transaction and a
 * notification). Claiming waits until no new one has been announced for QUIET_MS, at most
 * LINGER_MS, so a burst becomes a few large batches rather than many small ones; an isolated
 * request pays QUIET_MS.
 */
const QUIET_MS = 4;
const LINGER_MS = 25;

/** A stored request can outlive the code that stored it: check its shape at run time. */
function readInputs(input: unknown): EmbedInput[] | null {
  const list = (input as { input?: unknown } | null)?.input;
  const ok =
    Array.isArray(list) &&
    list.length > 0 &&
    list.every((x) => typeof x === 'string' || (Array.isArray(x) && x.every((t) => Number.isInteger(t) && t >= 0)));
  return ok ? (list as EmbedInput[]) : null;
}

const toVectorText = (v: ArrayLike<number>) => `[${Array.prototype.join.call(v, ',')}]`;

interface Outcome {
  id: string;
  status: 'completed' | 'failed';
  output: unknown;
  usage: unknown;
  error: ErrorBody | null;
  event: unknown;
}

/**
 * Serves one embedding model's queue: claims queued requests in batches with one statement
 * (ai.claim_embeddings, FOR UPDATE SKIP LOCKED, so workers share the queue), answers cached
 * inputs from ai.embedding_cache, embeds the rest in one batched model call, and finishes the
 * whole batch with one statement.
 */
export class EmbedClaimer {
  private stopped = false;
  private wakeUp: (() => void) | null = null;
  private inFlight = new Set<Promise<void>>();
  private loopDone: Promise<void> | null = null;
  private lastWake = 0;

  constructor(private readonly deps: ClaimerDeps) {}

  start(): void {
    this.loopDone = this.loop();
  }

  /** A request for this model was queued (pg_notify 'ai_embed'). */
  wake(): void {
    this.lastWake = Date.now();
    this.wakeUp?.();
  }

  private async linger(): Promise<void> {
    const started = Date.now();
    while (!this.stopped && Date.now() - this.lastWake < QUIET_MS && Date.now() - started < LINGER_MS) {
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loopDone;
    await Promise.all(this.inFlight);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = done;
    });
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      if (this.inFlight.size >= MAX_IN_FLIGHT) {
        await Promise.race(this.inFlight);
        continue;
      }
      await this.linger();
      let rows: { id: string; input: unknown }[];
      try {
        rows = (await this.deps.pool.query('select id, input from ai.claim_embeddings($1, $2, $3)', [this.deps.model, this.deps.workerId, CLAIM_LIMIT])).rows;
      } catch (err) {
        this.deps.log.warn(`claiming ${this.deps.model} embedding requests failed: ${(err as Error).message}`);
        await this.sleep(POLL_MS);
        continue;
      }
      if (rows.length === 0) {
        await this.sleep(POLL_MS);
        continue;
      }
      const batch = this.process(rows).catch(async (err) => {
        this.deps.log.error(`embedding batch of ${rows.length} failed: ${(err as Error).message}; re-queueing it`);
        // Back to the queue (waiting out a database restart); if even that fails, the rows are
        // reclaimed once stale (ai.claim_embeddings), so nothing is lost either way.
        await retryWhileUnavailable(() =>
          this.deps.pool.query(`update ai.requests set status = 'queued' where id = any($1) and status = 'running' and worker = $2`, [
            rows.map((r) => r.id),
            this.deps.workerId,
          ]),
        ).catch(() => {});
      });
      this.inFlight.add(batch);
      void batch.finally(() => this.inFlight.delete(batch));
    }
  }

  private async process(rows: { id: string; input: unknown }[]): Promise<void> {
    const { pool, model } = this.deps;
    const requests = rows.map((r) => ({ id: r.id, inputs: readInputs(r.input) }));
    // Every distinct input once, whichever requests share it.
    const unique = new Map<string, { input: EmbedInput; hash: Buffer; vector?: number[]; tokens?: number; error?: ErrorBody }>();
    for (const r of requests) {
      for (const input of r.inputs ?? []) {
        const hash = cacheKey(this.deps.fingerprint, input);
        const key = hash.toString('hex');
        if (!unique.has(key)) unique.set(key, { input, hash });
      }
    }
    const entries = [...unique.values()];
    const cached = await pool.query<{ input_hash: Buffer; embedding: string; tokens: number }>(
      'select input_hash, embedding::text, tokens from ai.embedding_cache where model = $1 and input_hash = any($2)',
      [model, entries.map((e) => e.hash)],
    );
    for (const row of cached.rows) {
      const e = unique.get(row.input_hash.toString('hex'));
      // pgvector prints float4 in shortest form; fround gives back the exact float32 values.
      if (e) Object.assign(e, { vector: (JSON.parse(row.embedding) as number[]).map(Math.fround), tokens: row.tokens });
    }
    const missing = entries.filter((e) => !e.vector);
    let calls: string[] = [];
    if (missing.length > 0) {
      const result = await this.deps.embed(missing.map((e) => e.input));
      calls = (result.calls ?? []).map((c) => `${this.deps.workerId}#${c}`);
      missing.forEach((e, k) => {
        const err = result.errors[k];
        if (err) e.error = err;
        else Object.assign(e, { vector: Array.from(result.vectors[k]!), tokens: result.tokens[k]! });
      });
      const fresh = missing.filter((e) => e.vector);
      // A concurrent batch may have cached the same input first.
      await pool.query(
        `insert into ai.embedding_cache (model, input_hash, embedding, tokens)
         select $1, h, e::vector, t from unnest($2::bytea[], $3::text[], $4::int[]) as u(h, e, t)
         on conflict do nothing`,
        [model, fresh.map((e) => e.hash), fresh.map((e) => toVectorText(e.vector!)), fresh.map((e) => e.tokens!)],
      );
    }
    const outcomes = requests.map((r): Outcome => {
      if (!r.inputs) {
        const error: ErrorBody = { message: 'Stored request is invalid: input.input is not a list of texts or token-id lists.', type: 'server_error', param: null, code: 'invalid_stored_request' };
        return { id: r.id, status: 'failed', output: null, usage: null, error, event: { type: 'error', status: 500, error } };
      }
      const found = r.inputs.map((input) => unique.get(cacheKey(this.deps.fingerprint, input).toString('hex'))!);
      const bad = found.findIndex((e) => e.error);
      if (bad !== -1) {
        const e = found[bad]!.error!;
        const error = { ...e, message: `Invalid input[${bad}]: ${e.message}` };
        return { id: r.id, status: 'failed', output: null, usage: null, error, event: { type: 'error', status: 400, error } };
      }
      const promptTokens = found.reduce((s, e) => s + e.tokens!, 0);
      const fromCache = found.filter((e) => !missing.includes(e)).length;
      return {
        id: r.id,
        status: 'completed',
        output: { embeddings: found.map((e) => e.vector), cached: fromCache, model_calls: fromCache === found.length ? [] : calls },
        usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
        error: null,
        event: { type: 'embedded', promptTokens },
      };
    });
    // One statement finishes the batch: rows (unless cancelled or reclaimed meanwhile) and events.
    await retryWhileUnavailable(() => pool.query(
      `with d as (
         select * from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], $6::jsonb[])
           as t(id, status, output, usage, error, event)),
       u as (
         update ai.requests r
            set status = d.status, output = d.output, usage = d.usage, error = d.error, finished_at = clock_timestamp()
           from d
          where r.id = d.id and r.status = 'running' and r.worker = $7
         returning r.id, d.event)
       select ai.publish_final(u.id, u.event) from u`,
      [
        outcomes.map((o) => o.id),
        outcomes.map((o) => o.status),
        outcomes.map((o) => toJsonb(o.output)),
        outcomes.map((o) => toJsonb(o.usage)),
        outcomes.map((o) => toJsonb(o.error)),
        outcomes.map((o) => toJsonb(o.event)),
        this.deps.workerId,
      ],
    ));
  }
}
