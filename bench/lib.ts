/** Shared pieces of the benchmarks: a throwaway database, the real CLI as processes, stats. */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpus, loadavg, totalmem } from 'node:os';
import pg from 'pg';
import { provision } from '../src/db/provision.js';

export const SERVER = process.env.SWITCHYARD_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const BIN = new URL('../bin/switchyard.mjs', import.meta.url).pathname;

export interface BenchDb {
  url: string;
  name: string;
  drop(): Promise<void>;
}

export async function benchDatabase(): Promise<BenchDb> {
  const name = `switchyard_bench_${randomBytes(4).toString('hex')}`;
  const url = Object.assign(new URL(SERVER), { pathname: `/${name}` }).toString();
  await provision(url);
  return {
    url,
    name,
    async drop() {
      const admin = new pg.Client({ connectionString: SERVER });
      await admin.connect();
      await admin.query(`drop database if exists ${name} with (force)`);
      await admin.end();
    },
  };
}

export interface CliProcess {
  child: ChildProcess;
  /** Resolves with the first match of `ready` (its group 1 when it has one), or the output on exit 0. */
  done: Promise<string>;
  output(): string;
  /** Resolves once the output matches `re` (checked against everything printed so far). */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  stop(): void;
  /** SIGTERM, then waits for the exit (SIGKILL after `graceMs`). */
  stopAndWait(graceMs?: number): Promise<void>;
}

/** BENCH_NODE_ARGS: options for the node of every serve, worker and CLI command the bench starts (`--cpu-prof`, `--trace-gc`, `--perf-basic-prof`). */
const nodeArgs = () => (process.env.BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);

/** Runs a CLI command to completion (ready undefined) or until its output matches `ready`. */
export function cli(url: string, args: string[], env: Record<string, string> = {}, ready?: RegExp): CliProcess {
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs(), BIN, ...args], { env: { ...process.env, ...env, DATABASE_URL: url } });
  let out = '';
  const watchers = new Set<() => void>();
  let exited = false;
  const exit = new Promise<void>((resolve) => child.on('exit', () => ((exited = true), resolve())));
  const done = new Promise<string>((resolve, reject) => {
    if (ready) setTimeout(() => reject(new Error(`${args.join(' ')} not ready after 120 s:\n${out}`)), 120_000).unref();
    const on = (d: Buffer) => {
      out += d;
      if (out.length > 4_000_000) out = out.slice(-2_000_000);
      const m = ready && out.match(ready);
      if (m) resolve(m[1] ?? m[0]);
      for (const w of watchers) w();
    };
    child.stdout!.on('data', on);
    child.stderr!.on('data', on);
    child.on('exit', (code) => (!ready && code === 0 ? resolve(out) : reject(new Error(`${args.join(' ')} exited ${code}:\n${out.slice(-4000)}`))));
  });
  done.catch(() => {});
  const waitFor = (re: RegExp, timeoutMs = 180_000) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = () => {
        const m = out.match(re);
        if (m) {
          watchers.delete(check);
          clearTimeout(timer);
          resolve(m);
        } else if (exited) {
          watchers.delete(check);
          clearTimeout(timer);
          reject(new Error(`${args.join(' ')} exited before printing ${re}:\n${out.slice(-4000)}`));
        }
      };
      const timer = setTimeout(() => {
        watchers.delete(check);
        reject(new Error(`${args.join(' ')}: no ${re} after ${timeoutMs} ms:\n${out.slice(-4000)}`));
      }, timeoutMs);
      watchers.add(check);
      void exit.then(check);
      check();
    });
  return {
    child,
    done,
    output: () => out,
    waitFor,
    stop: () => child.kill('SIGTERM'),
    async stopAndWait(graceMs = 20_000) {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exit;
      clearTimeout(t);
    },
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
export const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

/** A figure over repeated runs: the median, with min and max. */
export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function stat(xs: number[]): Stat {
  if (xs.length === 0) return { median: NaN, min: NaN, max: NaN, n: 0 };
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

export function machine() {
  return { cores: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', memory_gib: Math.round(totalmem() / 2 ** 30), node: process.version, loadavg_1m: Math.round(loadavg()[0]! * 100) / 100 };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const progress = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
