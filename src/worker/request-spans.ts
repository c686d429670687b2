import type pg from 'pg';
import { SpanStatusCode, type Attributes, type Context, type Span } from '@opentelemetry/api';
import { contextFrom, tracer, tracingEnabled } from '../tracing.js';

/**
 * A claimed chat request's spans in the worker, continuing the trace its row carries
 * (`traceparent`, written by serve at admission):
 * - `queue wait`: queued → claimed, from the row's own timestamps (the database's clock);
 * - `prefill`: claimed → first token (the template, tokenizing, waiting for a place in the decode
 *   loop, the prompt's forward pass);
 * - `decode`: first token → the end of the attempt.
 * Opened only when this process exports spans: reading the row's trace costs a query, which a
 * worker that does not trace should not pay on every request.
 */
export class RequestSpans {
  private readonly prefill: Span;
  private decode: Span | null = null;
  private ended = false;

  static async open(pool: pg.Pool, requestId: string, model: string, attempt: number): Promise<RequestSpans | null> {
    if (!tracingEnabled()) return null;
    const r = await pool.query<{ traceparent: string | null; queued_at: Date; started_at: Date | null }>(
      'select traceparent, queued_at, started_at from ai.requests where id = $1',
      [requestId],
    );
    const row = r.rows[0];
    if (!row) return null;
    const attributes = { 'switchyard.request_id': requestId, 'gen_ai.request.model': model, 'switchyard.attempt': attempt };
    return new RequestSpans(contextFrom(row.traceparent), row.queued_at, row.started_at ?? new Date(), attributes);
  }

  private constructor(
    private readonly parent: Context,
    queuedAt: Date,
    startedAt: Date,
    private readonly attributes: Attributes,
  ) {
    tracer().startSpan('queue wait', { startTime: queuedAt, attributes }, parent).end(startedAt);
    this.prefill = tracer().startSpan('prefill', { startTime: startedAt, attributes }, parent);
  }

  /** The prompt is tokenized. */
  started(promptTokens: number): void {
    this.prefill.setAttribute('gen_ai.usage.input_tokens', promptTokens);
  }

  /** Text arrived: the first time, prefill ends and decode begins. */
  token(): void {
    if (this.decode || this.ended) return;
    const now = Date.now();
    this.prefill.end(now);
    this.decode = tracer().startSpan('decode', { startTime: now, attributes: this.attributes }, this.parent);
  }

  /** Ends whichever span is open; `failure`: the attempt's error message. Idempotent. */
  end(outcome: { completionTokens?: number; failure?: string }): void {
    if (this.ended) return;
    this.ended = true;
    const open = this.decode ?? this.prefill;
    if (outcome.completionTokens !== undefined) open.setAttribute('gen_ai.usage.output_tokens', outcome.completionTokens);
    if (outcome.failure !== undefined) open.setStatus({ code: SpanStatusCode.ERROR, message: outcome.failure });
    open.end();
  }
}
