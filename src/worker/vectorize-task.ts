import pg from 'pg';
import type { Task } from 'graphile-worker';
import type { LogFn } from '../log.js';
import type { ErrorBody } from '../protocol/errors.js';
import { toJsonb } from '../db/jsonb.js';
import type { ModelSpec } from './models-source.js';
import { format, readChunking, split, type Chunking, type ChunkTokenizer } from './vectorize/chunking.js';

/** The graphile-worker task identifier of a model's vectorizer jobs (see sql/040_vectorizers.sql). */
export const vectorizeTaskName = (model: string): string => `vectorize:${model}`;

/** What this task needs of an embedding call: a subset of EmbeddingResult (model-host.ts). */
export interface VectorizeEmbedding {
  /** Full-dimension vectors, one per input; null where the input was rejected. */
  vectors: (Float32Array | null)[];
  errors: (ErrorBody | null)[];
}

export interface VectorizeTaskDeps {
  pool: pg.Pool;
  /** One model call's worth of inputs (the worker passes its model's batcher). */
  embed(inputs: (string | number[])[]): Promise<VectorizeEmbedding>;
  log: { info: LogFn; warn: LogFn; error: LogFn };
  /** How long one job runs batches before it hands over to a fresh job (default 60 s). */
  sliceMs?: number;
  /** The model's tokenizer, for the token splitter (loaded on first use). */
  tokenizer?: () => Promise<ChunkTokenizer>;
}

/** How a vectorizer turns a row into inputs: null chunking is one vector per row. */
interface Shape {
  dimensions: number;
  chunking: Chunking | null;
  formatting: string | null;
}

interface ClaimedItem {
  pk: unknown;
  ids: string[];
  attempts: number;
  /** The row's current text; null when the row is gone or its text is null. */
  input: string | null;
  /** The whole row, for a formatting template (else null). */
  source?: Record<string, unknown> | null;
}

interface ChunkResult {
  seq: number;
  chunk: string;
  embedding: string;
}

type ItemResult = { pk: unknown; ids: string[]; attempts: number; embedding?: string; chunks?: ChunkResult[]; error?: ErrorBody };

export function readVectorizerId(payload: unknown): number {
  const id = (payload as { vectorizer_id?: unknown } | null)?.vectorizer_id;
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 1) throw new Error(`job payload has no valid vectorizer_id: ${JSON.stringify(payload)}`);
  return id;
}

const itemError = (message: string, code: string): ErrorBody => ({ message, type: 'server_error', param: null, code });

/** The model thread words a rejection as a clause about the input ("it is an empty string."). */
const forRow = (e: ErrorBody): ErrorBody => ({ ...e, message: `Invalid text: ${e.message.replace(/^Input \d+ /, 'it ')}` });

/** The outcome of one claimed key: a vector, a removal (input null), or an error. */
function outcome(item: ClaimedItem, index: Map<string, number>, result: VectorizeEmbedding | null, dimensions: number): ItemResult {
  const base = { pk: item.pk, ids: item.ids, attempts: item.attempts };
  if (item.input === null) return base;
  const k = index.get(item.input)!;
  const error = result!.errors[k];
  if (error) return { ...base, error: forRow(error) };
  const v = result!.vectors[k];
  if (!v) return { ...base, error: itemError('The model returned no vector for this text.', 'no_vector') };
  if (v.length !== dimensions) {
    return { ...base, error: itemError(`The model returned ${v.length} dimensions; this vectorizer's destination holds ${dimensions}.`, 'dimension_mismatch') };
  }
  return { ...base, embedding: vectorText(v) };
}

// Float32 values printed as JS numbers: pgvector parses them back to the same float32.
const vectorText = (v: Float32Array): string => `[${Array.prototype.join.call(v, ',')}]`;

/**
 * A chunking vectorizer's outcome of one key: all its chunks with their vectors (none when the
 * row is gone, its text null or empty), or the first chunk's error: the key is retried, then
 * parked, as a whole, so its chunks are never half replaced.
 */
