import net from 'node:net';
import { expect } from 'vitest';
import { createTestDatabase, TEST_SERVER_URL, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, until, type Proc } from '../helpers/stack.js';

/**
 * What the client-compatibility tests share: a gateway started as a user starts it (`serve` and
 * `worker` as separate processes on a fresh database), and a `fetch` that every client under test
 * is given, recording what it sent and what came back, so a test can look up the row each
 * response came from in ai.requests and see the retries a client made.
 *
 * Models: `tiny` (chat, the `tiny-chat` fixture, alias `gpt-4o-mini`), `minilm` (embeddings,
 * `tiny-embed`, alias `text-embedding-3-small`) and `held` (chat, `--max-queue 1`, served by no
 * worker: one queued request fills its queue, so the next is a 429 with `Retry-After`).
 */

export interface Exchange {
  method: string;
  /** The path under the gateway, e.g. `/v1/chat/completions`. */
  path: string;
  /** The JSON body the client sent (undefined for GET). */
  body: Record<string, any> | undefined;
  headers: Headers;
  status: number;
  requestId: string | null;
  retryAfter: string | null;
  sentAt: number;
  receivedAt: number;
}

/** A `fetch` for clients' options that records every exchange. */
export class Recorder {
  readonly exchanges: Exchange[] = [];
  /** Called with each exchange once its response headers arrived. */
  onResponse: ((e: Exchange) => void) | undefined;

  readonly fetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const method = init?.method ?? (input instanceof Request ? input.method : 'GET');
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    let body: Record<string, any> | undefined;
    if (typeof init?.body === 'string') body = JSON.parse(init.body) as Record<string, any>;
    const sentAt = Date.now();
    const res = await fetch(input, init);
    const e: Exchange = {
      method,
      path: url.pathname,
      body,
      headers,
      status: res.status,
      requestId: res.headers.get('x-request-id'),
      retryAfter: res.headers.get('retry-after'),
      sentAt,
      receivedAt: Date.now(),
    };
    this.exchanges.push(e);
    this.onResponse?.(e);
    return res;
  };

  /** Exchanges recorded from now on: `const seen = rec.mark(); ...; seen()`. */
  mark(): () => Exchange[] {
    const from = this.exchanges.length;
    return () => this.exchanges.slice(from);
  }
}

export interface RequestRow {
  id: string;
  endpoint: string;
  model: string;
  status: string;
  input: Record<string, any>;
  params: Record<string, any>;
  output: Record<string, any> | null;
  usage: { prompt_tokens: number; completion_tokens?: number; total_tokens: number } | null;
}

export interface Gateway {
  db: TestDatabase;
  serve: Proc & { url: string };
  worker: Proc & { workerId: string };
  /** `http://127.0.0.1:PORT/v1` */
  baseURL: string;
  key: string;
  /** The ai.requests row a response came from (by its x-request-id). */
  row(requestId: string | null): Promise<RequestRow>;
  /** The gateway's own vectors for these inputs (a plain `encoding_format: float` request). */
  vectors(input: string[]): Promise<number[][]>;
  /** Puts one request in `held`'s queue (bound 1), so the next request for `held` is a 429. */
  fillHeldQueue(): Promise<() => Promise<void>>;
  stop(): Promise<void>;
}

