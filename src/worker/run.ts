import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { makeWorkerUtils, run, type Runner, type TaskList, type WorkerEvents } from 'graphile-worker';
import { openDatabase } from '../db/pool.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { PgListener } from '../db/listener.js';
import { listModels } from '../db/models-repo.js';
import type { ModelRow } from '../db/types.js';
import { graphileLogger, logger } from '../log.js';
import { heartbeat, register, unregister } from '../db/workers-repo.js';
import { Reaper, workerTimeoutMs } from '../engine/reaper.js';
import { PgBatchStore } from '../db/batches-repo.js';
import { sweepBatches } from '../serving/batches.js';
import { runChatRequest } from './chat-task.js';
import { ChatClaimer } from './chat-claimer.js';
import { EmbedClaimer } from './embedding/claimer.js';
import { RerankClaimer } from './rerank/claimer.js';
import { ModerationClaimer, moderationLoader, type LoadedModeration } from './moderation/claimer.js';
import { ModerationHost } from './moderation/host.js';
import { vectorizeTask, vectorizeTaskName } from './vectorize-task.js';
import type { ChunkTokenizer } from './vectorize/chunking.js';
import { EmbedBatcher } from './embedding/batcher.js';
import { modelFingerprint } from './embedding/cache-key.js';
import { ModelHost } from './model-host.js';
import { tuneWorkerHeap } from './heap.js';
import { EventFlusher } from './flusher.js';
import { batchLimitsFromEnv } from './generation/limits.js';
import type { ModelSpec } from './models-source.js';

export interface WorkerOptions {
  databaseUrl: string;
  modelsDir: string | undefined;
  /** Names or aliases to serve; default: every registered model this worker can run. */
  models?: string[];
  /** Overrides each model's registered device. */
  device?: 'cpu' | 'cuda';
  /** Chat requests in flight at once (default SWITCHYARD_MAX_BATCH, 16): they share each decode step. */
  concurrency?: number;
  /** Vectorizer jobs in flight at once (default 4); they share each model's batcher. */
  embedConcurrency?: number;
}

export interface RunningWorker {
  readonly workerId: string;
  models: string[];
  stop(): Promise<void>;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function toSpec(row: ModelRow, device: 'cpu' | 'cuda' | undefined): ModelSpec {
  return {
    name: row.name,
    task: row.task,
    source: row.source,
    revision: row.revision,
    dtype: row.dtype,
    device: device ?? row.device,
    chatTemplate: row.chat_template,
    contextLength: row.context_length,
    pooling: row.pooling,
    normalize: row.normalize,
    truncate: row.truncate,
    ...(row.task === 'moderation' ? { moderation: row.moderation } : {}),
  };
}

export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const log = logger('worker');
  // Before the model threads start: their heaps are where the growing factor matters (heap.ts).
  tuneWorkerHeap();
  const workerId = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  // Asynchronous commit: every write a worker makes (claiming a job, events, results, job
  // completion) is redone if a database crash loses it, because the job then runs again; the
  // request itself was committed durably by the gateway. Saves several fsyncs per request.
  const database = openDatabase(opts.databaseUrl, { max: 24, applicationName: 'switchyard-worker', asyncCommit: true });
  let rows = await listModels(database.db);
  // A fresh deployment (docker compose) may start workers before anyone registered a model:
  // wait for one instead of exiting into a restart loop.
  for (let waited = 0; !opts.models?.length && rows.length === 0; waited++) {
    if (waited % 12 === 0) log.warn('no models registered yet; waiting (switchyard models add NAME --task chat|embedding --source ...)');
    await new Promise((r) => setTimeout(r, 5000));
    rows = await listModels(database.db);
  }
  const wanted = opts.models?.length ? new Set(opts.models) : null;
  const chosen = rows.filter((r) => !wanted || wanted.has(r.name) || r.aliases.some((a) => wanted.has(a)));
  if (wanted) {
    const known = new Set(chosen.flatMap((r) => [r.name, ...r.aliases]));
    const missing = [...wanted].filter((w) => !known.has(w));
    if (missing.length) {
      await database.close();
      throw new Error(`unknown model(s): ${missing.join(', ')}. Register them first: switchyard models add NAME --task chat --source ...`);
    }
  }
  const host = new ModelHost(opts.modelsDir, log);
  const moderation = new ModerationHost(opts.modelsDir, log);
  /** Moderation models' claimers load them (and resolve their label mapping) once, for every shift. */
  const moderators = new Map<string, () => Promise<LoadedModeration>>();
  const served = new Map<string, ModelSpec>();
  const batchers = new Map<string, EmbedBatcher>();
  let stopping = false;