function chunkedOutcome(item: ClaimedItem, chunks: string[], texts: string[], index: Map<string, number>, result: VectorizeEmbedding | null, dimensions: number): ItemResult {
  const base = { pk: item.pk, ids: item.ids, attempts: item.attempts };
  const out: ChunkResult[] = [];
  for (let seq = 0; seq < chunks.length; seq++) {
    const k = index.get(texts[seq]!)!;
    const error = result!.errors[k];
    const where = chunks.length > 1 ? `chunk ${seq} of ${chunks.length}: ` : '';
    if (error) return { ...base, error: { ...forRow(error), message: `${where}${forRow(error).message}` } };
    const v = result!.vectors[k];
    if (!v) return { ...base, error: itemError(`${where}The model returned no vector for this text.`, 'no_vector') };
    if (v.length !== dimensions) {
      return { ...base, error: itemError(`${where}The model returned ${v.length} dimensions; this vectorizer's destination holds ${dimensions}.`, 'dimension_mismatch') };
    }
    out.push({ seq, chunk: chunks[seq]!, embedding: vectorText(v) });
  }
  return { ...base, chunks: out };
}

interface Batch {
  client: pg.PoolClient;
  items: ClaimedItem[];
}

async function abort(client: pg.PoolClient): Promise<void> {
  let broken: Error | undefined;
  await client.query('rollback').catch((e: Error) => (broken = e));
  client.release(broken);
}

/**
 * Opens a batch's transaction and claims its items (FOR UPDATE SKIP LOCKED) with their rows'
 * text. The transaction stays open until finishBatch commits it, or abort rolls it back (the
 * items are then simply due again).
 */
async function claimBatch(pool: pg.Pool, id: number, owner: string, chunked: boolean): Promise<Batch | 'gone' | 'empty'> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    // The batch runs as the vectorizer's owner (the role that owns its source and destination):
    // whatever its triggers on the destination do runs with that role's rights, never the
    // worker's. ai.grant_usage makes the worker's role a member of the application role.
    await client.query(`set local role ${pg.escapeIdentifier(owner)}`).catch((err: Error) => {
      throw new Error(`vectorizer ${id}: cannot run as its owner ${owner} (${err.message}); run select ai.grant_usage('${owner}') as the schema's owner`);
    });
    const state = (await client.query<{ state: 'ok' | 'gone' }>('select ai._vectorizer_begin($1) as state', [id])).rows[0]!.state;
    const claim = chunked ? 'select pk, ids, attempts, input, source from ai._vectorizer_claim_rows($1)' : 'select pk, ids, attempts, input from ai._vectorizer_claim($1)';
    const items = state === 'ok' ? (await client.query<ClaimedItem>(claim, [id])).rows : [];
    if (items.length > 0) return { client, items };
    await client.query('commit');
    client.release();
    return state === 'gone' ? 'gone' : 'empty';
  } catch (err) {
    await abort(client);
    throw err;
  }
}

/** Where a job's time went (summed over its batches), for its log line and the bench. */
interface JobClock {
  batches: number;
  chunks: number;
  /** Opening a batch's transaction and claiming its items with their text. */
  claim: number;
  /** Splitting and formatting. */
  split: number;
  /** Waiting for the model's vectors. */
  model: number;
  /** Writing a batch's outcome and committing (overlapped with the next batch's model call). */
  write: number;
  /** Of `write`: the time the next batch waited for it, the model done. */
  waited: number;
  /** Of `claim`: the time the job waited for a claim (the rest overlapped the model). */
  waitedClaim: number;
  /** Building the deferred HNSW index. */
  index: number;
}

async function embedBatch(items: ClaimedItem[], shape: Shape, deps: VectorizeTaskDeps, clock: JobClock): Promise<ItemResult[]> {
  const { dimensions, chunking, formatting } = shape;
  if (chunking) {
    const tokenizer = chunking.implementation === 'tokens' ? await deps.tokenizer!() : null;
    let t = performance.now();
    const chunks = items.map((i) => (i.input === null ? [] : split(i.input, chunking, tokenizer)));
    const texts = items.map((i, n) => (formatting === null ? chunks[n]! : chunks[n]!.map((c) => format(formatting, c, i.source ?? null))));
    // Identical texts (a repeated paragraph, copies of a document) are embedded once.
    const unique = [...new Set(texts.flat())];
    const index = new Map(unique.map((t, k) => [t, k]));
    clock.split += performance.now() - t;
    clock.chunks += unique.length;
    t = performance.now();
    const result = unique.length > 0 ? await deps.embed(unique) : null;
    clock.model += performance.now() - t;
    return items.map((item, n) => chunkedOutcome(item, chunks[n]!, texts[n]!, index, result, dimensions));
  }
  // Identical texts (copies of a document) are embedded once.
  const texts = [...new Set(items.flatMap((i) => (i.input === null ? [] : [i.input])))];
  const index = new Map(texts.map((t, k) => [t, k]));
  clock.chunks += texts.length;
  const t = performance.now();
  const result = texts.length > 0 ? await deps.embed(texts) : null;
  clock.model += performance.now() - t;
  return items.map((item) => outcome(item, index, result, dimensions));
}

