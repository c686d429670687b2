import { Worker } from 'node:worker_threads';
import { ThreadError } from '../generation/thread-error.js';
import type { ThreadErrorData } from '../thread-protocol.js';
import type { ModelSpec } from '../models-source.js';
import type { LogFn } from '../../log.js';

/** Messages between the worker process and its moderation thread (structured-clone safe). */
export type ToModerationThread = { type: 'load'; spec: ModelSpec } | { type: 'classify'; id: number; spec: ModelSpec; texts: string[] };
export type FromModerationThread =
  | { type: 'loaded'; model: string; labels: string[]; maxTokens: number; ms: number }
  | { type: 'load-failed'; model: string; error: ThreadErrorData }
  | { type: 'classified'; id: number; scores: number[][]; tokens: number[] }
  | { type: 'error'; id: number; error: ThreadErrorData };

export interface ClassifierInfo {
  labels: string[];
  maxTokens: number;
}

interface Waiter<T> {
  resolve(v: T): void;
  reject(e: ThreadError): void;
}

/**
 * The worker process's side of the moderation thread (thread.ts), started on first use: a worker
 * that serves no moderation model starts none. A thread that dies fails what it had and is
 * started again by the next call.
 */
export class ModerationHost {
  private thread: Worker | null = null;
  private readonly calls = new Map<number, Waiter<{ scores: number[][]; tokens: number[] }>>();
  private readonly loads = new Map<string, Waiter<ClassifierInfo>[]>();
  private sequence = 0;

  constructor(
    private readonly modelsDir: string | undefined,
    private readonly log: { info: LogFn; error: LogFn },
  ) {}

  private send(msg: ToModerationThread): void {
    if (!this.thread) {
      const t = new Worker(new URL('./thread-boot.mjs', import.meta.url), { workerData: { modelsDir: this.modelsDir } });
      t.on('message', (m: FromModerationThread) => this.onMessage(m));
      t.on('error', (err) => this.log.error(`moderation thread failed: ${err.stack ?? err.message}`));
      t.on('exit', (code) => {
        if (this.thread === t) this.thread = null;
        const failure = ThreadError.server(`the moderation thread exited (code ${code})`);
        for (const w of this.calls.values()) w.reject(failure);
        this.calls.clear();
        for (const ws of this.loads.values()) for (const w of ws) w.reject(failure);
        this.loads.clear();
      });
      this.thread = t;
    }
    this.thread.postMessage(msg);
  }

  private onMessage(msg: FromModerationThread): void {
    if (msg.type === 'loaded' || msg.type === 'load-failed') {
      const waiters = this.loads.get(msg.model) ?? [];
      this.loads.delete(msg.model);
      if (msg.type === 'loaded') this.log.info(`moderation model ${msg.model} ready in ${msg.ms} ms (labels ${msg.labels.join(', ')})`);
      for (const w of waiters) msg.type === 'loaded' ? w.resolve({ labels: msg.labels, maxTokens: msg.maxTokens }) : w.reject(ThreadError.from(msg.error));
      return;
    }
    const w = this.calls.get(msg.id);
    this.calls.delete(msg.id);
    if (msg.type === 'classified') w?.resolve({ scores: msg.scores, tokens: msg.tokens });
    else w?.reject(ThreadError.from(msg.error));
  }

  load(spec: ModelSpec): Promise<ClassifierInfo> {
    return new Promise((resolve, reject) => {
      const waiters = this.loads.get(spec.name) ?? [];
      waiters.push({ resolve, reject });
      this.loads.set(spec.name, waiters);
      this.send({ type: 'load', spec });
    });
  }

  /** Label probabilities per text, in the model's label order, and each text's tokens. */
  classify(spec: ModelSpec, texts: string[]): Promise<{ scores: number[][]; tokens: number[] }> {
    const id = ++this.sequence;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.send({ type: 'classify', id, spec, texts });
    });
  }

  async close(): Promise<void> {
    const t = this.thread;
    this.thread = null;
    await t?.terminate();
  }
}
