import type pg from 'pg';
import type { LogFn } from '../../log.js';
import type { ErrorBody } from '../../protocol/errors.js';
import type { EmbeddingResult } from '../model-host.js';
import type { EmbedInput } from './embed.js';
import { MAX_CALL_INPUTS } from './batcher.js';
import { isDatabaseUnavailable, retryWhileUnavailable } from '../../db/errors.js';
import { toJsonb } from '../../db/jsonb.js';
import { cacheKey } from './cache-key.js';
import { Waker } from '../waker.js';

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
/**
 * Of those, at most this many batch-work requests (ai.submit_embed, Batch API lines): the model
 * runs one call at a time, so an interactive request that arrives during a batch backlog waits
 * for a call of at most a quarter of the usual size before it is claimed.
 */
const BATCH_CLAIM_LIMIT = CLAIM_LIMIT / 4;
/** Notifications can be lost (reconnects): look for work this often anyway. */
const POLL_MS = 2000;
/** The finishing statement is prepared (per connection) when it caches at most this many vectors. */
const PREPARED_FINISH_MAX = 8;
/** Batches between claim and finish at once: one in the model, one being written. */
const MAX_BATCHES = 2;

/** A stored request can outlive the code that stored it: check its shape at run time. */
function readInputs(input: unknown): EmbedInput[] | null {
  const list = (input as { input?: unknown } | null)?.input;
  const ok =
    Array.isArray(list) &&
    list.length > 0 &&
    list.every((x) => typeof x === 'string' || (Array.isArray(x) && x.every((t) => Number.isInteger(t) && t >= 0)));
  return ok ? (list as EmbedInput[]) : null;
}

/** pgvector's binary format (vector_recv): int16 dimensions, int16 zero, big-endian float4s. */
export function toVectorBinary(v: Float32Array): Buffer {
  const b = Buffer.allocUnsafe(4 + 4 * v.length);
  b.writeInt16BE(v.length, 0);
  b.writeInt16BE(0, 2);
  for (let i = 0; i < v.length; i++) b.writeFloatBE(v[i]!, 4 + 4 * i);
  return b;
}

/** The other way (pgvector's send format: `vector_send(embedding)`). */
export function fromVectorBinary(b: Buffer): Float32Array {
  const n = b.readInt16BE(0);
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = b.readFloatBE(4 + 4 * i);
  return v;
}

interface Outcome {
  id: string;
  status: 'completed' | 'failed';
  output: unknown;
  usage: unknown;
  error: ErrorBody | null;
  event: unknown;
  /** Little-endian float32, the request's vectors in input order; null when it failed. */
  vectors: Buffer | null;
}

interface Entry {
  input: EmbedInput;
  hash: Buffer;
  vector?: Float32Array;
  tokens?: number;
  error?: ErrorBody;
  fresh?: boolean;
}

interface CachedRow {
  hash: Buffer;
  /** pgvector's send format. */
  embedding: Buffer;
  tokens: number;
}

interface Prepared {
  requests: { id: string; inputs: EmbedInput[] | null }[];
  unique: Map<string, Entry>;
  missing: Entry[];
}

/**
 * Serves one embedding model's queue: claims queued requests in batches with one statement
 * (ai.claim_embeddings, FOR UPDATE SKIP LOCKED, so workers share the queue), answers cached
 * inputs from ai.embedding_cache, embeds the rest in one batched model call, and finishes the
 * whole batch (cache, rows, events, notifications) with one statement.
 *
 * Keeping the model busy (issue 14): it claims as soon as it is woken, without lingering for
 * company (serve already sends a burst's requests in a few multi-row statements, see
 * src/engine/embed-coalescer.ts), and the database work of consecutive batches overlaps the
 * model: as soon as a model call returns, the next claim and cache read go out (when there may be
 * more work: a notification came since the last claim, or that claim was full) while the
 * finished batch is being written, so the model waits only for one claim round trip between
 * calls. One model call at a time (the batcher's): with two, a burst split into many small calls
 * on a loaded machine (a CI run saw 61 calls for 256 requests).
 *
 * ai.embed's requests, claimed by id, are claimed on a connection the batch keeps until its
 * finish has committed, which holds each request's wait lock meanwhile (sql/030_embed.sql,
 * ai._embed_wait_key): the caller's backend sleeps on that lock instead of polling its row.
 */
