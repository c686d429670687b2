import { SpanKind, SpanStatusCode, type Span } from '@opentelemetry/api';
import type { FastifyInstance } from 'fastify';
import { contextFromHeaders, traceparentOf, tracer } from '../tracing.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's server span (a no-op span, still carrying the caller's context, when not exporting). */
    span: Span | null;
  }
}

/** Probes and scrapes: a trace each would bury the requests. */
const UNTRACED = new Set(['/health', '/metrics']);

/**
 * A server span per request, continuing the caller's `traceparent` (or starting a trace), ended
 * when the response is closed: after the last byte of a stream too, which Fastify's own hooks do
 * not see once a route has taken the response over (sse.ts). Its context goes into the request's
 * context for the engine, which writes it into the queued row (`traceparent`). Registered on the
 * root instance before the route scopes, so their hooks (the key check) run inside it.
 */
export function registerTracing(app: FastifyInstance): void {
  app.decorateRequest('span', null);
  app.addHook('onRequest', (request, reply, done) => {
    const route = request.routeOptions.url;
    if (route !== undefined && UNTRACED.has(route)) return done();
    const span = tracer().startSpan(
      `${request.method} ${route ?? 'unknown route'}`,
      { kind: SpanKind.SERVER, attributes: { 'http.request.method': request.method, 'http.route': route ?? '', 'url.path': request.url.split('?')[0] } },
      contextFromHeaders(request.headers),
    );
    request.span = span;
    reply.raw.once('close', () => {
      const status = reply.raw.statusCode;
      span.setAttribute('http.response.status_code', status);
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
    done();
  });
  // After the key check (an onRequest hook of the route scopes) made the request's context.
  app.addHook('preHandler', (request, _reply, done) => {
    if (request.span && request.ctx) request.ctx.traceparent = traceparentOf(request.span);
    done();
  });
}