  /**
   * Everything this process does under one worker id: its chat claimer, its embedding claimers
   * and its job runner (vectorizers).
   * A reaper that took the worker for dead (paused, or cut off from the database, for longer
   * than SWITCHYARD_WORKER_TIMEOUT) has re-queued its requests and released its jobs to others;
   * when the heartbeat then finds the row gone, the shift ends: its runners and claimers stop
   * taking work, its generations stop (their writes would be refused anyway, see
   * sql/010_events.sql), and a new shift starts under a new id. Re-registering rather than
   * exiting keeps the loaded models, and keeps a worker that no supervisor restarts serving,
   * e.g. when a network partition got every worker reaped.
   */
  interface Shift {
    id: string;
    abort: AbortController;
    runners: Set<JobRunner>;
    /** Per embedding, rerank or moderation model: woken by 'ai_embed' notifications naming it. */
    claimers: Map<string, Pick<EmbedClaimer, 'start' | 'wake' | 'stop'>>;
    /** Claims and runs the chat and completions requests of every chat model served here. */
    chat: ChatClaimer;
    /** Writes the stream events of all its chat requests, many per statement. */
    flusher: EventFlusher;
  }
  /** A graphile-worker runner, and its ids: what its job locks name, kept in the heartbeat. */
  interface JobRunner {
    runner: Runner | null;
    ids: string[];
    /** Set once it is shutting down (asked by us, or by graphile-worker itself). */
    stopped: Promise<void> | null;
    asked: boolean;
  }
  const newShift = (): Shift => {
    const id = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
    const abort = new AbortController();
    const flusher = new EventFlusher(database.pool);
    const chat = new ChatClaimer({
      pool: database.pool,
      workerId: id,
      log,
      capacity: opts.concurrency ?? batchLimitsFromEnv().maxSequences,
      stopping: () => host.runningIds(),
      run: (row) => runChatRequest(served.get(row.model)!, { pool: database.pool, host, workerId: id, log, signal: abort.signal, flusher }, row),
    });
    return { id, abort, runners: new Set(), claimers: new Map(), chat, flusher };
  };
  const jobWorkerIds = (s: Shift) => [...s.runners].flatMap((r) => r.ids);
  const stopRunner = (r: JobRunner): Promise<void> => {
    r.asked = true; // before stop(): graphile-worker announces the shutdown from inside it
    return (r.stopped ??= r.runner?.stop().catch(() => {}) ?? Promise.resolve());
  };
  let shift = newShift();
  /** Ended shifts winding down (their runners finish the jobs they were stopping). */
  const ending: Promise<unknown>[] = [];
  /** Serialises changes to what runs: new models, restarted runners, new shifts. */
  let changing = Promise.resolve();

  /**
   * Starts serving models: loads them, and staffs the current shift with their tasks. Called at
   * start and again when models are registered while the worker runs.
   */
  async function serve(rows: ModelRow[]): Promise<ModelSpec[]> {
    const specs = rows.filter((r) => !served.has(r.name)).map((r) => toSpec(r, opts.device));
    for (const spec of specs) {
      served.set(spec.name, spec);
      if (spec.task === 'moderation') {
        const load = moderationLoader(moderation, spec);
        moderators.set(spec.name, load);
        load().catch((err: Error) => log.error(err.message));
        continue;
      }
      if (spec.task === 'embedding') batchers.set(spec.name, new EmbedBatcher(host, spec));
      // Load now, so a misconfiguration shows at once, not at the first request. A failure is
      // logged, not fatal: requests for that model then fail with the same message.
      host.load(spec).then(
        async (info) => {
          // What the gateway needs to refuse what the model cannot take before queueing it
          // (waits a database restart out; a failure only costs serve's early refusals).
          await retryWhileUnavailable(() =>
            database.pool.query(
              `update ai.models set dimensions = coalesce($2, dimensions), input_bound = $3::jsonb
                where name = $1 and (dimensions is distinct from coalesce($2, dimensions) or input_bound is distinct from $3::jsonb)`,
              [spec.name, spec.task === 'embedding' ? info.dimensions || null : null, info.inputBound && JSON.stringify(info.inputBound)],
            ),
          ).catch((err: Error) => log.warn(`recording what model ${spec.name} takes failed: ${err.message}`));
        },
        (err: Error) => log.error(err.message),
      );
    }
    await staff(shift, specs);
    return specs;
  }

