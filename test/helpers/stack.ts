import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import pg from 'pg';

const BIN = fileURLToPath(new URL('../../bin/switchyard.mjs', import.meta.url));

export const modelsDir = (): string => inject('modelsDir' as never) as string;

export interface Proc {
  child: ChildProcess;
  output: () => string;
  exited: () => boolean;
  stop(): Promise<void>;
}

/** Runs the real CLI as a separate process, as a user would. */
export function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env, SWITCHYARD_LOG: 'info' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

/** Starts a long-running CLI command and waits until its output matches `ready`. */
export async function start(args: string[], env: Record<string, string>, ready: RegExp, timeoutMs = 60_000): Promise<Proc & { match: RegExpMatchArray }> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
  let out = '';
  let exited = false;
  child.on('exit', () => (exited = true));
  const match = await new Promise<RegExpMatchArray>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`'${args.join(' ')}' not ready after ${timeoutMs} ms:\n${out}`)), timeoutMs);
    const onData = (d: Buffer) => {
      out += d;
      const m = out.match(ready);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`'${args.join(' ')}' exited with ${code}:\n${out}`));
    });
  });
  return {
    child,
    match,
    output: () => out,
    exited: () => exited,
    stop: () =>
      new Promise<void>((resolve) => {
        if (exited) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }),
  };
}

export async function startServe(databaseUrl: string, extra: string[] = []) {
  const p = await start(['serve', ...extra], { DATABASE_URL: databaseUrl, PORT: '0', HOST: '127.0.0.1' }, /listening on (http:\/\/\S+)/);
  return { ...p, url: p.match[1]! };
}

export async function startWorker(databaseUrl: string, extra: string[] = []) {
  const p = await start(['worker', ...extra], { DATABASE_URL: databaseUrl, SWITCHYARD_MODELS_DIR: modelsDir() }, /worker (\S+) serving/);
  return { ...p, workerId: p.match[1]! };
}

/** A short-lived query against the test database. */
export async function query<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text, values)).rows;
  } finally {
    await c.end();
  }
}

/** Polls `probe` every `everyMs` until it gives something truthy, and returns that; fails naming `what` after `ms`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined | null | false>, ms = 30_000, everyMs = 50): Promise<T> {
  const started = Date.now();
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() - started > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
