/** Shared pieces of the benchmarks: a throwaway database, the real CLI as processes, stats. */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpus, totalmem } from 'node:os';
import pg from 'pg';
import { provision } from '../src/db/provision.js';

const SERVER = process.env.SWITCHYARD_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const BIN = new URL('../bin/switchyard.mjs', import.meta.url).pathname;

export interface BenchDb {
  url: string;
  drop(): Promise<void>;
}

export async function benchDatabase(): Promise<BenchDb> {
  const name = `switchyard_bench_${randomBytes(4).toString('hex')}`;
  const url = Object.assign(new URL(SERVER), { pathname: `/${name}` }).toString();
  await provision(url);
  return {
    url,
    async drop() {
      const admin = new pg.Client({ connectionString: SERVER });
      await admin.connect();
      await admin.query(`drop database if exists ${name} with (force)`);
      await admin.end();
    },
  };
}

/** Runs a CLI command to completion (ready undefined) or until its output matches `ready`. */
export function cli(url: string, args: string[], env: Record<string, string> = {}, ready?: RegExp) {
  const child: ChildProcess = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env, DATABASE_URL: url } });
  let out = '';
  const done = new Promise<string>((resolve, reject) => {
    if (ready) setTimeout(() => reject(new Error(`${args.join(' ')} not ready after 120 s:\n${out}`)), 120_000).unref();
    const on = (d: Buffer) => {
      out += d;
      const m = ready && out.match(ready);
      if (m) resolve(m[1] ?? m[0]);
    };
    child.stdout!.on('data', on);
    child.stderr!.on('data', on);
    child.on('exit', (code) => (!ready && code === 0 ? resolve(out) : reject(new Error(`${args.join(' ')} exited ${code}:\n${out}`))));
  });
  return { child, done, output: () => out, stop: () => child.kill('SIGTERM') };
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
export const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

export function machine() {
  return { cores: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', memory_gib: Math.round(totalmem() / 2 ** 30), node: process.version };
}