export class EmbedClaimer {
  private stopped = false;
  private readonly waker = new Waker();
  private inFlight = new Set<Promise<void>>();
  private loopDone: Promise<void> | null = null;
  /** Requests announced by id since the last claim (ai.embed from SQL). */
  private readonly announced = new Set<string>();
  /** Whether the next claim looks at the whole queue (a notification naming only the model,
   *  a poll, a start) rather than at the announced requests alone. */
  private wholeQueue = true;

  constructor(private readonly deps: ClaimerDeps) {}

  start(): void {
    this.loopDone = this.loop();
  }

  /**
   * A request for this model was queued (pg_notify 'ai_embed'): `id` when the notification named
   * one request (ai.embed from SQL, sql/030_embed.sql). A hint only (anyone may NOTIFY): a claim
   * by id takes only a queued interactive request of this model, as the whole-queue claim would.
   */
  wake(id?: string): void {
    if (id !== undefined && this.announced.size < CLAIM_LIMIT) this.announced.add(id);
    else this.wholeQueue = true;
    this.waker.wake();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loopDone;
    await Promise.all(this.inFlight);
  }

  private async loop(): Promise<void> {
    // Whether the queue may hold more than the last claim took. When it cannot (the last claim
    // took less than it could, and no notification came since it went out), the next claim
    // waits for a notification instead of going out as soon as the model is free: an ai.embed
    // called per row would otherwise pay for an empty claim after each request, run beside the
    // statement that finishes it, on the same two cores.
    let more = true;
    while (!this.stopped) {
      // At most one batch finishing while the next one is claimed: a database slower than the
      // model must slow the claims down, not pile up batches (and their pool connections).
      while (this.inFlight.size >= MAX_BATCHES) await Promise.race(this.inFlight);
      // At once if a notification came since the last claim went out (see Waker.arm); after a
      // poll interval without one, the whole queue (a lost notification, a stale request).
      if (!more && !(await this.waker.sleep(POLL_MS))) this.wholeQueue = true;
      if (this.stopped) break;
      this.waker.arm();
      // Only announced requests since the last claim: claimed by id, through the primary key.
      const ids: string[] | null = this.wholeQueue || more ? null : [...this.announced];
      this.announced.clear();
      this.wholeQueue = false;
      let rows: { id: string; input: unknown }[];
      let cached: CachedRow[];
      let held: Held | null;
      try {
        ({ rows, cached, held } = await this.claim(ids));
      } catch (err) {
        this.deps.log.warn(`claiming ${this.deps.model} embedding requests failed: ${(err as Error).message}`);
        more = false;
        this.wholeQueue = true;
        continue;
      }
      // A claim takes every claimable request up to its limits (BATCH_CLAIM_LIMIT of batch work
      // among them); one that took fewer than that left none behind, but for rows another
      // worker's claim had locked (that worker takes them).
      more = ids === null && rows.length >= BATCH_CLAIM_LIMIT;
      if (rows.length === 0) continue;
      // Resolves when this batch's model call is over: the next claim goes out then, while
      // this batch is still being written.
      let modelDone!: () => void;
      const modelFree = new Promise<void>((r) => (modelDone = r));
      const batch = this.process(rows, cached, modelDone, held).catch(async (err) => {
        modelDone();
        this.deps.log.error(`embedding batch of ${rows.length} failed: ${(err as Error).message}; re-queueing it`);
        // Back to the queue (waiting out a database restart); if even that fails, the rows are
        // reclaimed once stale (ai.claim_embeddings), so nothing is lost either way.
        await retryWhileUnavailable(() =>
          this.deps.pool.query(`update ai.requests set status = 'queued' where id = any($1) and status = 'running' and worker = $2`, [
            rows.map((r) => r.id),
            this.deps.workerId,
          ]),
        ).catch(() => {});
        // Claim them again (attempts count each claim, so a batch that keeps failing ends failed).
        this.wake();
      });
      this.inFlight.add(batch);
      void batch.finally(() => this.inFlight.delete(batch));
      await modelFree;
    }
  }