export async function startGateway(): Promise<Gateway> {
  const db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const adds = await Promise.all(
    [
      ['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat', '--alias', 'gpt-4o-mini'],
      ['models', 'add', 'minilm', '--task', 'embedding', '--source', 'tiny-embed', '--alias', 'text-embedding-3-small'],
      ['models', 'add', 'held', '--task', 'chat', '--source', 'tiny-chat', '--max-queue', '1'],
      ['keys', 'create', '--name', 'clients'],
    ].map((args) => cli(args, env)),
  );
  for (const r of adds) expect(r.code, r.stderr).toBe(0);
  const key = adds[3]!.stdout.trim();
  // The worker serves tiny and minilm only: nothing ever takes `held`'s queue.
  const [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url, ['--models', 'tiny,minilm'])]);
  // The worker records what its models take (ai.models.input_bound) once it has loaded them; serve
  // refuses an over-long request early only from then on (a test of that must not race the load).
  await until('the worker to record its models\' input bounds', async () =>
    (await query<{ n: string }>(db.url, `select count(*) as n from ai.models where name in ('tiny', 'minilm') and input_bound is not null`))[0]!.n === '2');
  const baseURL = `${serve.url}/v1`;
  return {
    db,
    serve,
    worker,
    baseURL,
    key,
    async row(requestId) {
      expect(requestId, 'the response carries x-request-id').toMatch(/^[0-9a-f-]{36}$/);
      const [row] = await query<RequestRow>(db.url, 'select id, endpoint, model, status, input, params, output, usage from ai.requests where id = $1', [requestId]);
      expect(row, `ai.requests row ${requestId}`).toBeDefined();
      return row!;
    },
    async vectors(input) {
      const res = await fetch(`${baseURL}/embeddings`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'minilm', input, encoding_format: 'float' }),
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { data: { index: number; embedding: number[] }[] };
      return body.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
    },
    async fillHeldQueue() {
      const abort = new AbortController();
      const pending = fetch(`${baseURL}/chat/completions`, {
        method: 'POST',
        signal: abort.signal,
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'held', messages: [{ role: 'user', content: 'wait' }], max_tokens: 2 }),
      }).catch(() => undefined);
      for (let i = 0; ; i++) {
        const [r] = await query<{ n: number }>(db.url, `select count(*)::int as n from ai.requests where model = 'held' and status = 'queued'`);
        if (r!.n >= 1) break;
        if (i > 200) throw new Error('the filler request never reached the queue');
        await new Promise((res) => setTimeout(res, 25));
      }
      return async () => {
        abort.abort();
        await pending;
      };
    },
    async stop() {
      await Promise.all([serve.stop(), worker.stop()]);
      await db.drop();
    },
  };
}

/**
 * The requests one client call made for a model: each answer's status and the pause the client
 * took after it before sending the next (what a retry honouring `Retry-After: 1` must make ≥ 1 s).
 */
export function attempts(exchanges: Exchange[], model: string) {
  const mine = exchanges.filter((e) => e.body?.model === model);
  return {
    statuses: mine.map((e) => e.status),
    retryAfter: mine.map((e) => e.retryAfter),
    pausesMs: mine.slice(1).map((e, i) => e.sentAt - mine[i]!.receivedAt),
  };
}

/** Element-wise equality of float vectors, as float32 (what the wire carries). */
export function expectSameVectors(actual: ArrayLike<number>[], expected: ArrayLike<number>[]) {
  expect(actual).toHaveLength(expected.length);
  actual.forEach((v, i) => expect(Array.from(v, Math.fround)).toEqual(Array.from(expected[i]!, Math.fround)));
}

/**
 * A TCP proxy in front of PostgreSQL: a `serve` started with its DATABASE_URL pointing here sees
 * the database vanish on `down()` (every connection cut, new ones closed at once) and come back on
 * `up()`, as in an outage, while the rest of the test keeps its direct connections.
 */
export class PgProxy {
  private readonly sockets = new Set<net.Socket>();
  private isUp = true;
  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async start(): Promise<PgProxy> {
    const target = new URL(TEST_SERVER_URL);
    const host = target.hostname || '127.0.0.1';
    const port = Number(target.port || 5432);
    let proxy: PgProxy | undefined;
    const server = net.createServer((client) => {
      if (!proxy!.isUp) return void client.destroy();
      const upstream = net.connect(port, host);
      for (const s of [client, upstream]) {
        proxy!.sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          proxy!.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new PgProxy(server, (server.address() as net.AddressInfo).port);
    return proxy;
  }

  /** `url` with its host and port replaced by the proxy's. */
  url(url: string): string {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(this.port);
    return u.toString();
  }

  down(): void {
    this.isUp = false;
    for (const s of this.sockets) s.destroy();
  }

  up(): void {
    this.isUp = true;
  }

  async close(): Promise<void> {
    this.down();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