async function finishBatch(batch: Batch, id: number, results: ItemResult[]): Promise<void> {
  try {
    await batch.client.query('select ai._vectorizer_finish($1, $2::jsonb)', [id, toJsonb(results)]);
    await batch.client.query('commit');
  } catch (err) {
    await abort(batch.client);
    throw err;
  }
  batch.client.release();
}

/**
 * Builds a vectorizer's deferred HNSW index (ai._vectorizer_build_index: once every item its
 * backfill queued has been tried), in a transaction of its own as the vectorizer's owner, who
 * owns the destination. Whether it was built.
 */
async function buildIndex(pool: pg.Pool, id: number, owner: string): Promise<boolean> {
  const client = await pool.connect();
  let built: boolean;
  try {
    await client.query('begin');
    await client.query(`set local role ${pg.escapeIdentifier(owner)}`);
    built = (await client.query<{ built: boolean }>('select ai._vectorizer_build_index($1) as built', [id])).rows[0]!.built;
    await client.query('commit');
  } catch (err) {
    await abort(client);
    throw err;
  }
  client.release();
  return built;
}

/**
 * The graphile-worker task `vectorize:<model>` (payload {"vectorizer_id": N}): runs batches of
 * that vectorizer until nothing is due, then settles (see ai._vectorizer_settle: the handshake
 * with writers, the retry job for backed-off items). Batches are pipelined, each in its own
 * transaction: while one batch is with the model, the next one is claimed, and the previous
 * one's rows are written, so the model waits for neither (the job logs where its time went:
 * claim, split, model, write, index). After `sliceMs` the job hands over to a fresh job, so a
 * long backfill does not hold a worker slot (and its job lock) for hours.
 *
 * A batch that throws (the model thread died, the database went away) is rolled back, so its
 * items are due again, and the job throws: graphile-worker retries it with backoff.
 *
 * A vectorizer created over a table with rows has no HNSW index until its backfill is done: the
 * job that finds the backfill's items all tried builds it (buildIndex) before it ends.
 */
