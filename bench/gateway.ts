/**
 * The gateway side: a throwaway database, real `serve` and `worker` processes (bin/switchyard.mjs),
 * and HTTP clients that time what an application sees.
 */
import { readFile, readdir, readlink, writeFile } from 'node:fs/promises';
import pg from 'pg';
import { benchDatabase, cli, type BenchDb, type CliProcess } from './lib.js';
import type { BenchModels } from './models.js';

/** Model names as registered in the bench database. */
export const CHAT = 'smollm2';
export const EMBED = 'minilm';
export const TINY = 'tiny';
export const CHAT_Q8 = 'smollm2-q8';

export interface Stack {
  db: BenchDb;
  base: string;
  key: string;
  serve: CliProcess;
  workers: CliProcess[];
  pool: pg.Pool;
  addWorker(): Promise<CliProcess>;
  stopWorker(w: CliProcess): Promise<void>;
  stop(): Promise<void>;
}

/** Settings for the bench's serve: queue bound and deadline high enough for 1,000 open streams. */
export const SERVE_ENV = { PORT: '0', SWITCHYARD_MAX_QUEUE: '5000', SWITCHYARD_REQUEST_TIMEOUT: '900' };

export async function startStack(models: BenchModels, workerCount = 1): Promise<Stack> {
  const db = await benchDatabase();
  const stack: Partial<Stack> & { workers: CliProcess[] } = { db, workers: [] };
  try {
    // fp32, pinned: the in-process side loads fp32, and these figures compare with it. CHAT_Q8 is
    // the same model in int8 (what `models add` picks on CPU by default), for the int8 section.
    await cli(db.url, ['models', 'add', CHAT, '--task', 'chat', '--source', models.chat, '--dtype', 'fp32']).done;
    await cli(db.url, ['models', 'add', CHAT_Q8, '--task', 'chat', '--source', models.chat, '--dtype', 'q8']).done;
    await cli(db.url, ['models', 'add', EMBED, '--task', 'embedding', '--source', models.embed, '--dtype', 'fp32']).done;
    await cli(db.url, ['models', 'add', TINY, '--task', 'chat', '--source', models.tiny, '--dtype', 'fp32']).done;
    const key = (await cli(db.url, ['keys', 'create', '--name', 'bench']).done).trim().split('\n').pop()!;
    const serve = cli(db.url, ['serve'], SERVE_ENV);
    const startWorker = async () => {
      const w = cli(db.url, ['worker'], { SWITCHYARD_MODELS_DIR: models.dir });
      stack.workers.push(w);
      for (const name of [CHAT, CHAT_Q8, EMBED, TINY]) await w.waitFor(new RegExp(`model ${name} ready in`));
      return w;
    };
    const [listening] = await Promise.all([serve.waitFor(/listening on (http:\/\/\S+)/), ...Array.from({ length: workerCount }, startWorker)]);
    const pool = new pg.Pool({ connectionString: db.url, max: 4 });
    Object.assign(stack, {
      base: listening[1]!,
      key,
      serve,
      pool,
      addWorker: startWorker,
      async stopWorker(w: CliProcess) {
        await w.stopAndWait();
        stack.workers.splice(stack.workers.indexOf(w), 1);
      },
      async stop() {
        await Promise.all([serve.stopAndWait(), ...stack.workers.map((w) => w.stopAndWait())]);
        await pool.end();
        await db.drop();
      },
    });
    return stack as Stack;
  } catch (err) {
    for (const w of stack.workers) w.stop();
    stack.serve?.stop();
    await new Promise((r) => setTimeout(r, 1000));
    await db.drop().catch(() => {});
    throw err;
  }
}

const headers = (key: string) => ({ authorization: `Bearer ${key}`, 'content-type': 'application/json' });

export interface ChatBody {
  model: string;
  messages: { role: string; content: string }[];
  max_tokens: number;
  [k: string]: unknown;
}

/**
 * One non-streaming chat completion; ms from sending to the parsed body. Never throws: a non-200,
 * a network error or no answer within `timeoutMs` is `error` (callers count it, never drop it).
 */
