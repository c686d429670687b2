import { Worker } from 'node:worker_threads';
import type { Prompt, SamplingParams } from '../protocol/chat.js';
import type { FinishReason } from '../protocol/shared.js';
import type { ChoiceResult } from './generation/generate.js';
import { ThreadError } from './generation/thread-error.js';
import type { ModelSpec } from './models-source.js';
import type { FromThread, ToThread } from './thread-protocol.js';
import type { WorkerBatchStats } from '../db/workers-repo.js';
import type { LogFn } from '../log.js';
import type { ErrorBody } from '../protocol/errors.js';
import type { EmbedInput } from './embedding/embed.js';
import type { TokenLogprob } from './generation/logprobs.js';
import type { InputBound } from '../protocol/limits.js';
import type { RerankInput, RerankOutput } from './rerank/score.js';

export interface GenerationHandlers {
  /** Batch work (ai.submit_chat, Batch API lines): scheduled after interactive requests (scheduler.ts). */
  background?: boolean;
  /** Whose prompts this one may share the prefix cache with (ai.claim_chat's cache_scope). */
  cacheScope?: string;
  onStarted(promptTokens: number): void;
  onDelta(index: number, text: string, finishReason: FinishReason | null, logprobs?: TokenLogprob[], stopSequence?: string): void;
}

export interface GenerationResult {
  promptTokens: number;
  choices: ChoiceResult[];
}

export interface EmbeddingResult {
  vectors: (Float32Array | null)[];
  tokens: number[];
  errors: (ErrorBody | null)[];
  dimensions: number;
  /** Which model calls computed these (set by the batcher; recorded so batching is visible). */
  calls?: number[];
}

export interface LoadInfo {
  ms: number;
  contextLength: number;
  dimensions: number | null;
  /** For ai.models.input_bound: what the gateway needs to refuse a text too long for the model. */
  inputBound: InputBound | null;
}

interface Pending extends Partial<GenerationHandlers> {
  resolve(r: GenerationResult | EmbeddingResult | RerankOutput[]): void;
  reject(e: ThreadError): void;
}

/**
 * The worker process's side of the model thread: sends work, routes the thread's events to
 * the job that asked, and restarts the thread if it dies (failing what was in flight).
 */
export class ModelHost {
  private thread!: Worker;
  private readonly pending = new Map<string, Pending>();
  private readonly loads = new Map<string, { resolve(info: LoadInfo): void; reject(e: ThreadError): void }[]>();
  private sequence = 0;
  private closed = false;
  /** The model thread's latest decode-batch counters per chat model (see thread-protocol.ts). */
  batchStats: Record<string, WorkerBatchStats> = {};

  constructor(
    private readonly modelsDir: string | undefined,
    private readonly log: { info: LogFn; error: LogFn },
  ) {
    this.start();
  }

  private start(): void {
    this.thread = new Worker(new URL('./model-thread-boot.mjs', import.meta.url), { workerData: { modelsDir: this.modelsDir } });
    this.thread.on('message', (msg: FromThread | FromThread[]) => this.onMessage(msg));
    this.thread.on('error', (err) => this.log.error(`model thread failed: ${err.stack ?? err.message}`));
    this.thread.on('exit', (code) => {
      const failure = ThreadError.server(`the model thread exited (code ${code})`);
      for (const p of this.pending.values()) p.reject(failure);
      this.pending.clear();
      for (const waiters of this.loads.values()) for (const w of waiters) w.reject(failure);
      this.loads.clear();
      if (!this.closed) {
        this.log.error(`model thread exited with code ${code}; restarting it`);
        this.start();
      }
    });
  }

  private send(msg: ToThread): void {
    this.thread.postMessage(msg);
  }

