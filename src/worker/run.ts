import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { makeWorkerUtils, run, type Runner, type TaskList, type WorkerEvents } from 'graphile-worker';
import { openDatabase } from '../db/pool.js';
import { PgListener } from '../db/listener.js';
import { listModels } from '../db/models-repo.js';
import type { ModelRow } from '../db/types.js';
import { chatTask as chatTaskName } from '../engine/pg-engine.js';
import { graphileLogger, logger } from '../log.js';
import { heartbeat, unregister } from '../db/workers-repo.js';
import { Reaper, workerTimeoutMs } from '../engine/reaper.js';
import { chatTask } from './chat-task.js';
import { EmbedClaimer } from './embedding/claimer.js';
import { vectorizeTask, vectorizeTaskName } from './vectorize-task.js';
import { EmbedBatcher } from './embedding/batcher.js';
import { modelFingerprint } from './embedding/cache-key.js';
import { ModelHost } from './model-host.js';
import { batchLimitsFromEnv } from './generation/limits.js';
import type { ModelSpec } from './models-source.js';

export interface WorkerOptions {
  databaseUrl: string;
  modelsDir: string | undefined;
  /** Names or aliases to serve; default: every registered model this worker can run. */
  models?: string[];
  /** Overrides each model's registered device. */
  device?: 'cpu' | 'cuda';
  /** Chat jobs in flight at once (default SWITCHYARD_MAX_BATCH, 16): they share each decode step. */
  concurrency?: number;
  /** Vectorizer jobs in flight at once (default 4); they share each model's batcher. */
  embedConcurrency?: number;
}

export interface RunningWorker {
  workerId: string;
  models: string[];
  stop(): Promise<void>;
}

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
  };
}

