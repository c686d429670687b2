import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, start, until, type Proc } from '../helpers/stack.js';

/**
 * OpenTelemetry across the queue: real serve and worker processes exporting over OTLP/HTTP (the
 * official exporter's JSON encoding) to a receiver in this test, which records what arrives.
 * A client's `traceparent` must come back as one trace: serve's request span, admission and
 * stream delivery, and the worker's queue wait, prefill and decode, parented through the
 * queued row's `traceparent`.
 */
interface OtlpSpan { traceId: string; spanId: string; parentSpanId?: string; name: string; startTimeUnixNano: string; endTimeUnixNano: string }
interface Exported extends OtlpSpan { service: string }

const exported: Exported[] = [];
let receiver: Server;
let db: TestDatabase;
const procs: Proc[] = [];
let traced: OpenAI;
let untraced: OpenAI;

function record(body: unknown): void {
  const resourceSpans = (body as { resourceSpans?: { resource?: { attributes?: { key: string; value: { stringValue?: string } }[] }; scopeSpans?: { spans?: OtlpSpan[] }[] }[] }).resourceSpans ?? [];
  for (const rs of resourceSpans) {
    const service = rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
    for (const ss of rs.scopeSpans ?? []) for (const s of ss.spans ?? []) exported.push({ ...s, service });
  }
}

beforeAll(async () => {
  receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (req.url === '/v1/traces' && /json/.test(req.headers['content-type'] ?? '')) record(JSON.parse(body));
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`, OTEL_BSP_SCHEDULE_DELAY: '100' };
  db = await createTestDatabase();
  const r = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  const serveEnv = { DATABASE_URL: db.url, PORT: '0', HOST: '127.0.0.1' };
  const servers = await Promise.all([
    start(['serve', '--no-auth'], { ...serveEnv, ...otel }, /listening on (http:\/\/\S+)/),
    // The same stack without an exporter: it still hands the client's context on to the row.
    start(['serve', '--no-auth'], { ...serveEnv, OTEL_EXPORTER_OTLP_ENDPOINT: '' }, /listening on (http:\/\/\S+)/),
    start(['worker'], { DATABASE_URL: db.url, SWITCHYARD_MODELS_DIR: modelsDir(), ...otel }, /worker (\S+) serving/),
  ]);
  procs.push(...servers);
  traced = new OpenAI({ baseURL: `${servers[0].match[1]}/v1`, apiKey: 'none', maxRetries: 0 });
  untraced = new OpenAI({ baseURL: `${servers[1].match[1]}/v1`, apiKey: 'none', maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await new Promise((r) => receiver?.close(r));
  await db?.drop();
});

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

describe('a traced streaming chat request', () => {
  it("is one trace from the client's traceparent through serve, the queued row and the worker", async () => {
    const traceId = hex(16);
    const clientSpan = hex(8);
    const stream = await traced.chat.completions.create(
      { model: 'tiny', messages: [{ role: 'user', content: 'hello' }], max_tokens: 6, stream: true },
      { headers: { traceparent: `00-${traceId}-${clientSpan}-01` } },
    ).withResponse();
    const requestId = stream.response.headers.get('x-request-id')!;
    let chunks = 0;
    for await (const _ of stream.data) chunks++;
    expect(chunks).toBeGreaterThan(1);

    const names = ['POST /v1/chat/completions', 'admission', 'stream delivery', 'queue wait', 'prefill', 'decode'];
    const spans = await until('all six spans exported', async () => {
      const mine = exported.filter((s) => s.traceId === traceId);
      return names.every((n) => mine.some((s) => s.name === n)) ? mine : null;
    }, 20_000);
    const byName = (n: string) => spans.find((s) => s.name === n)!;
    const server = byName('POST /v1/chat/completions');
    const admission = byName('admission');
    expect(server.parentSpanId).toBe(clientSpan);
    expect(server.service).toBe('switchyard-serve');
    expect(admission.parentSpanId).toBe(server.spanId);
    expect(byName('stream delivery').parentSpanId).toBe(server.spanId);
    for (const n of ['queue wait', 'prefill', 'decode']) {
      expect(byName(n).service).toBe('switchyard-worker');
      expect(byName(n).parentSpanId).toBe(admission.spanId);
    }
    // In order: queued before it was claimed, prefill before decode.
    const t = (s: OtlpSpan, edge: 'start' | 'end') => BigInt(edge === 'start' ? s.startTimeUnixNano : s.endTimeUnixNano);
    expect(t(byName('queue wait'), 'end')).toBeLessThanOrEqual(t(byName('prefill'), 'start'));
    expect(t(byName('prefill'), 'end')).toBeLessThanOrEqual(t(byName('decode'), 'start'));

    const [row] = await query<{ traceparent: string }>(db.url, 'select traceparent from ai.requests where id = $1', [requestId]);
    expect(row!.traceparent).toBe(`00-${traceId}-${admission.spanId}-01`);
  });

  it('a request without traceparent starts a trace of its own, still followed into the worker', async () => {
    const before = new Set(exported.map((s) => s.traceId));
    const r = await traced.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }).withResponse();
    const requestId = r.response.headers.get('x-request-id')!;
    const [row] = await query<{ traceparent: string }>(db.url, 'select traceparent from ai.requests where id = $1', [requestId]);
    const traceId = row!.traceparent.split('-')[1]!;
    expect(before.has(traceId)).toBe(false);
    await until('the worker continued the new trace', async () => exported.some((s) => s.traceId === traceId && s.name === 'decode' && s.service === 'switchyard-worker'), 20_000);
  });

  it('a malformed traceparent is ignored (a new trace), never an error', async () => {
    const r = await traced.chat.completions
      .create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, { headers: { traceparent: 'zz-not-a-trace' } })
      .withResponse();
    const [row] = await query<{ traceparent: string }>(db.url, 'select traceparent from ai.requests where id = $1', [r.response.headers.get('x-request-id')]);
    expect(row!.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });
});

describe('without OTEL_EXPORTER_OTLP_ENDPOINT', () => {
  it("serve adds no spans, and still carries the client's context through the queued row to the worker", async () => {
    const traceId = hex(16);
    const clientSpan = hex(8);
    const r = await untraced.chat.completions
      .create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, { headers: { traceparent: `00-${traceId}-${clientSpan}-01` } })
      .withResponse();
    const [row] = await query<{ traceparent: string }>(db.url, 'select traceparent from ai.requests where id = $1', [r.response.headers.get('x-request-id')]);
    // No span of its own to add: the row names the client's span, and the worker continues from it.
    expect(row!.traceparent).toBe(`00-${traceId}-${clientSpan}-01`);
    const decode = await until('the worker continued the trace', async () => exported.find((s) => s.traceId === traceId && s.name === 'decode'), 20_000);
    // Straight under the client's span: that serve recorded no admission span to hang it under.
    expect(decode.parentSpanId).toBe(clientSpan);
  });
});
