import { trace, type ProxyTracerProvider } from '@opentelemetry/api';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { OpenSourceAI } from '../../src/sdk/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The SDK in an application that traces: it registers no tracer provider of its own, and its
 * calls join the application's active span, whose trace the queued row carries to the worker.
 */
let db: TestDatabase;
let worker: Proc;
let client: OpenSourceAI;
const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

beforeAll(async () => {
  db = await createTestDatabase();
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url })).code).toBe(0);
  worker = await startWorker(db.url);
  // The application's own provider (with its context manager), registered before the SDK loads.
  provider.register();
  client = new OpenSourceAI(db.url);
});

afterAll(async () => {
  await client?.close();
  await worker?.stop();
  await db?.drop();
  await provider.shutdown();
});

it("an SDK call inside the application's span is admitted under it, and the row carries that trace to the worker", async () => {
  const app = trace.getTracer('the-application');
  const outer = await app.startActiveSpan('handle order', async (span) => {
    await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
    span.end();
    return span.spanContext();
  });
  // The provider the application registered is still the global one.
  expect((trace.getTracerProvider() as ProxyTracerProvider).getDelegate()).toBe(provider);
  const admission = exporter.getFinishedSpans().find((s) => s.name === 'admission');
  expect(admission?.spanContext().traceId).toBe(outer.traceId);
  expect(admission?.parentSpanContext?.spanId).toBe(outer.spanId);
  const [row] = await query<{ traceparent: string }>(db.url, 'select traceparent from ai.requests');
  expect(row!.traceparent).toBe(`00-${outer.traceId}-${admission!.spanContext().spanId}-01`);
});
