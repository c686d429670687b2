import type pg from 'pg';
import type { EngineEvent } from '../engine/types.js';
import type { LogFn } from '../log.js';
import { ThreadError } from './generation/thread-error.js';
import type { ModelHost } from './model-host.js';
import type { ModelSpec } from './models-source.js';
import { EventFlusher } from './flusher.js';
import { EventPublisher, OwnershipLost } from './publisher.js';
import { finish, type ClaimedRow } from './request-row.js';
import { RequestSpans } from './request-spans.js';
import { readChatRequest, StoredRequestError } from './stored-request.js';
import { retryWhileUnavailable } from '../db/errors.js';
import { ApiError } from '../protocol/errors.js';
import type { TokenLogprob } from '../protocol/shared.js';
import { isOpenAiRequest, openAiCompletion, readOpenAiChat, type OpenAiChat } from './openai-request.js';

export interface ChatTaskDeps {
  pool: pg.Pool;
  host: ModelHost;
  workerId: string;
  log: { info: LogFn; warn: LogFn; error: LogFn };
  /**
   * Aborted when a reaper took this worker for dead: its requests were re-queued for other
   * workers, so the attempts it runs under this id are abandoned.
   */
  signal?: AbortSignal;
  /** Writes the events of this worker's requests, many per statement (default: one for this request). */
  flusher?: EventFlusher;
}

/** A chat or completions request as ai.claim_chat hands it to this worker: its attempt `attempts`. */
export interface ClaimedChat extends ClaimedRow {
  id: string;
  model: string;
  attempts: number;
  max_attempts: number;
  /** 0: interactive; 1: batch work (ai.submit_chat, Batch API lines). */
  priority?: number;
  /** The secret its events are sealed into their notifications with (engine/notice.ts); null: none. */
  notify_key?: Buffer | null;
  /** Whose prompts it may share the prefix cache with: its team's, its key's or its database role's (ai.claim_chat). */
  cache_scope?: string;
}

const reaped = () =>
  new Error('this worker was taken for dead (silent for longer than SWITCHYARD_WORKER_TIMEOUT) and abandoned the attempt');

/**
 * Runs one claimed attempt of a chat request to its end. Client errors (bad template, prompt
 * too long) and load failures end the request with an error event. Any other failure (e.g.
 * the database went away mid-request) gives the request back to the queue for another attempt,
 * or, on its last attempt, fails it with the reason. An attempt that lost the request (a reaper
 * re-queued it, another attempt took it: OwnershipLost) leaves it alone. Never throws.
 */
export async function runChatRequest(spec: ModelSpec, deps: ChatTaskDeps, row: ClaimedChat): Promise<void> {
  const { id: requestId, attempts: attempt, max_attempts: maxAttempts } = row;
  const flusher = deps.flusher ?? new EventFlusher(deps.pool);
  const owner = { requestId, workerId: deps.workerId, attempt, notifyKey: row.notify_key ?? null };
  let publisher: EventPublisher | null = null;
  let spans: RequestSpans | null = null;
  const abandon = () => deps.host.cancel(requestId);
  deps.signal?.addEventListener('abort', abandon);
  try {
    if (deps.signal?.aborted) throw reaped();
    publisher = await EventPublisher.open(deps.pool, flusher, owner, row.stream);
    // Whatever the model does from here on would be refused: stop it.
    publisher.onRefused = abandon;
    // A trace that cannot be read costs the request nothing but its spans.
    spans = await RequestSpans.open(deps.pool, requestId, row.model, attempt).catch(() => null);
    await runChat(spec, deps, requestId, row, publisher, attempt, spans);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    spans?.end({ failure: reason });
    if (err instanceof OwnershipLost || deps.signal?.aborted) return; // someone else's now
    await retryWhileUnavailable(async () => {
      if (attempt < maxAttempts) {
        deps.log.warn(`request ${requestId} attempt ${attempt} failed (${reason}); re-queued`);
        await deps.pool.query('select ai.release_chat($1, $2, $3)', [requestId, deps.workerId, attempt]);
        return;
      }
      // Nobody would try again, and a client would wait for an answer that never comes: say why
      // (refused unless this attempt still owns the request).
      const body = { message: `The request failed on all ${maxAttempts} attempts: ${reason}`, type: 'server_error' as const, param: null, code: 'attempts_exhausted' };
      deps.log.error(`request ${requestId}: ${body.message}`);
      const p = publisher ?? new EventPublisher(flusher, owner, 0, row.stream);
      await finish(deps.pool, p, 'failed', { error: body }, { type: 'error', status: 500, error: body });
    }).catch((e: Error) => deps.log.error(`request ${requestId}: recording the failed attempt failed: ${e.message}`));
  } finally {
    deps.signal?.removeEventListener('abort', abandon);
  }
}

