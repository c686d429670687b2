import { ROOT_CONTEXT, defaultTextMapGetter, defaultTextMapSetter, trace, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';

/**
 * OpenTelemetry tracing. Library code (serve, the engine, the worker, the SDK) uses only the API:
 * without a registered SDK its spans are no-ops that still carry their parent's context. The
 * `switchyard serve` / `worker` / `up` processes register the SDK, exporting over OTLP/HTTP, when
 * OTEL_EXPORTER_OTLP_ENDPOINT is set (`startTracing`); an application importing the SDK keeps
 * its own tracer provider, or none.
 *
 * Context crosses the queue as a W3C `traceparent` string in the request's row. The propagator
 * is used directly, not through the global propagation API, so that a serve without an exporter
 * still hands a client's trace context on to a worker that has one.
 */
const w3c = new W3CTraceContextPropagator();

export function tracer(): Tracer {
  return trace.getTracer('switchyard');
}

/** The caller's context from HTTP headers (`traceparent`, `tracestate`); empty when absent or malformed. */
export function contextFromHeaders(headers: Record<string, string | string[] | undefined>): Context {
  return w3c.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
}

/** The context a stored `traceparent` names; the empty context for null or a malformed value. */
export function contextFrom(traceparent: string | null | undefined): Context {
  return traceparent ? w3c.extract(ROOT_CONTEXT, { traceparent }, defaultTextMapGetter) : ROOT_CONTEXT;
}

/** The span's `traceparent`, to store or send on; null when it has no valid context (no trace at all). */
export function traceparentOf(span: Span): string | null {
  const carrier: Record<string, string> = {};
  w3c.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, defaultTextMapSetter);
  return carrier.traceparent ?? null;
}

let enabled = false;

/** Whether this process exports spans: work done only for tracing (an extra query) is skipped otherwise. */
export function tracingEnabled(): boolean {
  return enabled;
}

/**
 * Registers the OpenTelemetry SDK for this process when OTEL_EXPORTER_OTLP_ENDPOINT is set (the
 * exporter reads it and the other OTEL_EXPORTER_OTLP_* settings itself; OTEL_SERVICE_NAME
 * overrides `service`). Returns what flushes and stops it at shutdown. The SDK's modules load only
 * then: a process that does not trace does not pay for them.
 */
export async function startTracing(service: string, env: NodeJS.ProcessEnv = process.env): Promise<() => Promise<void>> {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT) return async () => {};
  const [{ NodeTracerProvider, BatchSpanProcessor }, { OTLPTraceExporter }, { resourceFromAttributes }] = await Promise.all([
    import('@opentelemetry/sdk-trace-node'),
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/resources'),
  ]);
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME || service }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  provider.register();
  enabled = true;
  return async () => {
    enabled = false;
    await provider.shutdown();
  };
}