export async function chatOnce(
  s: Stack,
  body: ChatBody,
  timeoutMs = 60_000,
): Promise<{ ms: number; status: number; completionTokens: number; requestId: string | null; error: string | null }> {
  const t0 = performance.now();
  try {
    const res = await fetch(`${s.base}/v1/chat/completions`, {
      method: 'POST', headers: headers(s.key), body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs),
    });
    const json = (await res.json()) as { usage?: { completion_tokens: number }; error?: { message: string } };
    const ms = performance.now() - t0;
    const error = res.status === 200 ? null : `status ${res.status}: ${JSON.stringify(json).slice(0, 200)}`;
    return { ms, status: res.status, completionTokens: json.usage?.completion_tokens ?? 0, requestId: res.headers.get('x-request-id'), error };
  } catch (err) {
    const timedOut = (err as Error).name === 'TimeoutError';
    return { ms: performance.now() - t0, status: 0, completionTokens: 0, requestId: null, error: timedOut ? `no answer within ${timeoutMs / 1000} s` : `network: ${(err as Error).message}` };
  }
}

export interface StreamResult {
  status: number;
  /** performance.now() when the request was sent, the headers arrived, the first and last text arrived, [DONE]. */
  sentAt: number;
  headersAt: number | null;
  firstTokenAt: number | null;
  lastTokenAt: number | null;
  endAt: number | null;
  completionTokens: number;
  promptTokens: number;
  /** Chunks that carried text (a chunk may hold several tokens), and the text (choice 0's). */
  textChunks: number;
  text: string;
  done: boolean;
  /** Cancelled by the caller's `signal` (on purpose, e.g. after the first token): not an error. */
  cancelled: boolean;
  /** Anything else that kept the stream from [DONE]: a non-200, an error event, a network error, a stall, the deadline. */
  error: string | null;
  body: string | null;
  requestId: string | null;
}

/**
 * A streaming chat completion with usage; never throws (errors are in the result). `onFirstToken`
 * runs when the first text arrives; `signal` cancels on purpose (`cancelled`, not an error). A
 * stream that hangs is an error, never dropped: no byte for `stallMs` (default 30 s), or still
 * open at `deadlineAt` (a performance.now() time; default 10 minutes after sending).
 */
export async function chatStream(
  s: Stack,
  body: ChatBody,
  opts: { signal?: AbortSignal; onFirstToken?: () => void; onHeaders?: () => void; stallMs?: number; deadlineAt?: number } = {},
): Promise<StreamResult> {
  const r: StreamResult = {
    status: 0, sentAt: performance.now(), headersAt: null, firstTokenAt: null, lastTokenAt: null, endAt: null,
    completionTokens: 0, promptTokens: 0, textChunks: 0, text: '', done: false, cancelled: false, error: null, body: null, requestId: null,
  };
  const stallMs = opts.stallMs ?? 30_000;
  const deadlineAt = opts.deadlineAt ?? r.sentAt + 600_000;
  const abort = new AbortController();
  let why: 'cancelled' | 'stalled' | 'deadline' | null = null;
  const stop = (reason: typeof why) => {
    why ??= reason;
    abort.abort();
  };
  const onCancel = () => stop('cancelled');
  if (opts.signal?.aborted) onCancel();
  opts.signal?.addEventListener('abort', onCancel);
  let stall = setTimeout(() => stop('stalled'), stallMs);
  const deadline = setTimeout(() => stop('deadline'), Math.max(0, deadlineAt - r.sentAt));
  const alive = () => {
    clearTimeout(stall);
    stall = setTimeout(() => stop('stalled'), stallMs);
  };
  try {
    const res = await fetch(`${s.base}/v1/chat/completions`, {
      method: 'POST',
      headers: headers(s.key),
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      signal: abort.signal,
    });
    alive();
    r.status = res.status;
    r.headersAt = performance.now();
    r.requestId = res.headers.get('x-request-id');
    opts.onHeaders?.();
    if (res.status !== 200) {
      r.body = await res.text();
      r.error = `status ${res.status}`;
      return r;
    }
    const decoder = new TextDecoder();
    let buf = '';
    for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
      const now = performance.now();
      alive();
      buf += decoder.decode(part, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) !== -1) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        // An event's data line, wherever it is among its fields (chat frames lead with `id:`).
        const line = event.split('\n').find((l) => l.startsWith('data: '));
        if (line === undefined) continue;
        const data = line.slice(6);
        if (data === '[DONE]') {
          r.done = true;
          r.endAt = now;
          continue;
        }
        const chunk = JSON.parse(data) as {
          error?: { message: string };
          choices?: { delta?: { content?: string } }[];
          usage?: { completion_tokens: number; prompt_tokens: number } | null;
        };
        if (chunk.error) r.error = `stream error: ${chunk.error.message}`;
        if (chunk.choices?.[0]?.delta?.content) {
          if (r.firstTokenAt === null) {
            r.firstTokenAt = now;
            opts.onFirstToken?.();
          }
          r.lastTokenAt = now;
          r.textChunks++;
          r.text += chunk.choices[0].delta.content;
        }
        if (chunk.usage) {
          r.completionTokens = chunk.usage.completion_tokens;
          r.promptTokens = chunk.usage.prompt_tokens;
        }
      }
    }
    if (!r.done && !r.error) r.error = 'stream ended without [DONE]';
  } catch (err) {
    if (why === 'cancelled') r.cancelled = true;
    else if (why === 'stalled') r.error = `stalled: no byte for ${stallMs / 1000} s`;
    else if (why === 'deadline') r.error = `deadline: still open ${((deadlineAt - r.sentAt) / 1000).toFixed(0)} s after sending`;
    else r.error = `network: ${(err as Error).message}`;
  } finally {
    clearTimeout(stall);
    clearTimeout(deadline);
    opts.signal?.removeEventListener('abort', onCancel);
  }
  return r;
}

