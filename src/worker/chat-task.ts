import type pg from 'pg';
import type { Task } from 'graphile-worker';
import type { EngineEvent } from '../engine/types.js';
import type { LogFn } from '../log.js';
import { ThreadError } from './generation/thread-error.js';
import type { ModelHost } from './model-host.js';
import type { ModelSpec } from './models-source.js';
import { EventFlusher } from './flusher.js';
import { EventPublisher, OwnershipLost } from './publisher.js';
import { claim, finish, type ClaimedRow } from './request-row.js';
import { readChatRequest, readJobPayload, StoredRequestError } from './stored-request.js';

export interface ChatTaskDeps {
  pool: pg.Pool;
  host: ModelHost;
  workerId: string;
  log: { info: LogFn; warn: LogFn; error: LogFn };
  /**
   * Aborted when a reaper took this worker for dead: its jobs were released to other workers,
   * so the attempts it runs under this id are abandoned.
   */
  signal?: AbortSignal;
  /** Writes the events of this worker's requests, many per statement (default: one for this task). */
  flusher?: EventFlusher;
}

const reaped = () =>
  new Error('this worker was taken for dead (silent for longer than SWITCHYARD_WORKER_TIMEOUT) and abandoned the attempt');

/**
 * The graphile-worker task for one chat model. Client errors (bad template, prompt too long)
 * and load failures end the request with an error event and are not retried; an exception
 * thrown from here (e.g. the database went away) lets graphile-worker retry the job.
 * An attempt that lost the request (OwnershipLost) throws too, never returns: graphile-worker
 * deletes the job of a task that returns, and that job may now be another worker's; a throw
 * only releases it if this worker still holds its lock.
 */
export function chatTask(spec: ModelSpec, deps: ChatTaskDeps): Task {
  const flusher = deps.flusher ?? new EventFlusher(deps.pool);
  return async (payload, helpers) => {
    const { requestId } = readJobPayload(payload);
    const attempt = helpers.job.attempts;
    // Taken after the reaping, before the heartbeat noticed: graphile-worker retries it.
    if (deps.signal?.aborted) throw reaped();
    // An abandoned attempt still stopping would share its id in the model thread.
    if (deps.host.isRunning(requestId)) throw new Error(`an abandoned attempt of request ${requestId} is still stopping in this worker`);
    const row = await claim(deps.pool, requestId, deps.workerId, attempt);
    if (!row) return; // cancelled while queued, or already finished by an earlier attempt
    const publisher = await EventPublisher.open(deps.pool, flusher, { requestId, workerId: deps.workerId, attempt }, row.stream);
    // Whatever the model does from here on would be refused: stop it.
    const abandon = () => deps.host.cancel(requestId);
    publisher.onRefused = abandon;
    deps.signal?.addEventListener('abort', abandon);
    try {
      await runChat(spec, deps, requestId, row, publisher, attempt);
    } catch (err) {
      // graphile-worker retries the job; after the last attempt nobody would, and a client
      // would wait for an answer that never comes. Say why instead (if the database lets us:
      // refused unless this attempt still owns the request).
      if (attempt >= helpers.job.max_attempts) {
        const body = {
          message: `The request failed on all ${helpers.job.max_attempts} attempts: ${err instanceof Error ? err.message : String(err)}`,
          type: 'server_error' as const,
          param: null,
          code: 'attempts_exhausted',
        };
        deps.log.error(`request ${requestId}: ${body.message}`);
        await finish(deps.pool, publisher, 'failed', { error: body }, { type: 'error', status: 500, error: body }).catch(() => {});
      }
      throw err;
    } finally {
      deps.signal?.removeEventListener('abort', abandon);
    }
  };
}

async function runChat(spec: ModelSpec, deps: ChatTaskDeps, requestId: string, row: ClaimedRow, publisher: EventPublisher, attempt: number): Promise<void> {
  const end = async (status: 'completed' | 'failed', fields: { output?: unknown; usage?: unknown; error?: unknown }, event: EngineEvent) => {
    if (!(await finish(deps.pool, publisher, status, fields, event))) throw new OwnershipLost(requestId);
  };
  // An earlier attempt died part-way: whoever is waiting must drop what it received.
  if (attempt > 1) publisher.publish({ type: 'restart', attempt });
  let request;
  try {
    request = readChatRequest(row.input, row.params);
  } catch (err) {
    if (!(err instanceof StoredRequestError)) throw err;
    const body = { message: `Stored request is invalid: ${err.message}`, type: 'server_error' as const, param: null, code: 'invalid_stored_request' };
    await end('failed', { error: body }, { type: 'error', status: 500, error: body });
    return;
  }
  let result;
  try {
    result = await deps.host.generate(requestId, spec, request.prompt, request.params, {
      onStarted: (promptTokens) => publisher.publish({ type: 'start', promptTokens }),
      onDelta: (index, text, finishReason, logprobs) => publisher.delta(index, text, finishReason, logprobs),
    });
  } catch (err) {
    const e = ThreadError.from(err);
    if (e.kind === 'cancelled') {
      // Stopped because ai.cancel_request set the final status (the listener checked the row):
      // record what the model did produce. Otherwise this attempt was abandoned.
      const r = await deps.pool.query(`update ai.requests set usage = $2 where id = $1 and status = 'cancelled' and worker = $3 and attempts = $4`, [
        requestId,
        JSON.stringify({ completion_tokens: e.generatedTokens, generated_before_stop: true }),
        deps.workerId,
        attempt,
      ]);
      if (r.rowCount) return;
      throw deps.signal?.aborted ? reaped() : new OwnershipLost(requestId);
    }
    if (e.kind === 'server') deps.log.error(`request ${requestId} failed: ${e.message}`);
    await end('failed', { error: e.body }, { type: 'error', status: e.status, error: e.body });
    return;
  }
  // What is still queued goes out with the outcome; a flush that failed or was refused left a
  // gap (or a request taken over): no outcome then, graphile-worker retries the job.
  await publisher.settled();
  publisher.check();
  const completionTokens = result.choices.reduce((sum, c) => sum + c.tokenIds.length, 0);
  const usage = { prompt_tokens: result.promptTokens, completion_tokens: completionTokens, total_tokens: result.promptTokens + completionTokens };
  await end(
    'completed',
    {
      output: { choices: result.choices.map((c) => ({ index: c.index, text: c.text, finish_reason: c.finishReason, token_ids: c.tokenIds })) },
      usage,
    },
    { type: 'done', choices: result.choices.map((c) => ({ index: c.index, finishReason: c.finishReason })), usage },
  );
}