export function vectorizeTask(spec: ModelSpec, deps: VectorizeTaskDeps): Task {
  const sliceMs = deps.sliceMs ?? 60_000;
  return async (payload, helpers) => {
    const id = readVectorizerId(payload);
    const row = (
      await deps.pool.query<{ dimensions: number; model: string; owner: string; chunking: unknown; formatting: string | null; index_pending: boolean }>(
        'select dimensions, model, owner, chunking, formatting, index_pending from ai.vectorizers where id = $1',
        [id],
      )
    ).rows[0];
    if (!row) return; // dropped
    const shape: Shape = { dimensions: row.dimensions, chunking: row.chunking === null ? null : readChunking(row.chunking), formatting: row.formatting };
    if (shape.chunking?.implementation === 'tokens' && !deps.tokenizer) throw new Error(`vectorizer ${id}: the token splitter needs the model's tokenizer`);
    if (row.model !== spec.name) deps.log.warn(`vectorizer ${id} now uses model ${row.model}, but this job was queued for ${spec.name}`);
    const started = Date.now();
    const clock: JobClock = { batches: 0, chunks: 0, claim: 0, waitedClaim: 0, split: 0, model: 0, write: 0, waited: 0, index: 0 };
    let handled = 0;
    let idleRounds = 0;
    let dropped = false;
    for (;;) {
      // The previous batch's commit, settled to its error (or null) so that a failure while
      // the next batch is with the model is never an unhandled rejection.
      let writing: Promise<unknown> | null = null;
      let gone = false;
      let progressed = false;
      let thrown: unknown = null;
      // The next batch, claimed while this one is with the model (so that the model does not
      // wait for the claim's round trips): null when none was claimed ahead.
      // Settled to a value, so that a claim failing while the model runs is never an unhandled rejection.
      let next: Promise<{ batch: Batch | 'gone' | 'empty' } | { error: unknown }> | null = null;
      const claim = () => {
        const t = performance.now();
        return claimBatch(deps.pool, id, row.owner, shape.chunking !== null).then(
          (batch) => ((clock.claim += performance.now() - t), { batch }),
          (error: unknown) => ({ error: error ?? new Error('the claim failed') }),
        );
      };
      try {
        if (Date.now() - started < sliceMs) next = claim();
        while (next) {
          let t = performance.now();
          const claimed = await next;
          clock.waitedClaim += performance.now() - t;
          next = null;
          if ('error' in claimed) throw claimed.error;
          const batch = claimed.batch;
          if (batch === 'gone') gone = true;
          if (typeof batch === 'string') break;
          // Claimed in its own transaction: the items this batch holds are skipped, and a key
          // with an item held here is not taken (ai._vectorizer_claim_rows).
          if (Date.now() - started < sliceMs) next = claim();
          let results: ItemResult[] = [];
          let failure: unknown = null;
          try {
            results = await embedBatch(batch.items, shape, deps, clock);
            // The previous batch commits before this one writes.
            t = performance.now();
            failure = writing && (await writing);
            clock.waited += performance.now() - t;
            writing = null;
          } catch (err) {
            failure = err;
          }
          if (failure) {
            await abort(batch.client);
            throw failure;
          }
          handled += batch.items.length;
          clock.batches++;
          progressed = true;
          const writeStarted = performance.now();
          writing = finishBatch(batch, id, results).then(
            () => {
              clock.write += performance.now() - writeStarted;
              return null;
            },
            (err: unknown) => err ?? new Error('the batch failed'),
          );
        }
      } catch (err) {
        thrown = err;
      }
      // A batch claimed ahead and not run (a failure): rolled back, its items due again.
      if (next) {
        const ahead = await (next as Promise<{ batch: Batch | 'gone' | 'empty' } | { error: unknown }>);
        if ('error' in ahead) thrown ??= ahead.error;
        else if (typeof ahead.batch !== 'string') await abort(ahead.batch.client);
      }
      // Whatever happened, the last batch is committed (or rolled back) before going on.
      const t = performance.now();
      const lastFailure = writing && (await writing);
      clock.waited += performance.now() - t;
      if (thrown || lastFailure) throw thrown || lastFailure;
      if (gone) {
        dropped = true;
        break;
      }
      idleRounds = progressed ? 0 : idleRounds + 1;
      // Slice used up, or items due but none claimable (held by others) over and over: hand over.
      const handOver = Date.now() - started >= sliceMs || idleRounds > 3;
      const state = (
        await deps.pool.query<{ state: string }>('select ai._vectorizer_settle($1, $2, $3) as state', [id, handOver, helpers.job.key])
      ).rows[0]!.state;
      if (state !== 'more') break;
    }
    let indexed = false;
    if (row.index_pending && !dropped) {
      const t = performance.now();
      indexed = await buildIndex(deps.pool, id, row.owner);
      clock.index = performance.now() - t;
    }
    const ms = (v: number) => Math.round(v);
    if (indexed) deps.log.info(`vectorizer ${id}: built the HNSW index of its destination in ${ms(clock.index)} ms (backfill done)`);
    if (handled > 0) {
      deps.log.info(
        `vectorizer ${id}: ${handled} rows, ${clock.chunks} chunks in ${Date.now() - started} ms (batches ${clock.batches}; claim ${ms(clock.claim)} ms of which ${ms(clock.waitedClaim)} ms waited on, ` +
          `split ${ms(clock.split)} ms, model ${ms(clock.model)} ms, write ${ms(clock.write)} ms of which ${ms(clock.waited)} ms waited on; index ${ms(clock.index)} ms)`,
      );
    }
  };
}