async function runChat(spec: ModelSpec, deps: ChatTaskDeps, requestId: string, row: ClaimedChat, publisher: EventPublisher, attempt: number, spans: RequestSpans | null): Promise<void> {
  const end = async (status: 'completed' | 'failed', fields: { output?: unknown; usage?: unknown; error?: unknown }, event: EngineEvent) => {
    spans?.end(event.type === 'done' ? { completionTokens: event.usage.completion_tokens } : { failure: event.type === 'error' ? event.error.message : status });
    if (!(await finish(deps.pool, publisher, status, fields, event))) throw new OwnershipLost(requestId);
  };
  // An earlier attempt died part-way: whoever is waiting must drop what it received.
  if (attempt > 1) publisher.publish({ type: 'restart', attempt });
  let request;
  // A stored OpenAI body (SQL, batches) is validated and translated here, as the gateway does it.
  let openai: OpenAiChat | null = null;
  try {
    if (isOpenAiRequest(row.params)) {
      openai = await readOpenAiChat(deps.pool, spec.name, row.input);
      request = { prompt: openai.prompt, params: openai.params };
    } else request = readChatRequest(row.input, row.params);
  } catch (err) {
    if (err instanceof ApiError) {
      const body = err.toBody().error;
      await end('failed', { error: body }, { type: 'error', status: err.status, error: body });
      return;
    }
    if (!(err instanceof StoredRequestError)) throw err;
    const body = { message: `Stored request is invalid: ${err.message}`, type: 'server_error' as const, param: null, code: 'invalid_stored_request' };
    await end('failed', { error: body }, { type: 'error', status: 500, error: body });
    return;
  }
  let result;
  const kept: TokenLogprob[][] = [];
  try {
    result = await deps.host.generate(requestId, spec, request.prompt, request.params, {
      background: (row.priority ?? 0) > 0,
      cacheScope: row.cache_scope ?? '',
      // Not urgent: it goes out with the first text when that follows within a flush interval
      // (one statement, not two, and none competing with the prefill for the cores).
      onStarted: (promptTokens) => {
        spans?.started(promptTokens);
        publisher.publish({ type: 'start', promptTokens, at: Date.now() }, false);
      },
      onDelta: (index, text, finishReason, logprobs, stopSequence) => {
        spans?.token();
        if (openai && logprobs) (kept[index] ??= []).push(...logprobs);
        publisher.delta(index, text, finishReason, logprobs, stopSequence);
      },
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
      if (r.rowCount) {
        spans?.end({ completionTokens: e.generatedTokens, failure: 'cancelled' });
        return;
      }
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
      output: {
        choices: result.choices.map((c) => ({ index: c.index, text: c.text, finish_reason: c.finishReason, token_ids: c.tokenIds })),
        ...(openai
          ? { completion: openAiCompletion(openai, requestId, result.choices.map((c) => ({ index: c.index, text: c.text, finishReason: c.finishReason, logprobs: kept[c.index] ?? [] })), usage) }
          : {}),
      },
      usage,
    },
    { type: 'done', choices: result.choices.map((c) => ({ index: c.index, finishReason: c.finishReason })), usage },
  );
}
