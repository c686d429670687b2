import { Tensor } from '@huggingface/transformers';
import type { SamplingParams } from '../../protocol/chat.js';
import type { FinishReason } from '../../protocol/shared.js';
import { checkBudget, int64, toPast, type ChatModel, type ChoiceResult, type Feeds, type GenerateOptions } from './generate.js';
import { logprobsOf, type TokenLogprob } from './logprobs.js';
import { applyPenalties, drawToken, makeRng } from './sampler.js';
import { TextStream } from './text-stream.js';
import { batchLimitsFromEnv, type BatchLimits } from './limits.js';
import type { TokenConstraint } from './constrain/index.js';
import type { WorkerBatchStats } from '../../db/workers-repo.js';
import { ThreadError } from './thread-error.js';
import { PrefixCache, type PrefixCacheStats } from './prefix-cache.js';

/**
 * Continuous batching, as vLLM and TGI schedule decoding: every sequence that is decoding on a
 * model advances in one batched forward pass per step; a request that arrives meanwhile is
 * prefilled (in chunks, between steps) and joins at the next step; a sequence that finishes or
 * is cancelled leaves at once and frees its slot.
 *
 * The batch's KV cache is one tensor per layer, [rows, kv heads, L, head dim], each row holding
 * its own tokens right-aligned (left padding), with an attention mask that hides the padding and
 * position ids counted per row. So a row sees exactly the keys and positions it would see alone:
 * its output does not depend on what it is batched with. The cache is re-laid out (rows added or
 * dropped, common padding trimmed) only when the batch's membership changes.
 *
 * A prompt that starts with blocks a finished sequence or an earlier prompt left in the prefix
 * cache (prefix-cache.ts) is prefilled from the end of those blocks only.
 */

export type { BatchLimits } from './limits.js';

/** The scheduler's counters (the stored shape less the gauges, which `load` gives). */
export type SchedulerStats = Omit<WorkerBatchStats, 'decoding' | 'waiting' | 'prefilling'> & PrefixCacheStats;

export interface SubmitOptions extends GenerateOptions {
  /** One per choice, when the request is constrained. */
  constraints?: () => TokenConstraint;
}

interface Request {
  promptIds: number[];
  params: SamplingParams;
  opts: SubmitOptions;
  maxNew: number;
  /** KV tokens reserved while the request runs. */
  reserve: number;
  rows: Row[];
  /** Prompt tokens in `past` so far (chunked prefill). */
  prefilled: number;
  past: Feeds | null;
  /** Its row in `past` (a prefill of several requests at once shares one cache). */
  pastRow: number;
  /** Logits of the last position prefilled so far (for the first token, and echo logprobs). */
  lastLogits: Float32Array | null;
  arrived: number;
  /** Holds a reservation (admitted, not yet answered). */
  admitted: boolean;
  /** Looked up in the prefix cache (once, just before its prefill starts). */
  looked: boolean;
  settled: boolean;
  resolve(choices: ChoiceResult[]): void;
  reject(err: ThreadError): void;
}

interface Row {
  req: Request;
  index: number;
  rng: () => number;
  counts: Map<number, number>;
  tokenIds: number[];
  stream: TextStream;
  constraint: TokenConstraint | null;
  finishReason: FinishReason | null;
  /** Tokens of this row in the cache (its prompt and what it has fed back so far). */
  len: number;
  /** The token sampled last, to be fed at the next step. */
  next: number;
}