  /**
   * Claims a batch and reads the cache for its inputs in one statement (one round trip between
   * two model calls instead of two): rows of kind 'r' are the claimed requests, rows of kind
   * 'c' cached vectors of their inputs, keyed as cache-key.ts keys them (the SQL function is the
   * same digest), in pgvector's send format (bytes, as hex on the wire; node-pg cannot take
   * binary-mode results: it decodes every column as UTF-8 text).
   *
   * The cache is probed once per key through its primary key (the LATERAL ... LIMIT 1, which
   * the planner cannot flatten into a join): as a plain join, the planner hashed the model's
   * whole cache (a claim of one request read every cached vector of the model: 5 ms with 500
   * vectors, growing with the cache).
   */
  private async claim(ids: string[] | null): Promise<{ rows: { id: string; input: unknown }[]; cached: CachedRow[]; held: Held | null }> {
    // The cache's vectors for the claimed inputs (the same for both claims; $1 the model, $3 the fingerprint).
    // `kind`: of a claimed request's row, 'r', or 'l' when the claim took its wait lock.
    const withCache = (kind: string) => `k as (select distinct ai.embedding_cache_key($3::bytea, x) as h
                    from c, jsonb_array_elements(case when jsonb_typeof(c.input->'input') = 'array' then c.input->'input' else '[]' end) x)
       select ${kind} as kind, c.id::text as id, c.input, null::bytea as input_hash, null::bytea as embedding, null::int as tokens from c
       union all
       select 'c', null, null, e.input_hash, vector_send(e.embedding), e.tokens
         from k cross join lateral (select e.input_hash, e.embedding, e.tokens from ai.embedding_cache e
                                     where e.model = $1 and e.input_hash = k.h limit 1) e`;
    // Prepared once per connection: the statements are the same every time, and parsing and
    // planning one (a CTE, a union, a function scan) cost as much as running it on an empty queue.
    const query =
      ids === null
        ? {
            name: 'switchyard-embed-claim',
            text: `with c as materialized (select id, input from ai.claim_embeddings($1, $2, $4, p_batch_limit => $5)), ${withCache("'r'")}`,
            values: [this.deps.model, this.deps.workerId, this.deps.fingerprint, CLAIM_LIMIT, BATCH_CLAIM_LIMIT],
          }
        : {
            // Announced requests by id: what ai.claim_embeddings does for a queued interactive
            // request (running, this worker, an attempt more; committed asynchronously), found
            // through the primary key. ai.claim_embeddings walks the queue's index from its
            // oldest entry, and while a statement runs (an update that calls ai.embed per row)
            // no entry of the requests finished since it started can be removed: each claim
            // walked them all, so an update of n rows cost n² (1,000 rows: 4.5 ms per claim).
            name: 'switchyard-embed-claim-ids',
            text: `with s as (select set_config('synchronous_commit', 'off', true)),
            c as materialized (
              update ai.requests r
                 set status = 'running', started_at = clock_timestamp(), worker = $2, attempts = r.attempts + 1
                from s
               where r.id in (select q.id from ai.requests q
                               where q.id = any($4::uuid[]) and q.model = $1 and q.endpoint = 'embeddings'
                                 and q.status = 'queued' and q.priority = 0
                                 for update skip locked)
              returning r.id, r.input, pg_try_advisory_lock(ai._embed_wait_key(r.id)) as locked), ${withCache("case when c.locked then 'l' else 'r' end")}`,
            values: [this.deps.model, this.deps.workerId, this.deps.fingerprint, ids],
          };
    // A claim by id runs on a connection this batch keeps until its finish has committed: the
    // claim takes each request's wait lock there (ai._embed_wait_key), on which ai.embed's
    // caller waits instead of polling its row, and which the finish's commit releases (see run:
    // the finishing statement hands them to its transaction). A try, never a wait: a lock
    // someone else holds only sends that caller back to polling.
    const client = ids === null ? null : await this.deps.pool.connect();
    let rows: { kind: 'r' | 'l' | 'c'; id: string | null; input: unknown; input_hash: Buffer | null; embedding: Buffer | null; tokens: number | null }[];
    try {
      ({ rows } = await (client ?? this.deps.pool).query<(typeof rows)[number]>(query));
    } catch (err) {
      client?.release(err as Error);
      throw err;
    }
    const locked = rows.filter((r) => r.kind === 'l').map((r) => r.id!);
    let held: Held | null = null;
    if (client && locked.length > 0) held = { client, locked };
    else client?.release();
    return {
      rows: rows.filter((r) => r.kind !== 'c').map((r) => ({ id: r.id!, input: r.input })),
      cached: rows.filter((r) => r.kind === 'c').map((r) => ({ hash: r.input_hash!, embedding: r.embedding!, tokens: r.tokens! })),
      held,
    };
  }