export async function embedOne(s: Stack, input: string | string[]): Promise<void> {
  const res = await fetch(`${s.base}/v1/embeddings`, {
    method: 'POST',
    headers: headers(s.key),
    body: JSON.stringify({ model: EMBED, input, encoding_format: 'base64' }),
  });
  if (res.status !== 200) throw new Error(`embeddings ${res.status}: ${await res.text()}`);
  await res.json();
}

/** VmHWM / VmRSS of a process, in MiB. */
export async function memoryOf(pid: number): Promise<{ hwm: number; rss: number }> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(text.match(new RegExp(`${field}:\\s+(\\d+)`))?.[1] ?? NaN);
  return { hwm: kb('VmHWM') / 1024, rss: kb('VmRSS') / 1024 };
}

/** Resets a process's peak RSS (VmHWM) to its current RSS; false where the kernel refuses. */
export async function resetPeak(pid: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Open sockets of a process (its TCP connections, listening socket and pipes to Postgres). */
export async function socketsOf(pid: number): Promise<number> {
  let n = 0;
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (target.startsWith('socket:')) n++;
  }
  return n;
}

/** CPU seconds (user + system, all threads) a process has used so far; 0 once it is gone. */
export async function cpuSeconds(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start at ") ": utime and stime are 14 and 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

/** Pids of the PostgreSQL backends connected to one database (their title names it). */
export async function backendsOf(dbName: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmd = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmd.startsWith('postgres:') && cmd.includes(` ${dbName} `)) pids.push(Number(entry));
  }
  return pids;
}

/**
 * CPU used by each part of the gateway while `work` runs: serve, the workers, and the database's
 * backends (those alive at the start and at the end), against the wall time.
 */
export async function cpuDuring<T>(s: Stack, work: () => Promise<T>): Promise<{ result: T; wallS: number; serveS: number; workerS: number; postgresS: number }> {
  const pidsBefore = await backendsOf(s.db.name);
  const snapshot = async (pids: number[]) => Object.fromEntries(await Promise.all(pids.map(async (p) => [p, await cpuSeconds(p)] as const)));
  const workerPids = s.workers.map((w) => w.child.pid!);
  const [serve0, workers0, pg0] = [await cpuSeconds(s.serve.child.pid!), await snapshot(workerPids), await snapshot(pidsBefore)];
  const t0 = performance.now();
  const result = await work();
  const wallS = (performance.now() - t0) / 1000;
  const pidsAfter = [...new Set([...pidsBefore, ...(await backendsOf(s.db.name))])];
  const [serve1, workers1, pg1] = [await cpuSeconds(s.serve.child.pid!), await snapshot(workerPids), await snapshot(pidsAfter)];
  const sum = (a: Record<string, number>, b: Record<string, number>) => Object.keys(b).reduce((n, k) => n + Math.max(0, b[k]! - (a[k] ?? 0)), 0);
  return { result, wallS, serveS: serve1 - serve0, workerS: sum(workers0, workers1), postgresS: sum(pg0, pg1) };
}