  /**
   * The shift's work for these models: chat requests are claimed by the shift's chat claimer
   * (chat-claimer.ts), embedding requests in batches by a claimer per model (see claimer.ts),
   * and vectorizer jobs run in a graphile-worker runner.
   */
  async function staff(s: Shift, specs: ModelSpec[]): Promise<void> {
    const deps = { pool: database.pool, workerId: s.id, log };
    const embedTasks: TaskList = {};
    const chatModels = specs.filter((spec) => spec.task === 'chat').map((spec) => spec.name);
    if (chatModels.length) s.chat.serve(chatModels);
    for (const spec of specs) {
      if (spec.task === 'moderation') {
        const claimer = new ModerationClaimer({ ...deps, spec, host: moderation, load: moderators.get(spec.name)! });
        s.claimers.set(spec.name, claimer);
        claimer.start();
      } else if (spec.task === 'rerank') {
        const claimer = new RerankClaimer({ ...deps, model: spec.name, rerank: (inputs) => host.rerank(spec, inputs) });
        s.claimers.set(spec.name, claimer);
        claimer.start();
      } else if (spec.task !== 'chat') {
        const batcher = batchers.get(spec.name)!;
        const claimer = new EmbedClaimer({ ...deps, model: spec.name, fingerprint: modelFingerprint(spec), embed: (inputs) => batcher.submit(inputs, true) });
        s.claimers.set(spec.name, claimer);
        claimer.start();
        let tokenizer: Promise<ChunkTokenizer> | null = null;
        embedTasks[vectorizeTaskName(spec.name)] = vectorizeTask(spec, {
          pool: database.pool,
          embed: (inputs) => batcher.submit(inputs),
          log,
          // The token splitter's tokenizer, loaded once, when first needed (transformers.js is
          // otherwise only loaded in the model thread); a failed load is tried again next time.
          tokenizer: () =>
            (tokenizer ??= import('./loader.js')
              .then((l) => l.loadTokenizer(spec, opts.modelsDir) as Promise<ChunkTokenizer>)
              .catch((err: unknown) => ((tokenizer = null), Promise.reject(err)))),
        });
      }
    }
    if (Object.keys(embedTasks).length > 0) await startRunner(s, embedTasks, opts.embedConcurrency ?? 4);
  }

  async function startRunner(s: Shift, taskList: TaskList, concurrency: number): Promise<void> {
    const entry: JobRunner = { runner: null, ids: [], stopped: null, asked: false };
    s.runners.add(entry);
    // Our emitter, listened to before run(): its job runners are created during run().
    const events: WorkerEvents = new EventEmitter();
    events.on('worker:create', ({ worker }) => entry.ids.push(worker.workerId));
    // graphile-worker shuts a runner down when its 'worker:migrate' channel announces a breaking
    // migration, and anyone may NOTIFY that. One that stops without being asked finishes its
    // jobs and is forgotten, and another starts: run() checks the schema itself and refuses one
    // this version cannot use.
    events.on('pool:gracefulShutdown', () => {
      if (entry.asked || !entry.runner) return;
      entry.stopped = entry.runner.promise.catch(() => {}).then(() => void s.runners.delete(entry));
      if (stopping || s !== shift) return;
      log.warn('a job runner shut down unasked (a NOTIFY on worker:migrate?); starting another');
      setTimeout(() => {
        changing = changing
          .then(() => (stopping || s !== shift ? undefined : startRunner(s, taskList, concurrency)))
          .catch((err: Error) => log.error(`restarting a job runner failed: ${err.message}`));
      }, 1000).unref();
    });
    try {
      // New jobs arrive with graphile-worker's 'jobs:insert' notification; the poll finds jobs
      // scheduled for later (a vectorizer's deferred batch, 500 ms; its retries) and notifications
      // lost to a reconnect. Each idle runner slot polls: 4 slots at 2 s are 2 commits/s per worker.
      entry.runner = await run({ pgPool: database.pool, concurrency, taskList, events, noHandleSignals: true, pollInterval: 2000, logger: graphileLogger });
    } catch (err) {
      s.runners.delete(entry);
      throw err;
    }
  }