  /** One message, or the messages of one turn of the thread's loop, in order (model-thread.ts). */
  private onMessage(msg: FromThread | FromThread[]): void {
    if (Array.isArray(msg)) {
      for (const m of msg) this.onMessage(m);
      return;
    }
    switch (msg.type) {
      case 'stats':
        this.batchStats = msg.stats;
        return;
      case 'progress':
        this.log.info(`loading ${msg.model}: ${msg.file} ${msg.percent}%`);
        return;
      case 'loaded':
        this.log.info(
          `model ${msg.model} ready in ${msg.ms} ms (context ${msg.contextLength} tokens` +
            (msg.groupedAttention > 0 ? `; attention over grouped KV heads: ${msg.groupedAttention} products rewritten at load` : '') +
            (msg.splitCache > 0 ? `; ${msg.splitCache} cache outputs hold only new tokens (the cache stays in place)` : '') +
            (msg.keepsLogits ? '; logits only for the positions read' : '') + ')',
        );
        for (const w of this.loads.get(msg.model) ?? []) w.resolve({ ms: msg.ms, contextLength: msg.contextLength, dimensions: msg.dimensions, inputBound: msg.inputBound });
        this.loads.delete(msg.model);
        return;
      case 'load-failed':
        for (const w of this.loads.get(msg.model) ?? []) w.reject(ThreadError.from(msg.error));
        this.loads.delete(msg.model);
        return;
      case 'started':
        this.pending.get(msg.id)?.onStarted?.(msg.promptTokens);
        return;
      case 'delta':
        this.pending.get(msg.id)?.onDelta?.(msg.index, msg.text, msg.finishReason, msg.logprobs, msg.stopSequence);
        return;
      case 'embedded': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.resolve({ vectors: msg.vectors, tokens: msg.tokens, errors: msg.errors, dimensions: msg.dimensions });
        return;
      }
      case 'reranked': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.resolve(msg.outputs);
        return;
      }
      case 'done': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.resolve({ promptTokens: msg.promptTokens, choices: msg.choices });
        return;
      }
      case 'error': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.reject(ThreadError.from(msg.error));
        return;
      }
    }
  }

  /** Loads a model ahead of its first request. */
  load(spec: ModelSpec): Promise<LoadInfo> {
    return new Promise((resolve, reject) => {
      const waiters = this.loads.get(spec.name) ?? [];
      waiters.push({ resolve, reject });
      this.loads.set(spec.name, waiters);
      this.send({ type: 'load', spec });
    });
  }

  generate(id: string, spec: ModelSpec, prompt: Prompt, params: SamplingParams, handlers: GenerationHandlers): Promise<GenerationResult> {
    return new Promise((resolve, reject) => {
      this.pending.set(id, { ...handlers, resolve: resolve as Pending['resolve'], reject });
      this.send({ type: 'generate', id, spec, prompt, params, ...(handlers.background ? { background: true } : {}), ...(handlers.cacheScope ? { cacheScope: handlers.cacheScope } : {}) });
    });
  }

  /** One model call for many inputs (the batcher gathers them); vectors are full-dimension. */
  embed(spec: ModelSpec, inputs: EmbedInput[]): Promise<EmbeddingResult> {
    const id = `embed-${++this.sequence}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as Pending['resolve'], reject });
      this.send({ type: 'embed', id, spec, inputs });
    });
  }

  /** Scores the pairs of many rerank requests in one model call (rerank/claimer.ts gathers them). */
  rerank(spec: ModelSpec, inputs: RerankInput[]): Promise<RerankOutput[]> {
    const id = `rerank-${++this.sequence}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as Pending['resolve'], reject });
      this.send({ type: 'rerank', id, spec, inputs });
    });
  }

  cancel(id: string): void {
    if (this.pending.has(id)) this.send({ type: 'cancel', id });
  }

  isRunning(id: string): boolean {
    return this.pending.has(id);
  }

  /** Generations under way (or stopping) here. */
  runningIds(): string[] {
    return [...this.pending.keys()].filter((id) => !id.startsWith('embed-') && !id.startsWith('rerank-'));
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.thread.terminate();
  }
}