  /** Every distinct input of a batch once, whichever requests share it, with what the cache had. */
  private prepare(rows: { id: string; input: unknown }[], cached: CachedRow[]): Prepared {
    const requests = rows.map((r) => ({ id: r.id, inputs: readInputs(r.input) }));
    const unique = new Map<string, Entry>();
    for (const r of requests) {
      for (const input of r.inputs ?? []) {
        const hash = cacheKey(this.deps.fingerprint, input);
        const key = hash.toString('hex');
        if (!unique.has(key)) unique.set(key, { input, hash });
      }
    }
    for (const row of cached) {
      const e = unique.get(row.hash.toString('hex'));
      if (e) Object.assign(e, { vector: fromVectorBinary(row.embedding), tokens: row.tokens });
    }
    return { requests, unique, missing: [...unique.values()].filter((e) => !e.vector) };
  }

  private async process(rows: { id: string; input: unknown }[], cached: CachedRow[], modelDone: () => void, held: Held | null): Promise<void> {
    try {
      await this.run(rows, cached, modelDone, held);
    } finally {
      // Whatever happened, the wait locks go: released by the finish path below, or with the
      // connection (destroyed rather than returned to the pool holding them).
      held?.client.release(held.released ? undefined : true);
    }
  }

  private async run(rows: { id: string; input: unknown }[], cached: CachedRow[], modelDone: () => void, held: Held | null): Promise<void> {
    const { pool, model } = this.deps;
    const { requests, unique, missing } = this.prepare(rows, cached);
    let calls: string[] = [];
    // How long this batch waited for the model (its call, as the claimer sees it), for the log.
    let modelMs = 0;
    try {
      if (missing.length > 0) {
        const t0 = performance.now();
        const result = await this.deps.embed(missing.map((e) => e.input));
        modelMs = Math.round((performance.now() - t0) * 10) / 10;
        calls = (result.calls ?? []).map((c) => `${this.deps.workerId}#${c}`);
        missing.forEach((e, k) => {
          const err = result.errors[k];
          if (err) e.error = err;
          else Object.assign(e, { vector: result.vectors[k]!, tokens: result.tokens[k]!, fresh: true });
        });
      }
    } finally {
      modelDone();
    }
    const outcomes = requests.map((r): Outcome => {
      if (!r.inputs) {
        const error: ErrorBody = { message: 'Stored request is invalid: input.input is not a list of texts or token-id lists.', type: 'server_error', param: null, code: 'invalid_stored_request' };
        return { id: r.id, status: 'failed', output: null, usage: null, error, event: { type: 'error', status: 500, error }, vectors: null };
      }
      const found = r.inputs.map((input) => unique.get(cacheKey(this.deps.fingerprint, input).toString('hex'))!);
      const bad = found.findIndex((e) => e.error);
      if (bad !== -1) {
        const e = found[bad]!.error!;
        const error = { ...e, message: `Invalid input[${bad}]: ${e.message}` };
        return { id: r.id, status: 'failed', output: null, usage: null, error, event: { type: 'error', status: 400, error }, vectors: null };
      }
      const promptTokens = found.reduce((s, e) => s + e.tokens!, 0);
      const fromCache = found.filter((e) => !e.fresh).length;
      const dims = found[0]!.vector!.length;
      const bytes = Buffer.allocUnsafe(found.length * dims * 4);
      found.forEach((e, i) => bytes.set(new Uint8Array(e.vector!.buffer, e.vector!.byteOffset, e.vector!.byteLength), i * dims * 4));
      return {
        id: r.id,
        status: 'completed',
        output: { dimensions: dims, cached: fromCache, model_calls: fromCache === found.length ? [] : calls, ...(fromCache === found.length ? {} : { model_ms: modelMs }) },
        usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
        error: null,
        event: { type: 'embedded', promptTokens },
        vectors: bytes,
      };
    });
    // One statement: the fresh vectors into the cache (binary parameters in pgvector's format,
    // one multi-row insert; a concurrent batch may have cached the same input first), and every
    // row's outcome, vectors and final event (ai.finish_embeddings), in one transaction, so a
    // waiter that sees the request completed finds its vectors in the cache too.
    const fresh = [...unique.values()].filter((e) => e.fresh);
    const offsets: number[] = [];
    const lengths: number[] = [];
    let at = 0;
    for (const o of outcomes) {
      offsets.push(at);
      lengths.push(o.vectors?.length ?? 0);
      at += o.vectors?.length ?? 0;
    }
    const values: unknown[] = [
      this.deps.workerId,
      outcomes.map((o) => o.id),
      outcomes.map((o) => o.status),
      outcomes.map((o) => toJsonb(o.output)),
      outcomes.map((o) => toJsonb(o.usage)),
      outcomes.map((o) => toJsonb(o.error)),
      outcomes.map((o) => toJsonb(o.event)),
      // A Buffer goes as a binary parameter: the bytes themselves, not hex text.
      Buffer.concat(outcomes.flatMap((o) => (o.vectors ? [o.vectors] : []))),
      offsets,
      lengths,
      model,
    ];
    const rowsSql = fresh.map((e) => {
      values.push(e.hash, toVectorBinary(e.vector!), e.tokens!);
      const n = values.length;
      return `($11, $${n - 2}::bytea, $${n - 1}::vector, $${n}::int)`;
    });
    const text = `${rowsSql.length > 0 ? `with c as (insert into ai.embedding_cache (model, input_hash, embedding, tokens) values ${rowsSql.join(', ')} on conflict do nothing) ` : ''}
      select ai.finish_embeddings($1, $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::jsonb[], $8::bytea, $9::int[], $10::int[]), $11::text`;
    // Prepared once per connection for the usual shapes (a few fresh vectors: ai.embed per row,
    // a few concurrent requests), whose text is then the same every time; a larger batch's
    // statement is parsed and planned each time (its planning is small beside its model call).
    const name = fresh.length <= PREPARED_FINISH_MAX ? `switchyard-embed-finish-${fresh.length}` : undefined;
    if (held) {
      // On the connection that holds the wait locks, which the same statement hands over to its
      // own transaction (ai._embed_hand_over): they are released by its commit, so each waiting
      // caller wakes as the finish commits and finds its row completed, with no unlock round
      // trip after it.
      try {
        await held.client.query({ name: name && `${name}-held`, text: `${text}, ai._embed_hand_over($${values.length + 1}::uuid[])`, values: [...values, held.locked] });
        held.released = true;
        return;
      } catch (err) {
        // The connection is destroyed (see process), which releases any lock still held; a
        // finish that did not go through is retried on another connection.
        if (!isDatabaseUnavailable(err)) throw err;
      }
    }
    await retryWhileUnavailable(() => pool.query({ name, text, values }));
  }
}

/** A claim by id's connection, kept until the batch's finish, and the wait locks it holds. */
interface Held {
  client: pg.PoolClient;
  locked: string[];
  released?: boolean;
}