  // A worker without --models serves every model, including ones registered after it started
  // (an SDK registering a model on the fly, `models add`): ai.models notifies 'ai_models'. The
  // payload is not trusted (anyone may NOTIFY): it only prompts a read of ai.models, and a burst
  // of notifications queues at most one more read.
  let pickUpQueued = false;
  const pickUpNewModels = () => {
    if (wanted || stopping || pickUpQueued) return;
    pickUpQueued = true;
    changing = changing
      .then(async () => {
        pickUpQueued = false;
        if (stopping) return;
        const added = await serve(await listModels(database.db));
        if (added.length) log.info(`now also serving ${added.map((s) => `${s.name} (${s.task})`).join(', ')}`);
      })
      .catch((err: Error) => log.error(`picking up new models failed: ${err.message}`));
  };

  // 'ai_cancel' names a request to stop, but anyone may NOTIFY it: a generation running here
  // stops only once its row says 'cancelled'. Names that arrive together share one query.
  const toCancel = new Set<string>();
  let checkingCancels: Promise<void> | null = null;
  const checkCancels = (): void => {
    if (checkingCancels || toCancel.size === 0) return;
    checkingCancels = new Promise<void>((resolve) => setImmediate(resolve))
      .then(async () => {
        const ids = [...toCancel];
        toCancel.clear();
        const r = await database.pool.query<{ id: string }>(`select id::text from ai.requests where id = any($1::uuid[]) and status = 'cancelled'`, [ids]);
        for (const { id } of r.rows) host.cancel(id);
      })
      // A missed cancellation still stops the generation at its next flush: the database refuses
      // events for a request that is no longer running (see publisher.ts).
      .catch((err: Error) => log.warn(`checking cancellations failed: ${err.message}`))
      .finally(() => {
        checkingCancels = null;
        checkCancels();
      });
  };

  // One LISTEN connection: cancellations, new embedding requests, new models. Payloads are
  // hints (anyone may NOTIFY): a model name only wakes the claimer of a model served here.
  const listener = new PgListener({
    connectionString: opts.databaseUrl,
    channels: ['ai_cancel', 'ai_chat', 'ai_embed', 'ai_models'],
    log,
    onNotification: (channel, payload) => {
      if (channel === 'ai_cancel') {
        if (UUID.test(payload) && host.isRunning(payload)) {
          toCancel.add(payload);
          checkCancels();
        }
      } else if (channel === 'ai_chat') shift.chat.wakeFor(payload);
      else if (channel === 'ai_embed') {
        // 'model', or 'model request-id' for one request (ai.embed from SQL): a hint the claimer
        // may claim by id (sql/030_embed.sql).
        const [model, id] = payload.split(' ', 2) as [string, string | undefined];
        if (id === undefined) shift.claimers.get(model)?.wake();
        else if (UUID.test(id)) shift.claimers.get(model)?.wake(id);
      }
      else pickUpNewModels();
    },
    onConnected: () => {
      shift.chat.wake();
      for (const c of shift.claimers.values()) c.wake();
      pickUpNewModels();
    },
  });

  let lastSteps = new Map<string, { steps: number; sequences: number; tokens: number; ms: number }>();
  const reportBatches = () => {
    const now = new Map<string, { steps: number; sequences: number; tokens: number; ms: number }>();
    for (const [name, s] of Object.entries(host.batchStats)) {
      now.set(name, { steps: s.steps, sequences: s.stepSequences, tokens: s.decodeTokens, ms: s.decodeMs });
      const before = lastSteps.get(name) ?? { steps: 0, sequences: 0, tokens: 0, ms: 0 };
      const steps = s.steps - before.steps;
      if (steps === 0) continue;
      const tps = ((s.decodeTokens - before.tokens) * 1000) / Math.max(1, s.decodeMs - before.ms);
      log.info(`chat ${name}: ${steps} decode steps, mean batch ${((s.stepSequences - before.sequences) / steps).toFixed(1)}, ${tps.toFixed(0)} tokens/s while decoding`);
    }
    lastSteps = now;
    for (const [name, b] of batchers) {
      if (b.stats.calls === 0) continue;
      const sizes = [...b.stats.sizes].sort((x, y) => x[0] - y[0]).map(([size, n]) => `${size}×${n}`).join(' ');
      log.info(`embeddings ${name}: ${b.stats.inputs} inputs in ${b.stats.calls} model calls (batch size × calls: ${sizes})`);
      b.stats.calls = 0;
      b.stats.inputs = 0;
      b.stats.sizes.clear();
    }
  };
  const statsTimer = setInterval(reportBatches, 10_000);
  statsTimer.unref();