/** Lets queued messages (cancel, new requests) and other work run between steps. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export class BatchScheduler {
  private readonly waiting: Request[] = [];
  private readonly prefilling: Request[] = [];
  /** Rows of the batch, in the order of the cache's batch axis. */
  private rows: Row[] = [];
  private past: Feeds | null = null;
  /** Length of the cache's sequence axis. */
  private L = 0;
  private reserved = 0;
  private running = false;
  private readonly counters = { steps: 0, stepSequences: 0, maxBatch: 0, decodeTokens: 0, prefillTokens: 0, prefills: 0, decodeMs: 0, prefillMs: 0, admitted: 0, admitWaitMs: 0 };
  private readonly prefix: PrefixCache;
  private readonly decode: (ids: number[]) => string;
  private readonly pieceOf: (id: number) => string;

  constructor(
    private readonly m: ChatModel,
    private readonly limits: BatchLimits = batchLimitsFromEnv(),
  ) {
    this.decode = (ids) => (ids.length ? m.tokenizer.decode(ids, { skip_special_tokens: true }) : '');
    this.pieceOf = (id) => m.tokenizer.decode([id], { skip_special_tokens: false });
    this.prefix = new PrefixCache(limits.prefixCacheBytes ?? 0);
  }

  /** Counters since the thread started, the prefix cache's among them. */
  get stats(): SchedulerStats {
    return { ...this.counters, ...this.prefix.stats };
  }

  /** Sequences decoding now, and requests waiting for a slot or being prefilled. */
  get load(): { decoding: number; waiting: number; prefilling: number } {
    return { decoding: this.rows.length, waiting: this.waiting.length, prefilling: this.prefilling.length };
  }

  /** The new tokens each choice may have; throws a 400 ThreadError for a request that does not fit (see checkBudget). */
  check(promptTokens: number, params: Pick<SamplingParams, 'maxTokens' | 'n'>): number {
    return checkBudget(this.m, promptTokens, params, this.limits.maxTokens);
  }

  /** Generates `params.n` choices for one prompt; resolves when every choice has finished. */
  submit(promptIds: number[], params: SamplingParams, opts: SubmitOptions): Promise<ChoiceResult[]> {
    const maxNew = this.check(promptIds.length, params);
    return new Promise((resolve, reject) => {
      const req: Request = {
        promptIds, params, opts, maxNew,
        reserve: params.n * (promptIds.length + maxNew),
        rows: [], prefilled: 0, past: null, pastRow: 0, lastLogits: null,
        arrived: performance.now(), admitted: false, looked: false, settled: false, resolve, reject,
      };
      this.waiting.push(req);
      if (!this.running) {
        // Started on the next turn, so that requests arriving together are prefilled together.
        this.running = true;
        setImmediate(() => void this.loop());
      }
    });
  }

  private async loop(): Promise<void> {
    try {
      while (this.waiting.length > 0 || this.prefilling.length > 0 || this.rows.length > 0) {
        try {
          this.dropCancelled();
          this.admit();
          await this.prefillSome();
          if (this.rows.length > 0) await this.step();
        } catch (err) {
          // A bug of ours (sampling, a constraint, detokenizing) must not take the thread down
          // or leave requests waiting forever: whoever is admitted fails; the queue goes on.
          const error = ThreadError.from(err);
          for (const req of new Set([...this.prefilling, ...this.rows.map((r) => r.req)])) this.settle(req, { error });
          this.prefilling.length = 0;
          this.relayout([]);
        }
        await yieldToLoop();
      }
    } finally {
      this.running = false;
    }
  }

  // --- admission and leaving -----------------------------------------------------------------

  private sequences(): number {
    return this.rows.length + this.prefilling.reduce((s, r) => s + r.params.n, 0);
  }

  /** FIFO: the oldest waiting request goes first (none reserves more than the whole budget: check()). */
  private admit(): void {
    while (this.waiting.length > 0) {
      const req = this.waiting[0]!;
      const busy = this.sequences() > 0;
      if (busy && (this.sequences() + req.params.n > this.limits.maxSequences || this.reserved + req.reserve > this.limits.maxTokens)) return;
      this.waiting.shift();
      req.admitted = true;
      this.reserved += req.reserve;
      this.prefilling.push(req);
      this.counters.admitted++;
      this.counters.admitWaitMs += performance.now() - req.arrived;
    }
  }

  /**
   * Starts the request's prefill after the longest cached prefix of its prompt (never its last
   * token, whose logits give the first token). Looked up when its prefill is about to start, not
   * at admission: requests that arrive together with one system prompt are prefilled one after
   * the other, so the second finds what the first left. Echoed prompts are prefilled whole: their
   * logprobs need every position's logits.
   */
  private reuse(req: Request): void {
    if (req.looked) return;
    req.looked = true;
    if (req.params.echo) return;
    const hit = this.prefix.lookup(req.promptIds, req.promptIds.length - 1);
    if (!hit) return;
    req.past = hit.past;
    req.pastRow = 0;
    req.prefilled = hit.tokens;
  }

  /** What a row has in the batch's cache: its prompt and the tokens fed back so far. */
  private cachedIds(row: Row): number[] {
    return row.req.promptIds.concat(row.tokenIds.slice(0, row.len - row.req.promptIds.length));
  }

  private settle(req: Request, outcome: { choices: ChoiceResult[] } | { error: ThreadError }): void {
    if (req.settled) return;
    req.settled = true;
    if (req.admitted) this.reserved -= req.reserve;
    req.past = null;
    req.lastLogits = null;
    if ('error' in outcome) req.reject(outcome.error);
    else req.resolve(outcome.choices);
  }

  private dropCancelled(): void {
    const cancelled = (r: Request) => r.opts.signal.aborted;
    const error = (r: Request) => ThreadError.cancelled(r.rows.reduce((n, row) => n + row.tokenIds.length, 0));
    for (const list of [this.waiting, this.prefilling]) {
      for (let i = list.length - 1; i >= 0; i--) {
        if (!cancelled(list[i]!)) continue;
        const [req] = list.splice(i, 1);
        this.settle(req!, { error: error(req!) });
      }
    }
    if (!this.rows.some((row) => cancelled(row.req))) return;
    for (const req of new Set(this.rows.map((row) => row.req))) if (cancelled(req)) this.settle(req, { error: error(req) });
    this.keepRows((row) => !cancelled(row.req));
  }

  /** Drops the batch rows that fail `keep` (their cache rows with them). */
  private keepRows(keep: (row: Row) => boolean): void {
    const past = this.past!;
    this.relayout(this.rows.flatMap((row, b) => (keep(row) ? [{ row, past, b }] : [])));
  }

  /** Finished rows leave the batch; a request is answered when its last row finishes. */
  private retire(): void {
    if (!this.rows.some((row) => row.finishReason !== null || row.req.settled)) return;
    // A finished sequence leaves its blocks for the next turn of its chat (its reply, as the next
    // prompt will hold it, when the template renders the same tokens).
    if (this.prefix.enabled) this.rows.forEach((row, b) => row.finishReason !== null && this.prefix.store(this.cachedIds(row), this.past!, b));
    for (const req of new Set(this.rows.filter((row) => row.finishReason !== null).map((row) => row.req))) this.answerIfDone(req);
    this.keepRows((row) => row.finishReason === null && !row.req.settled);
  }

  private answerIfDone(req: Request): void {
    if (req.rows.every((row) => row.finishReason !== null)) {
      this.settle(req, { choices: req.rows.map((r) => ({ index: r.index, text: r.stream.text, tokenIds: r.tokenIds, finishReason: r.finishReason! })) });
    }
  }

  /**
   * Rebuilds the batch cache from the given rows (each read from row `b` of `past`), right-aligned
   * to the longest: the new rows' order is the batch order from now on.
   */
  private relayout(sources: { row: Row; past: Feeds; b: number }[]): void {
    this.rows = sources.map((s) => s.row);
    if (sources.length === 0) {
      this.past = null;
      this.L = 0;
      return;
    }
    const L = Math.max(...sources.map((s) => s.row.len));
    const out: Feeds = {};
    for (const name of Object.keys(sources[0]!.past)) {
      const first = sources[0]!.past[name]!;
      const [, H, , D] = first.dims as [number, number, number, number];
      const data = new (first.data.constructor as Float32ArrayConstructor)(sources.length * H * L * D);
      sources.forEach((s, j) => {
        const t = s.past[name]!;
        const src = t.data as Float32Array;
        const Ls = t.dims[2]!;
        const len = s.row.len;
        for (let h = 0; h < H; h++) {
          const from = ((s.b * H + h) * Ls + (Ls - len)) * D;
          data.set(src.subarray(from, from + len * D), ((j * H + h) * L + (L - len)) * D);
        }
      });
      out[name] = new Tensor(first.type as 'float32', data, [sources.length, H, L, D]);
    }
    this.past = out;
    this.L = L;
  }

  // --- prefill ------------------------------------------------------------------------------------

  /** Prefills up to `prefillChunk` prompt tokens (at least one chunk), oldest request first. */
  private async prefillSome(): Promise<void> {
    let budget = this.limits.prefillChunk;
    while (budget > 0 && this.prefilling.length > 0) {
      const group = this.freshGroup(budget);
      if (group.length > 1) {
        budget -= group.length * Math.max(...group.map((r) => r.promptIds.length));
        await this.prefillTogether(group);
        continue;
      }
      const req = this.prefilling[0]!;
      const take = Math.min(budget, req.promptIds.length - req.prefilled);
      budget -= take;
      try {
        await this.prefillChunk(req, take);
      } catch (err) {
        this.prefilling.shift();
        this.settle(req, { error: ThreadError.from(err) });
        continue;
      }
      if (req.prefilled === req.promptIds.length) {
        this.prefilling.shift();
        try {
          this.prefix.store(req.promptIds, req.past!, req.pastRow);
          this.join(req);
        } catch (err) {
          // Before its rows were laid into the batch (sampling comes first): only it fails.
          this.settle(req, { error: ThreadError.from(err) });
        }
      }
    }
  }

  /**
   * The oldest prefilling requests that can be prefilled together in one forward: not started,
   * no echo, and their padded size (count × longest prompt) within `budget`.
   */
  private freshGroup(budget: number): Request[] {
    const group: Request[] = [];
    let longest = 0;
    for (const req of this.prefilling) {
      this.reuse(req);
      if (req.prefilled > 0 || req.params.echo) break;
      const L = Math.max(longest, req.promptIds.length);
      if ((group.length + 1) * L > budget) break;
      group.push(req);
      longest = L;
    }
    return group;
  }

  /**
   * Prompts that arrived together are prefilled in one batched forward, left-padded with an
   * attention mask and per-row positions (so each row computes what it would alone), giving the
   * cache in the batch's right-aligned layout already. Then each request joins the batch.
   */
  private async prefillTogether(group: Request[]): Promise<void> {
    const k = group.length;
    const P = Math.max(...group.map((r) => r.promptIds.length));
    const ids: number[] = [];
    const mask: number[] = [];
    const positions: number[] = [];
    for (const req of group) {
      const pad = P - req.promptIds.length;
      for (let i = 0; i < P; i++) {
        ids.push(i < pad ? req.promptIds[0]! : req.promptIds[i - pad]!);
        mask.push(i < pad ? 0 : 1);
        positions.push(i < pad ? 0 : i - pad);
      }
    }
    const t0 = performance.now();
    let outputs: Feeds;
    try {
      outputs = (await this.m.model.forward({ input_ids: int64(ids, [k, P]), attention_mask: int64(mask, [k, P]), position_ids: int64(positions, [k, P]) })) as Feeds;
    } catch (err) {
      for (const req of group) {
        this.prefilling.splice(this.prefilling.indexOf(req), 1);
        this.settle(req, { error: ThreadError.from(err) });
      }
      return;
    }
    this.counters.prefillMs += performance.now() - t0;
    this.counters.prefills++;
    this.counters.prefillTokens += group.reduce((n, r) => n + r.promptIds.length, 0);
    const logits = outputs.logits!.data as Float32Array;
    const V = outputs.logits!.dims[2]!;
    const past = toPast(outputs);
    group.forEach((req, j) => {
      this.prefilling.splice(this.prefilling.indexOf(req), 1);
      req.lastLogits = logits.slice((j * P + P - 1) * V, (j * P + P) * V);
      req.past = past;
      req.pastRow = j;
      req.prefilled = req.promptIds.length;
      try {
        this.prefix.store(req.promptIds, past, j);
        this.join(req);
      } catch (err) {
        this.settle(req, { error: ThreadError.from(err) });
      }
    });
  }

  private async prefillChunk(req: Request, take: number): Promise<void> {
    const start = req.prefilled;
    const end = start + take;
    const t0 = performance.now();
    const ids = req.promptIds.slice(start, end);
    const outputs = (await this.m.model.forward({
      input_ids: int64(ids, [1, take]),
      attention_mask: int64(new Array(end).fill(1), [1, end]),
      position_ids: int64(ids.map((_, i) => start + i), [1, take]),
      ...(req.past ? { past_key_values: req.past } : {}),
    })) as Feeds;
    this.counters.prefillMs += performance.now() - t0;
    this.counters.prefills++;
    this.counters.prefillTokens += take;
    const logits = outputs.logits!.data as Float32Array;
    const V = outputs.logits!.dims[2]!;
    if (req.params.echo && req.params.logprobs !== null) {
      // Echoed prompts with logprobs: each prompt token as the positions before predicted it.
      const entries: TokenLogprob[] = [];
      for (let i = start; i < end; i++) {
        const id = req.promptIds[i]!;
        const before = i === 0 ? null : i - 1 >= start ? logits.subarray((i - 1 - start) * V, (i - start) * V) : req.lastLogits;
        entries.push(before ? this.entry(before, id, req.params) : { id, token: this.pieceOf(id), logprob: null, top: [] });
      }
      for (let c = 0; c < req.params.n; c++) req.opts.onDelta(c, '', null, entries);
    }
    req.lastLogits = logits.slice((take - 1) * V, take * V);
    req.past = toPast(outputs);
    req.prefilled = end;
  }

  /** The prompt is in the cache: each choice samples its first token, and the live ones join. */
  private join(req: Request): void {
    const p = req.params;
    for (let index = 0; index < p.n; index++) {
      req.rows.push({
        req, index,
        // Choice i of a seeded request draws from stream i of the seed: reproducible, yet the choices differ.
        rng: makeRng(p.seed === null ? Math.floor(Math.random() * 2 ** 52) : p.seed, index),
        counts: new Map(),
        tokenIds: [],
        stream: new TextStream(this.decode, p.stop),
        constraint: req.opts.constraints?.() ?? null,
        finishReason: null,
        len: req.promptIds.length,
        next: -1,
      });
    }
    const logits = req.lastLogits!;
    for (const row of req.rows) this.advance(row, row === req.rows.at(-1) ? logits : logits.slice());
    const past = req.past!;
    const b = req.pastRow;
    req.past = null;
    const live = req.rows.filter((row) => row.finishReason === null);
    if (live.length === 0) {
      this.answerIfDone(req);
      return;
    }
    this.relayout([...this.rows.map((row, r) => ({ row, past: this.past!, b: r })), ...live.map((row) => ({ row, past, b }))]);
  }

  // --- decode -------------------------------------------------------------------------------------

  /** One batched forward for every row, then one token sampled per row. */
  private async step(): Promise<void> {
    const rows = this.rows;
    const B = rows.length;
    const total = this.L + 1;
    const mask = new Array<number>(B * total);
    rows.forEach((row, b) => {
      const pad = this.L - row.len;
      mask.fill(0, b * total, b * total + pad).fill(1, b * total + pad, (b + 1) * total);
    });
    const t0 = performance.now();
    let outputs: Feeds;
    try {
      outputs = (await this.m.model.forward({
        input_ids: int64(rows.map((r) => r.next), [B, 1]),
        attention_mask: int64(mask, [B, total]),
        position_ids: int64(rows.map((r) => r.len), [B, 1]),
        past_key_values: this.past!,
      })) as Feeds;
    } catch (err) {
      // The batch's cache is gone with the failed call: everyone in it fails, waiting requests do not.
      const error = ThreadError.from(err);
      for (const req of new Set(rows.map((r) => r.req))) this.settle(req, { error });
      this.relayout([]);
      return;
    }
    this.counters.decodeMs += performance.now() - t0;
    this.counters.steps++;
    this.counters.stepSequences += B;
    this.counters.decodeTokens += B;
    if (B > this.counters.maxBatch) this.counters.maxBatch = B;
    this.past = toPast(outputs);
    this.L = total;
    const V = outputs.logits!.dims[2]!;
    const data = outputs.logits!.data as Float32Array;
    const failed = new Map<Request, ThreadError>();
    rows.forEach((row, b) => {
      row.len++;
      if (failed.has(row.req)) return;
      try {
        // A view, not a copy: the step's logits are not read again once each row has sampled.
        this.advance(row, data.subarray(b * V, (b + 1) * V));
      } catch (err) {
        // One sequence's sampling failed (e.g. a schema the vocabulary cannot follow): only its
        // request fails; the rest of the batch decodes on.
        failed.set(row.req, ThreadError.from(err));
      }
    });
    for (const [req, error] of failed) this.settle(req, { error });
    this.retire();
  }

  private entry(logits: Float32Array, id: number, p: SamplingParams): TokenLogprob {
    const { logprob, top } = logprobsOf(logits, id, p.logprobs ?? 0);
    return { id, token: this.pieceOf(id), logprob, top: top.map((t) => ({ ...t, token: this.pieceOf(t.id) })) };
  }

  /** Samples a row's next token from its logits (mutated), reports it, and decides whether the row ends. */
  private advance(row: Row, logits: Float32Array): void {
    const p = row.req.params;
    // Log-probabilities of the raw distribution, taken before sampling rewrites the row.
    const raw = p.logprobs !== null ? logits.slice() : null;
    applyPenalties(logits, row.counts, p);
    const draw = (l: Float32Array) => drawToken(l, p, row.rng);
    const token = row.constraint ? row.constraint.choose(logits, draw) : draw(logits);
    row.constraint?.accept(token);
    const logprobs = raw ? [this.entry(raw, token, p)] : undefined;
    row.tokenIds.push(token);
    row.counts.set(token, (row.counts.get(token) ?? 0) + 1);
    row.next = token;
    let delta: string;
    if (this.m.eosIds.has(token)) {
      row.finishReason = 'stop';
      delta = row.stream.finish();
    } else {
      delta = row.stream.push(token);
      if (row.stream.stopped) row.finishReason = 'stop';
      else if (row.constraint?.done) {
        row.finishReason = 'stop';
        delta += row.stream.finish();
      } else if (row.tokenIds.length >= row.req.maxNew) {
        row.finishReason = 'length';
        delta += row.stream.finish();
      }
    }
    if (delta || row.finishReason || logprobs) row.req.opts.onDelta(row.index, delta, row.finishReason, logprobs);
  }
}
