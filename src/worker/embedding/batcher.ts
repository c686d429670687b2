import type { EmbeddingResult, ModelHost } from '../model-host.js';
import type { ModelSpec } from '../models-source.js';
import type { EmbedInput } from './embed.js';

/** Inputs per model call; the thread splits a call into length-sorted sub-batches itself. */
export const MAX_CALL_INPUTS = 256;
/**
 * How a call waits for company before it starts. Jobs reach a worker one fetch at a time, so
 * without a window a fast model runs nearly every request alone. A call waits while requests
 * keep arriving (each GATHER_STEP_MS), at most GATHER_MAX_MS, like Triton's max_queue_delay.
 */
const GATHER_STEP_MS = 3;
const GATHER_MAX_MS = 20;

interface Waiter {
  inputs: EmbedInput[];
  /** Already a batch (the claimer's): run it without waiting for company. */
  immediate: boolean;
  resolve(r: EmbeddingResult): void;
  reject(e: unknown): void;
}

export interface BatchStats {
  calls: number;
  inputs: number;
  sizes: Map<number, number>;
}

/**
 * Dynamic batching for one embedding model: concurrent jobs submit their inputs here, and
 * they are run as one model call (up to MAX_CALL_INPUTS), one call at a time.
 */
export class EmbedBatcher {
  private waiting: Waiter[] = [];
  private running = false;
  private timer: NodeJS.Timeout | null = null;
  readonly stats: BatchStats = { calls: 0, inputs: 0, sizes: new Map() };
  private callSeq = 0;

  constructor(
    private readonly host: ModelHost,
    private readonly spec: ModelSpec,
  ) {}

  /**
   * `immediate`: the inputs are already a batch (the claimer claims everything queued at once),
   * so the call starts now instead of gathering company for a few ms, which a single ai.embed
   * call would pay in full (issue 14). Vectorizer jobs, which arrive one at a time, gather.
   */
  submit(inputs: EmbedInput[], immediate = false): Promise<EmbeddingResult> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ inputs, immediate, resolve, reject });
      if (this.running) return;
      if (immediate || this.pendingInputs() >= MAX_CALL_INPUTS) void this.run();
      else this.timer ??= setTimeout(() => void this.run(), 0);
    });
  }

  private pendingInputs(): number {
    return this.waiting.reduce((n, w) => n + w.inputs.length, 0);
  }

  /** Takes whole requests up to the call size; a request larger than a call is split over calls. */
  private take(): { parts: { waiter: Waiter; from: number; to: number }[]; inputs: EmbedInput[] } {
    const parts: { waiter: Waiter; from: number; to: number }[] = [];
    const inputs: EmbedInput[] = [];
    while (this.waiting.length && inputs.length < MAX_CALL_INPUTS) {
      const w = this.waiting[0]!;
      const room = MAX_CALL_INPUTS - inputs.length;
      if (w.inputs.length <= room || inputs.length === 0) {
        this.waiting.shift();
        parts.push({ waiter: w, from: 0, to: w.inputs.length });
        inputs.push(...w.inputs);
      } else break;
    }
    return { parts, inputs };
  }

  private async run(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.running) return;
    this.running = true;
    try {
      while (this.waiting.length) {
        if (!this.waiting.every((w) => w.immediate)) await this.gather();
        const { parts, inputs } = this.take();
        try {
          const call = ++this.callSeq;
          const result = await this.callInChunks(inputs);
          this.stats.calls += Math.ceil(inputs.length / MAX_CALL_INPUTS);
          this.stats.inputs += inputs.length;
          this.stats.sizes.set(inputs.length, (this.stats.sizes.get(inputs.length) ?? 0) + 1);
          let offset = 0;
          for (const p of parts) {
            const n = p.to - p.from;
            p.waiter.resolve({
              vectors: result.vectors.slice(offset, offset + n),
              tokens: result.tokens.slice(offset, offset + n),
              errors: result.errors.slice(offset, offset + n),
              dimensions: result.dimensions,
              calls: [call],
            });
            offset += n;
          }
        } catch (err) {
          for (const p of parts) p.waiter.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** Waits while more requests keep arriving, up to GATHER_MAX_MS or a full call. */
  private async gather(): Promise<void> {
    const started = Date.now();
    let seen = -1;
    while (this.waiting.length !== seen && this.pendingInputs() < MAX_CALL_INPUTS && Date.now() - started < GATHER_MAX_MS) {
      seen = this.waiting.length;
      await new Promise((r) => setTimeout(r, GATHER_STEP_MS));
    }
  }

  /** A single request may exceed one call (up to 2048 inputs): run it as consecutive calls. */
  private async callInChunks(inputs: EmbedInput[]): Promise<EmbeddingResult> {
    if (inputs.length <= MAX_CALL_INPUTS) return this.host.embed(this.spec, inputs);
    const out: EmbeddingResult = { vectors: [], tokens: [], errors: [], dimensions: 0 };
    for (let i = 0; i < inputs.length; i += MAX_CALL_INPUTS) {
      const r = await this.host.embed(this.spec, inputs.slice(i, i + MAX_CALL_INPUTS));
      out.vectors.push(...r.vectors);
      out.tokens.push(...r.tokens);
      out.errors.push(...r.errors);
      out.dimensions = r.dimensions;
    }
    return out;
  }
}
