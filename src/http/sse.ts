import type { FastifyReply } from 'fastify';
import { toApiError } from './errors.js';
import type { ApiError } from '../protocol/errors.js';
import { logFailure } from './observability.js';
import { ROOT_CONTEXT, trace, type Span } from '@opentelemetry/api';
import { tracer } from '../tracing.js';

/**
 * Writes an SSE stream in OpenAI's format: `data: <json>` events and a final `data: [DONE]`.
 * An error after the 200 went out cannot change the status, so it becomes a
 * `data: {"error": ...}` event (as vLLM does) before [DONE]. `named` (the Responses API): each
 * event also carries `event: <its type>`, and the stream ends without [DONE], as OpenAI's does.
 */
export async function sendSse(
  reply: FastifyReply,
  items: AsyncIterable<unknown>,
  opts: { named?: boolean; errorBody?: (api: ApiError) => { type: string } } = {},
): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    ...(reply.getHeaders() as Record<string, string>),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  const write = (s: string) =>
    new Promise<void>((resolve) => {
      if (res.destroyed) return resolve();
      // Respect backpressure: wait for drain before producing more.
      if (res.write(s)) resolve();
      else res.once('drain', resolve);
    });
  // Comment lines keep idle streams (a slow prefill, a long pause) alive through proxies that
  // close connections silent for 30-60 s; SSE clients ignore them.
  let lastWrite = Date.now();
  const keepAliveMs = (Number(process.env.SWITCHYARD_SSE_KEEPALIVE) || 15) * 1000;
  const keepAlive = setInterval(() => {
    if (Date.now() - lastWrite >= keepAliveMs && !res.destroyed) {
      res.write(': keep-alive\n\n');
      lastWrite = Date.now();
    }
  }, Math.min(keepAliveMs, 1000));
  // Traced from the first event to the end of the stream, under the request's span.
  let delivery = null as Span | null;
  let sent = 0;
  const deliver = () => (delivery ??= reply.request.span ? tracer().startSpan('stream delivery', {}, trace.setSpan(ROOT_CONTEXT, reply.request.span)) : null);
  try {
    for await (const item of items) {
      if (res.destroyed) break;
      deliver();
      sent++;
      const name = opts.named ? (item as { type?: unknown }).type : undefined;
      await write(`${typeof name === 'string' ? `event: ${name}\n` : ''}data: ${JSON.stringify(item)}\n\n`);
      lastWrite = Date.now();
    }
  } catch (err) {
    deliver();
    const api = toApiError(err);
    if (api.status >= 500) logFailure(reply.request, reply, err, api.status, 'stream failed');
    // `errorBody`: an API with an error envelope of its own (Anthropic's).
    const body = opts.errorBody ? opts.errorBody(api) : { type: 'error', ...api.toBody() };
    await write(opts.named ? `event: error\ndata: ${JSON.stringify(body)}\n\n` : `data: ${JSON.stringify(api.toBody())}\n\n`);
  }
  clearInterval(keepAlive);
  if (!opts.named) await write('data: [DONE]\n\n');
  res.end();
  delivery?.setAttributes({ 'switchyard.events_sent': sent, 'switchyard.client_gone': res.destroyed && !res.writableFinished });
  delivery?.end();
}