export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const log = logger('worker');
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
  const deps = { pool: database.pool, workerId, log };
  const served = new Map<string, ModelSpec>();
  const batchers = new Map<string, EmbedBatcher>();
  const claimers = new Map<string, EmbedClaimer>();
  const runners: Runner[] = [];
  /** graphile-worker's ids for our job runners: what its job locks name, kept in our heartbeat. */
  const jobWorkerIds: string[] = [];
  let stopping = false;

  /**
   * Starts serving models: their graphile-worker tasks run in a runner of their own (chat jobs
   * are few and long; vectorizer jobs are separate so a long backfill never holds up chat), and
   * embedding requests are claimed in batches by a claimer per model (see claimer.ts). Called
   * at start and again when models are registered while the worker runs.
   */
  async function serve(rows: ModelRow[]): Promise<ModelSpec[]> {
    const specs = rows.filter((r) => !served.has(r.name)).map((r) => toSpec(r, opts.device));
    const chatTasks: TaskList = {};
    const embedTasks: TaskList = {};
    for (const spec of specs) {
      served.set(spec.name, spec);
      if (spec.task === 'chat') chatTasks[chatTaskName(spec.name)] = chatTask(spec, { ...deps, host });
      else {
        const batcher = new EmbedBatcher(host, spec);
        batchers.set(spec.name, batcher);
        claimers.set(spec.name, new EmbedClaimer({ ...deps, model: spec.name, fingerprint: modelFingerprint(spec), embed: (inputs) => batcher.submit(inputs) }));
        embedTasks[vectorizeTaskName(spec.name)] = vectorizeTask(spec, { pool: database.pool, embed: (inputs) => batcher.submit(inputs), log });
      }
      // Load now, so a misconfiguration shows at once, not at the first request. A failure is
      // logged, not fatal: requests for that model then fail with the same message.
      host.load(spec).then(
        async (info) => {
          // What the gateway needs to refuse what the model cannot take before queueing it.
          await database.pool.query(
            `update ai.models set dimensions = coalesce($2, dimensions), input_bound = $3::jsonb
              where name = $1 and (dimensions is distinct from coalesce($2, dimensions) or input_bound is distinct from $3::jsonb)`,
            [spec.name, spec.task === 'embedding' ? info.dimensions || null : null, info.inputBound && JSON.stringify(info.inputBound)],
          );
        },
        (err: Error) => log.error(err.message),
      );
    }
    for (const spec of specs) claimers.get(spec.name)?.start();
    for (const [taskList, concurrency] of [
      [chatTasks, opts.concurrency ?? batchLimitsFromEnv().maxSequences],
      [embedTasks, opts.embedConcurrency ?? 4],
    ] as const) {
      if (Object.keys(taskList).length === 0) continue;
      // Our emitter, listened to before run(): its job runners are created during run().
      const events: WorkerEvents = new EventEmitter();
      events.on('worker:create', ({ worker }) => jobWorkerIds.push(worker.workerId));
      runners.push(await run({ pgPool: database.pool, concurrency, taskList, events, noHandleSignals: true, pollInterval: 1000, logger: graphileLogger }));
    }
    return specs;
  }

  // A worker without --models serves every model, including ones registered after it started
  // (an SDK registering a model on the fly, `models add`): ai.models notifies 'ai_models'.
  let adding = Promise.resolve();
  const pickUpNewModels = () => {
    if (wanted || stopping) return;
    adding = adding
      .then(async () => {
        const added = await serve(await listModels(database.db));
        if (added.length) log.info(`now also serving ${added.map((s) => `${s.name} (${s.task})`).join(', ')}`);
      })
      .catch((err: Error) => log.error(`picking up new models failed: ${err.message}`));
  };

  // One LISTEN connection: cancellations, new embedding requests, new models.
  const listener = new PgListener({
    connectionString: opts.databaseUrl,
    channels: ['ai_cancel', 'ai_embed', 'ai_models'],
    log,
    onNotification: (channel, payload) => {
      if (channel === 'ai_cancel') host.cancel(payload);
      else if (channel === 'ai_embed') claimers.get(payload)?.wake();
      else pickUpNewModels();
    },
    onConnected: () => {
      for (const c of claimers.values()) c.wake();
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
  const record = () => ({ id: workerId, hostname: hostname(), pid: process.pid, models: [...served.keys()] });
  const beat = () => heartbeat(database.pool, record(), jobWorkerIds, host.batchStats).catch((err: Error) => log.warn(`heartbeat failed: ${err.message}`));
  const beatTimer = setInterval(beat, Math.max(250, timeoutMs / 3));
  beatTimer.unref();
  const reaper = new Reaper(database.pool, log, timeoutMs);

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
    await adding;
    const drained = Promise.all([...claimers.values()].map((c) => c.stop())).then(() => Promise.all(runners.map((r) => r.stop())));
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([
      drained.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), graceMs))),
    ]);
    clearTimeout(timer);
    clearInterval(beatTimer);
    if (late) {
      log.warn(`shutdown grace of ${graceMs / 1000} s is over: releasing unfinished jobs to other workers`);
      const utils = await makeWorkerUtils({ pgPool: database.pool, logger: graphileLogger });
      await utils.forceUnlockWorkers(jobWorkerIds).catch((err: Error) => log.error(`releasing jobs failed: ${err.message}`));
      await utils.release();
      await database.pool
        .query(`update ai.requests set status = 'queued' where worker = $1 and status = 'running' and endpoint = 'embeddings'`, [workerId])
        .catch(() => {});
    }
    reportBatches();
    await unregister(database.pool, workerId).catch(() => {});
    await listener.stop();
    await host.close();
    await database.close();
  };

  let specs: ModelSpec[];
  try {
    await beat();
    specs = await serve(chosen);
    await beat(); // now with the job runners' ids
    await listener.start();
    reaper.start();
  } catch (err) {
    await stop();
    throw err;
  }
  log.info(`worker ${workerId} serving ${specs.map((s) => `${s.name} (${s.task}, ${s.device})`).join(', ')}`);
  return { workerId, models: specs.map((s) => s.name), stop };
}
