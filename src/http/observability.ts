import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type pg from 'pg';
import type { Observer } from '../serving/observer.js';
import type { Metrics } from './metrics.js';
import type { WorkerBatchStats } from '../db/workers-repo.js';

export function metricsObserver(m: Metrics): Observer {
  return {
    started: (model, ms) => m.queueWait.observe({ model }, ms / 1000),
    firstToken: (model, ms) => m.ttft.observe({ model }, ms / 1000),
    usage: (model, u) => {
      m.tokens.inc({ model, kind: 'prompt' }, u.prompt_tokens);
      if (u.completion_tokens) m.tokens.inc({ model, kind: 'completion' }, u.completion_tokens);
    },
  };
}

const ENDPOINTS = new Set(['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/models', '/v1/models/*',
  '/v1/responses', '/v1/responses/:id', '/v1/responses/:id/cancel', '/v1/responses/:id/input_items']);

const line = (level: 'info' | 'error', msg: string, fields: Record<string, unknown>) =>
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`);

/**
 * Logs a server-side failure (a 5xx, or an error ending a stream after its 200) with what an
 * operator needs to find its cause: request id, route, status, message and stack. Written even
 * with SWITCHYARD_LOG=silent, as errors are. The credential the request carried is cut out of
 * the text in case an error quoted it; prompts are never logged (an error may still quote one).
 */
export function logFailure(request: FastifyRequest, reply: FastifyReply, err: unknown, status: number, msg = 'request failed'): void {
  // A request that failed before it was queued has no id yet: give it one the client and this
  // line share (it names no ai.requests row).
  let requestId = reply.getHeader('x-request-id');
  if (requestId === undefined && !reply.raw.headersSent) reply.header('x-request-id', (requestId = randomUUID()));
  const secrets = [request.headers.authorization, request.headers['x-api-key']]
    .flatMap((v) => (typeof v === 'string' ? [v, v.replace(/^\S+\s+/, '')] : []))
    .filter((v) => v.trim().length >= 8);
  const redact = (text: string | undefined) => secrets.reduce((t, s) => t.split(s).join('[redacted]'), text ?? '');
  const e = err as { message?: string; stack?: string; code?: unknown };
  line('error', msg, {
    request_id: requestId ?? null,
    method: request.method,
    route: request.routeOptions.url ?? null,
    status,
    error: { message: redact(e?.message ?? String(err)), code: typeof e?.code === 'string' ? e.code : null, stack: redact(e?.stack) },
  });
}

/**
 * One structured log line per request (JSON on stderr: request id, route, status, time, model;
 * never a key or prompt text) and the metrics behind GET /metrics. /metrics needs no key, like
 * /health: it shows counts and model names only, and scrapers rarely carry bearer tokens.
 */
export function registerObservability(app: FastifyInstance, metrics: Metrics, pool: pg.Pool): void {
  const quiet = process.env.SWITCHYARD_LOG === 'silent';
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unknown';
    if (!ENDPOINTS.has(route)) return;
    const body = request.body as { model?: unknown } | undefined;
    const requested = typeof body?.model === 'string' ? body.model.slice(0, 128) : '';
    // A label value is only ever a registered model's name: the client's string would let
    // anyone add series without bound. A name that resolved to nothing counts as 'unknown'.
    const model = request.resolvedModel ?? (requested ? 'unknown' : '');
    const status = reply.statusCode;
    const seconds = reply.elapsedTime / 1000;
    metrics.requests.inc({ endpoint: route, model, status: String(status) });
    metrics.latency.observe({ endpoint: route }, seconds);
    if (!quiet) {
      const requestId = reply.getHeader('x-request-id') ?? null;
      line(status >= 500 ? 'error' : 'info', 'request', { request_id: requestId, method: request.method, route, status, ms: Math.round(seconds * 1000), model: requested });
    }
  });
  app.get('/metrics', async (_request, reply) => {
    const [queue, workers] = await Promise.all([
      pool.query<{ model: string; queued: number; running: number }>('select model, queued::int, running::int from ai.queue_status'),
      pool.query<{ id: string; stats: Record<string, WorkerBatchStats> }>('select id, stats from ai.workers order by id'),
    ]);
    const batches = workers.rows.flatMap((w) => Object.entries(w.stats ?? {}).map(([model, s]) => ({ worker: w.id, model, ...s })));
    return reply.type('text/plain; version=0.0.4').send(metrics.render({ queue: queue.rows, workers: workers.rows.length, batches }));
  });
}