  // Heartbeats say this worker is alive; a reaper (here and in every serve) releases the jobs
  // of workers that fell silent. The beat is a third of the threshold, so two can be late.
  const timeoutMs = workerTimeoutMs();
  const record = (s: Shift) => ({ id: s.id, hostname: hostname(), pid: process.pid, models: [...served.keys()] });
  /** Ends a shift whose row a reaper deleted, and starts the next (see Shift). */
  const endShift = async (old: Shift) => {
    const next = newShift();
    shift = next;
    old.abort.abort(); // chat tasks stop their generations, and throw
    log.warn(
      `worker ${old.id} was taken for dead (silent for over ${timeoutMs / 1000} s: paused, or cut off from the database) ` +
        `and its work given to others: abandoning what it ran, and going on as worker ${next.id}`,
    );
    // No new work under the old id from here; what it runs winds down in the background.
    ending.push(old.chat.stop(), ...[...old.claimers.values()].map((c) => c.stop().catch(() => {})), ...[...old.runners].map(stopRunner));
    await register(database.pool, record(next), []);
    await staff(next, [...served.values()]);
  };
  let beating: Promise<void> | null = null;
  const beat = (): Promise<void> =>
    (beating ??= (async () => {
      const s = shift;
      if (await heartbeat(database.pool, record(s), jobWorkerIds(s), host.batchStats)) return;
      if (stopping || s !== shift) return;
      changing = changing.then(() => (s === shift && !stopping ? endShift(s) : undefined));
      await changing;
      await heartbeat(database.pool, record(shift), jobWorkerIds(shift), host.batchStats); // with the new runners' ids
    })()
      .catch((err: Error) => log.warn(`heartbeat failed: ${err.message}`))
      .finally(() => (beating = null)));
  const beatTimer = setInterval(beat, Math.max(250, timeoutMs / 3));
  beatTimer.unref();
  const reaper = new Reaper(database.pool, log, timeoutMs);
  // Batches end even where no serve runs (SDK-made ones) and nobody reads them.
  reaper.addSweep('batches finalized or expired', () => sweepBatches(new PgBatchStore(database.pool)));

  /**
   * Graceful: stop taking work, let in-flight requests finish. Past the grace period
   * (SWITCHYARD_SHUTDOWN_GRACE seconds, default 60) whatever still runs is released so another
   * worker runs it again (its client sees a restart), and the process goes.
   */
  const graceMs = (Number(process.env.SWITCHYARD_SHUTDOWN_GRACE) || 60) * 1000;
  const stop = async () => {
    stopping = true;
    clearInterval(statsTimer);
    await reaper.stop();
    await beating;
    await changing;
    const s = shift;
    const drained = Promise.all([s.chat.stop(), ...[...s.claimers.values()].map((c) => c.stop())])
      .then(() => Promise.all([...s.runners].map(stopRunner)))
      .then(() => Promise.all(ending));
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([
      drained.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), graceMs))),
    ]);
    clearTimeout(timer);
    clearInterval(beatTimer);
    if (late) {
      log.warn(`shutdown grace of ${graceMs / 1000} s is over: releasing unfinished jobs to other workers`);
      // As a reaper would: the requests back to the queue first, so that what still runs here
      // can no longer write to them, then the jobs to other workers.
      s.abort.abort();
      await database.pool
        .query(
          `with q as (update ai.requests set status = 'queued' where worker = $1 and status = 'running' returning id, endpoint, model)
           select ai._fence_requests(array(select id from q)),
                  (select count(pg_notify(ai._queue_channel(endpoint), model)) from (select distinct endpoint, model from q) d)`,
          [s.id],
        )
        .catch(() => {});
      const utils = await makeWorkerUtils({ pgPool: database.pool, logger: graphileLogger });
      await utils.forceUnlockWorkers(jobWorkerIds(s)).catch((err: Error) => log.error(`releasing jobs failed: ${err.message}`));
      await utils.release();
    }
    reportBatches();
    await unregister(database.pool, s.id).catch(() => {});
    await listener.stop();
    await host.close();
    await moderation.close();
    await database.close();
  };

  let specs: ModelSpec[];
  try {
    await register(database.pool, record(shift), []);
    specs = await serve(chosen);
    await beat(); // now with the job runners' ids
    await listener.start();
    reaper.start();
  } catch (err) {
    await stop();
    throw err;
  }
  log.info(`worker ${shift.id} serving ${specs.map((s) => `${s.name} (${s.task}, ${s.device})`).join(', ')}`);
  return {
    /** The current worker id (a new one after a reaper took this worker for dead). */
    get workerId() {
      return shift.id;
    },
    models: specs.map((s) => s.name),
    stop,
  };
}
