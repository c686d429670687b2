import { Waker } from '../waker.js';
import { Tensor } from '@huggingface/transformers';
import type { SamplingParams } from '../../protocol/chat.js';
import type { FinishReason } from '../../protocol/shared.js';
import { cacheNamesOf, checkBudget, extendCache, int64, logitRows, presentName, room, writeColumns, type ChatModel, type ChoiceResult, type Feeds, type GenerateOptions } from './generate.js';
import { logprobsOf, type TokenLogprob } from './logprobs.js';
import { applyPenalties, drawToken, makeRng } from './sampler.js';
import { TextStream } from './text-stream.js';
import { batchLimitsFromEnv, type BatchLimits } from './limits.js';
import type { TokenConstraint } from './constrain/index.js';
import type { WorkerBatchStats } from '../../db/workers-repo.js';
import { ThreadError } from './thread-error.js';
import { BLOCK, predecessorOf, PrefixCache, type PrefixCacheStats, type Prompt } from './prefix-cache.js';
import { KvPool } from './kv-pool.js';
import { DEFAULT_KV_POOL_BYTES } from './limits.js';

/**
 * Continuous batching, as vLLM and TGI schedule decoding: every sequence that is decoding on a
 * model advances in one batched forward pass per step; a request that arrives meanwhile is
 * prefilled (in chunks, between steps) and joins at the next step; a sequence that finishes or
 * is cancelled leaves at once and frees its slot.
 *
 * The batch's KV cache is one tensor per layer, [rows, kv heads, capacity, head dim], each row
 * holding its own tokens right-aligned at position L (left padding), with free room after L
 * for the next steps (generate.ts: a step writes its new keys and values there, so the cache is
 * not copied per step), an attention mask that hides the padding and the room, and position ids
 * counted per row. So a row sees exactly the keys and positions it would see alone: its output
 * does not depend on what it is batched with. The cache is re-laid out (rows added or dropped,
 * common padding trimmed, room added) only when the batch's membership changes or the room runs
 * out.
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
  /** Batch work (ai.submit_chat, Batch API lines): admitted after interactive requests, and rested under BatchLimits.batchDuty. */
  background?: boolean;
  /**
   * Whose prompts it may share the prefix cache with (a team, a key, a database role: the
   * worker passes ai.claim_chat's cache_scope); requests of different scopes reuse nothing of
   * each other's. Absent: the unscoped ''.
   */
  cacheScope?: string;
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
  /** Its cache while it is prefilled in chunks ([1, heads, prefilled, dim] per input). */
  past: Feeds | null;
  /** Logits of the last position prefilled so far (for the first token, and echo logprobs). */
  lastLogits: Float32Array | null;
  arrived: number;
  /** Holds a reservation (admitted, not yet answered). */
  admitted: boolean;
  /** Keys of its prompt's blocks in the prefix cache (computed once, when first needed). */
  chain: string[] | null;
  /** Its prefill has started (the prefix cache is no longer asked). */
  started: boolean;
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

/**
 * Row `b` of `past` holds the row's tokens, ending before position `end` (padding before and after
 * them is masked). With `fresh`, a batched prefill's rows before their cache was built: positions
 * before `fresh.C` are in `past` (row b, or row 0 when `past` has one row for all), the rest in
 * the last `fresh.S` positions of row b of the forward's `present.*` outputs.
 */
interface Source {
  row: Row;
  past: Feeds;
  b: number;
  end: number;
  fresh?: { outputs: Feeds; C: number; S: number };
  /** The prompt to keep in the prefix cache once the row is laid into the batch. */
  store?: number[];
}

/** A request's prompt as the prefix cache reads it. */
const promptOf = (req: Request): Prompt => ({ ids: req.promptIds, chain: req.chain ?? [], scope: req.opts.cacheScope ?? '' });

/** A request about to be prefilled, and the tokens of its prompt the prefix cache holds. */
interface Member {
  req: Request;
  cached: number;
}

/**
 * Token computations a shared head must spare ((rows − 1) × its length) to be prefilled in a
 * forward of its own: a forward costs about this many tokens before it computes any (its weights
 * read once: ~22 ms for one token against ~1.1 ms a token in a batched prefill, SmolLM2 shape
 * over a 1,015-token past on 2 cores). A shorter head is prefilled with each row's rest.
 */
const HEAD_WORTH = 24;

/**
 * Tokens the rests of a group's prompts start with alike, when every prompt has the same cached
 * prefix, the same tokens and not only as many (0 otherwise, for one request, with nothing
 * cached: prompts that arrive together cold are prefilled as they are, in one forward, and when
 * a forward of its own would cost more than it spares: HEAD_WORTH): at most all but the last
 * token of the shortest rest.
 */
function sharedHead(group: readonly Member[]): number {
  if (group.length < 2) return 0;
  const C = group[0]!.cached;
  if (C === 0 || group.some((g) => g.cached !== C)) return 0;
  const first = group[0]!.req.promptIds;
  const most = Math.min(...group.map((g) => g.req.promptIds.length)) - 1;
  let same = 0;
  while (same < most && group.every((g) => g.req.promptIds[same] === first[same])) same++;
  const h = Math.max(0, same - C);
  return (group.length - 1) * h >= HEAD_WORTH ? h : 0;
}

/** Prompt tokens a group's prefill computes: the shared head once, then every row padded to the longest rest. */
function tokensOf(group: readonly Member[]): number {
  const h = sharedHead(group);
  return h + group.length * Math.max(...group.map((g) => g.req.promptIds.length - g.cached - h));
}

/** Whether every prompt of the group starts with the same `n` tokens. */
function samePrefix(group: readonly Member[], n: number): boolean {
  const first = group[0]!.req.promptIds;
  return group.every(({ req }) => req.promptIds.length >= n && req.promptIds.slice(0, n).every((t, i) => t === first[i]));
}

/**
 * The rows' tokens laid out as a batch cache of `cap` positions, each row's right-aligned before
 * position L; before them and after L zeros, or stale values from `pool` (masked either way).
 */
function layRows(sources: readonly Source[], L: number, cap: number, pool: KvPool): Feeds {
  const out: Feeds = {};
  const named = sources.find((s) => Object.keys(s.past).length > 0);
  const names = named ? Object.keys(named.past) : cacheNamesOf(sources[0]!.fresh!.outputs);
  for (const name of names) {
    const first = named?.past[name] ?? sources[0]!.fresh!.outputs[presentName(name)]!;
    const [, H, , D] = first.dims as [number, number, number, number];
    const data = pool.take(sources.length * H * cap * D, first.data as Float32Array);
    sources.forEach((s, j) => {
      const len = s.row.len;
      const start = s.end - len;
      // Positions [start, split) from the past, [split, end) from the forward's new ones.
      const split = s.fresh ? Math.max(start, Math.min(s.end, s.fresh.C)) : s.end;
      for (let h = 0; h < H; h++) {
        const at = ((j * H + h) * cap + (L - len)) * D;
        if (split > start) {
          const t = s.past[name]!;
          const Ls = t.dims[2]!;
          const rb = t.dims[0] === 1 ? 0 : s.b;
          const from = ((rb * H + h) * Ls + start) * D;
          data.set((t.data as Float32Array).subarray(from, from + (split - start) * D), at);
        }
        if (s.fresh && s.end > split) {
          const t = s.fresh.outputs[presentName(name)]!;
          const T = t.dims[2]!;
          const from = ((s.b * H + h) * T + T - s.fresh.S + (split - s.fresh.C)) * D;
          data.set((t.data as Float32Array).subarray(from, from + (s.end - split) * D), at + (split - start) * D);
        }
      }
    });
    out[name] = new Tensor(first.type as 'float32', data, [sources.length, H, cap, D]);
  }
  return out;
}

/** `past` (one row) repeated `k` times along the batch axis. */
function repeatRows(past: Feeds, k: number): Feeds {
  const out: Feeds = {};
  for (const [name, t] of Object.entries(past)) {
    const src = t.data as Float32Array;
    const data = new (src.constructor as Float32ArrayConstructor)(k * src.length);
    for (let j = 0; j < k; j++) data.set(src, j * src.length);
    out[name] = new Tensor(t.type as 'float32', data, [k, ...t.dims.slice(1)]);
  }
  return out;
}

/** How long after an interactive request batch work keeps resting (restAfterBatchWork). */
const INTERACTIVE_RECENT_MS = 10_000;
const isInteractive = (r: { opts: SubmitOptions }) => !r.opts.background;

const cancelled = (r: Request) => r.opts.signal.aborted;
/** A cancelled request's error, with the tokens its choices had generated. */
const cancelledError = (r: Request) => ThreadError.cancelled(r.rows.reduce((n, row) => n + row.tokenIds.length, 0));

/** Lets queued messages (cancel, new requests) and other work run between steps. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export class BatchScheduler {
  private readonly waiting: Request[] = [];
  /** The rest batch work takes (restAfterBatchWork); an interactive request wakes it. */
  private readonly rest = new Waker();
  /** When the last interactive request arrived (batch work rests only while they keep coming). */
  private interactiveAt = -Infinity;
  private readonly prefilling: Request[] = [];
  /** Rows of the batch, in the order of the cache's batch axis. */
  private rows: Row[] = [];
  private past: Feeds | null = null;
  /** Rows that joined (their first token sampled) and wait to be laid into the batch's cache, all at once. */
  private joining: Source[] = [];
  /** Positions of the cache in use (every row's tokens end before it); its capacity is past's dims[2]. */
  private L = 0;
  private reserved = 0;
  private running = false;
  private readonly counters = { steps: 0, stepSequences: 0, maxBatch: 0, decodeTokens: 0, prefillTokens: 0, prefills: 0, decodeMs: 0, prefillMs: 0, admitted: 0, admitWaitMs: 0 };
  private readonly prefix: PrefixCache;
  /** The last shared prefix a group was prefilled over (sharedPast). */
  private lastShared: { key: string; past: Feeds } | null = null;
  /** Every shared prefix made in this burst: pending rows may read one after it is replaced, so none goes back to the pool before the burst ends. */
  private readonly kept = new WeakSet<Feeds>();
  private readonly pool: KvPool;
  private readonly decode: (ids: number[]) => string;
  private readonly pieceOf: (id: number) => string;

  constructor(
    private readonly m: ChatModel,
    private readonly limits: BatchLimits = batchLimitsFromEnv(),
    pool?: KvPool,
  ) {
    this.decode = (ids) => (ids.length ? m.tokenizer.decode(ids, { skip_special_tokens: true }) : '');
    this.pieceOf = (id) => m.tokenizer.decode([id], { skip_special_tokens: false });
    this.prefix = new PrefixCache(limits.prefixCacheBytes ?? 0);
    this.pool = pool ?? new KvPool(limits.kvPoolBytes ?? DEFAULT_KV_POOL_BYTES);
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
        rows: [], prefilled: 0, past: null, lastLogits: null,
        arrived: performance.now(), admitted: false, chain: null, started: false, settled: false, resolve, reject,
      };
      this.waiting.push(req);
      // An interactive request ends a rest of batch work at once.
      if (!opts.background) {
        this.interactiveAt = performance.now();
        this.rest.wake();
      }
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
          // The rest after batch work counts its prefills too: a batch line's prompt costs more
          // than a decode step, and prefills not counted let batch work hold the model for more
          // than its duty.
          const interactivePrefills = this.waiting.some(isInteractive) || this.prefilling.some(isInteractive);
          let t0 = performance.now();
          await this.prefillSome();
          if (interactivePrefills) t0 = performance.now();
          if (this.rows.length > 0) {
            await this.step();
            await this.restAfterBatchWork(performance.now() - t0);
          }
        } catch (err) {
          // A bug of ours (sampling, a constraint, detokenizing) must not take the thread down
          // or leave requests waiting forever: whoever is admitted fails; the queue goes on.
          const error = ThreadError.from(err);
          for (const req of new Set([...this.prefilling, ...this.rows.map((r) => r.req), ...this.joining.map((s) => s.row.req)])) this.settle(req, { error });
          this.prefilling.length = 0;
          this.joining = [];
          this.relayout([]);
        }
        await yieldToLoop();
      }
    } finally {
      this.running = false;
      // Idle: the shared prefix kept for the rest of a burst goes (the prefix cache keeps its
      // blocks); no row reads it any more.
      this.pool.give(this.lastShared?.past);
      this.lastShared = null;
    }
  }

  // --- admission and leaving -----------------------------------------------------------------

  private sequences(): number {
    return this.rows.length + this.joining.length + this.prefilling.reduce((s, r) => s + r.params.n, 0);
  }

  /**
   * After a decode step in which every sequence is batch work, rests (1 − duty) / duty of the
   * time of that turn (the step and the prefills before it; BatchLimits.batchDuty), unless an
   * interactive request is waiting or arrives.
   * Only while interactive requests keep coming (one in the last INTERACTIVE_RECENT_MS): batch
   * work alone runs flat out.
   */
  private async restAfterBatchWork(stepMs: number): Promise<void> {
    const duty = this.limits.batchDuty ?? 1;
    if (duty >= 1 || this.rows.length === 0 || performance.now() - this.interactiveAt > INTERACTIVE_RECENT_MS) return;
    if (!this.rows.every((row) => row.req.opts.background) || this.waiting.some(isInteractive) || this.prefilling.some(isInteractive)) return;
    const ms = (stepMs * (1 - duty)) / duty;
    if (ms < 0.5) return;
    this.rest.arm();
    await this.rest.sleep(ms);
  }

  /**
   * Oldest first, interactive requests before batch work (none reserves more than the whole
   * budget: check()).
   */
  private admit(): void {
    while (this.waiting.length > 0) {
      const first = this.waiting.findIndex(isInteractive);
      const at = first >= 0 ? first : 0;
      const req = this.waiting[at]!;
      const busy = this.sequences() > 0;
      if (busy && (this.sequences() + req.params.n > this.limits.maxSequences || this.reserved + req.reserve > this.limits.maxTokens)) return;
      this.waiting.splice(at, 1);
      req.admitted = true;
      this.reserved += req.reserve;
      this.prefilling.push(req);
      this.counters.admitted++;
      this.counters.admitWaitMs += performance.now() - req.arrived;
    }
  }

  /**
   * Prompt tokens the prefix cache holds for the request now, in whole blocks, never its last
   * token (whose logits give the first token). Asked until its prefill starts, not once at
   * admission: requests that arrive together with one system prompt wait while the first
   * prefills it, then find what it left. Echoed prompts are prefilled whole: their logprobs need
   * every position's logits.
   */
  private cachedTokens(req: Request): number {
    if (req.started || req.params.echo || !this.prefix.enabled) return 0;
    req.chain ??= this.prefix.chain(req.promptIds, req.opts.cacheScope);
    return this.prefix.match(promptOf(req), req.promptIds.length - 1);
  }

  /** Its prefill starts, after `cached` tokens from the prefix cache (counted as a lookup). */
  private start(req: Request, cached: number): void {
    req.started = true;
    if (!req.params.echo) this.prefix.use(promptOf(req), cached);
  }

  /** What a row has in the batch's cache: its prompt and the tokens fed back so far. */
  private cachedIds(row: Row): number[] {
    return row.req.promptIds.concat(row.tokenIds.slice(0, row.len - row.req.promptIds.length));
  }

  private settle(req: Request, outcome: { choices: ChoiceResult[] } | { error: ThreadError }): void {
    if (req.settled) return;
    req.settled = true;
    if (req.admitted) this.reserved -= req.reserve;
    this.pool.give(req.past);
    req.past = null;
    req.lastLogits = null;
    if ('error' in outcome) req.reject(outcome.error);
    else req.resolve(outcome.choices);
  }

  private dropCancelled(): void {
    this.dropCancelledQueued();
    if (!this.rows.some((row) => cancelled(row.req))) return;
    for (const req of new Set(this.rows.map((row) => row.req))) if (cancelled(req)) this.settle(req, { error: cancelledError(req) });
    this.keepRows((row) => !cancelled(row.req));
  }

  /** Cancelled requests that are waiting or being prefilled go (they hold no rows of the batch). */
  private dropCancelledQueued(): void {
    for (const list of [this.waiting, this.prefilling]) {
      for (let i = list.length - 1; i >= 0; i--) {
        if (!cancelled(list[i]!)) continue;
        const [req] = list.splice(i, 1);
        this.settle(req!, { error: cancelledError(req!) });
      }
    }
  }

  /** Drops the batch rows that fail `keep` (their cache rows with them). */
  private keepRows(keep: (row: Row) => boolean): void {
    const past = this.past!;
    this.relayout(this.rows.flatMap((row, b) => (keep(row) ? [{ row, past, b, end: this.L }] : [])));
  }

  /** The batch's rows as sources of a re-layout. */
  private current(): Source[] {
    return this.rows.map((row, b) => ({ row, past: this.past!, b, end: this.L }));
  }

  /** Finished rows leave the batch; a request is answered when its last row finishes. */
  private retire(): void {
    if (!this.rows.some((row) => row.finishReason !== null || row.req.settled)) return;
    // A finished sequence leaves its blocks for the next turn of its chat (its reply, as the next
    // prompt will hold it, when the template renders the same tokens).
    if (this.prefix.enabled) this.rows.forEach((row, b) => row.finishReason !== null && this.prefix.store({ ids: this.cachedIds(row), scope: row.req.opts.cacheScope }, this.past!, b, this.L));
    for (const req of new Set(this.rows.filter((row) => row.finishReason !== null).map((row) => row.req))) this.answerIfDone(req);
    this.keepRows((row) => row.finishReason === null && !row.req.settled);
  }

  private answerIfDone(req: Request): void {
    if (req.rows.every((row) => row.finishReason !== null)) {
      this.settle(req, { choices: req.rows.map((r) => ({ index: r.index, text: r.stream.text, tokenIds: r.tokenIds, finishReason: r.finishReason! })) });
    }
  }

  /**
   * Rebuilds the batch cache from the given rows, right-aligned to the longest, with room for the
   * next steps: the new rows' order is the batch order from now on. When the sources are every
   * row of one cache in order, each ending at its end (a batched prefill that nobody was decoding
   * beside, or the batch less nobody), that cache is the batch's as it is: no copy.
   */
  private relayout(sources: Source[]): void {
    // The caches read from here (the batch's, the rows' that join) are free afterwards, but for
    // one kept as it is and the shared prefixes of the burst.
    const done = new Set<Feeds>([...(this.past ? [this.past] : []), ...sources.map((s) => s.past)]);
    this.layout(sources);
    if (this.past) done.delete(this.past);
    for (const f of done) if (!this.kept.has(f)) this.pool.give(f);
  }

  private layout(sources: Source[]): void {
    this.rows = sources.map((s) => s.row);
    if (sources.length === 0) {
      this.past = null;
      this.L = 0;
      return;
    }
    const L = Math.max(...sources.map((s) => s.row.len));
    const whole = sources[0]!.past;
    const dims = Object.values(whole)[0]?.dims;
    if (dims && dims[0] === sources.length && dims[2]! >= L && sources.every((s, j) => s.past === whole && !s.fresh && s.b === j && s.end === L)) {
      this.past = whole;
      this.L = L;
      return;
    }
    const out = layRows(sources, L, L + room(L), this.pool);
    this.past = out;
    this.L = L;
    sources.forEach((s, j) => s.store && this.prefix.store({ ids: s.store, scope: s.row.req.opts.cacheScope }, out, j, L));
  }

  // --- prefill ------------------------------------------------------------------------------------

  /**
   * Waiting prefills go before the next decode step. First every request whose prompt (after
   * what the prefix cache holds) fits one chunk, several at a time in one batched forward
   * (`shortGroup`): a burst sharing a cached system prompt costs one short forward, not a
   * prefill each with decode steps between. Then up to `prefillChunk` tokens of a long prompt,
   * oldest first. The rows that joined are laid into the batch's cache once, at the end.
   */
  private async prefillSome(): Promise<void> {
    let budget = this.limits.prefillChunk;
    /** Rows in `joining` when the thread last let its messages through. */
    let yieldedAt = 0;
    try {
      for (;;) {
        if (this.joining.length > yieldedAt) {
          // The first tokens just sampled leave the thread (it posts its messages when its turn
          // ends), and requests that arrived during the forward come in (the thread's messages
          // wait for a forward to end), before the next group is formed: a burst whose first
          // request went alone is prefilled in one more forward, not in one for those that had
          // arrived when that forward started and another for the rest (2026-12-01, a shared
          // system prompt's burst of 8 through the gateway: forwards of 1, 2 and 5 rows, the
          // 5 waiting in the thread's messages while the 2 were grouped). Those that make a
          // group are prefilled now, before the re-layout and the next decode step, and join
          // with these.
          await yieldToLoop();
          yieldedAt = this.joining.length;
          // Cancellations came in with them: a request cancelled while the forward ran is not
          // prefilled in the next one.
          this.dropCancelledQueued();
        }
        this.admit();
        const group = this.shortGroup();
        if (group.length > 0) {
          await this.prefillTogether(group);
          continue;
        }
        const req = this.prefilling[0];
        if (!req || budget <= 0) break;
        if (!req.started) {
          const cached = this.cachedTokens(req);
          this.start(req, cached);
          if (cached > 0) {
            req.past = this.prefix.fill([{ prompt: promptOf(req), tokens: cached }], cached, cached, this.pool);
            req.prefilled = cached;
          }
        }
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
          const past = req.past!;
          req.past = null;
          try {
            this.prefix.store({ ids: req.promptIds, scope: req.opts.cacheScope }, past, 0);
            this.join(req, past, 0, req.prefilled);
          } catch (err) {
            // Before its rows were laid into the batch (sampling comes first): only it fails.
            this.settle(req, { error: ThreadError.from(err) });
          }
        }
      }
    } finally {
      if (this.joining.length > 0) {
        // The first tokens they sampled leave the thread before the copy (model-thread.ts).
        if (this.joining.length > yieldedAt) await yieldToLoop();
        const joining = this.joining;
        this.joining = [];
        this.relayout([...this.current(), ...joining]);
      }
    }
  }

  /**
   * Requests not started whose prompt, after what the prefix cache holds of it, fits one chunk,
   * oldest first, as many as one forward takes: the tokens it computes (`tokensOf`) ≤ prefillChunk.
   * Echoed prompts are left to `prefillChunk` (their logprobs need every position).
   */
  private shortGroup(): Member[] {
    const chunk = this.limits.prefillChunk;
    const group: Member[] = [];
    for (const req of this.prefilling) {
      if (req.started || req.params.echo) continue;
      const cached = this.cachedTokens(req);
      if (req.promptIds.length - cached > chunk) continue;
      const next = [...group, { req, cached }];
      if (group.length > 0 && tokensOf(next) > chunk) break;
      group.push({ req, cached });
    }
    return group;
  }

  /**
   * One batched forward for several prompts, each after its own cached prefix. When they have
   * the same cached prefix and their rests start alike (a shared system prompt's end past its
   * last whole block, the template's user turn), that head is prefilled once, for one row, and
   * copied to each: a burst sharing a system prompt computes the part of it the cache lacks once,
   * not once a request. The forward's cache is [rows, heads, C + S, dim], C the longest cached
   * prefix (with the head) and S the longest rest:
   * row j's cached tokens sit right-aligned before position C (the prefix cache fills them;
   * zeros before them, masked), its rest from C on, with padding after it, masked and behind
   * it causally; a row with nothing cached has its padding before its prompt instead (the
   * layout prompts that arrived together have). Positions count per row, so each row computes
   * exactly what it would alone. Then each request samples its first token and joins.
   */
  private async prefillTogether(group: Member[]): Promise<void> {
    const k = group.length;
    const h = sharedHead(group);
    // Each row's tokens in the forward's past: its cached prefix, and the shared head.
    const pre = group.map((g) => g.cached + h);
    const C = Math.max(...pre);
    const S = Math.max(...group.map((g, j) => g.req.promptIds.length - pre[j]!));
    const ids: number[] = [];
    const mask: number[] = [];
    const positions: number[] = [];
    const ends: number[] = [];
    for (const [j, { req }] of group.entries()) {
      const cached = pre[j]!;
      const rest = req.promptIds.length - cached;
      const lead = cached > 0 ? 0 : S - rest;
      for (let i = 0; i < C; i++) mask.push(i >= C - cached ? 1 : 0);
      for (let i = 0; i < S; i++) {
        const t = i - lead;
        const real = t >= 0 && t < rest;
        ids.push(real ? req.promptIds[cached + t]! : req.promptIds[0]!);
        mask.push(real ? 1 : 0);
        positions.push(real ? cached + t : 0);
      }
      ends.push(C + lead + rest);
    }
    for (const g of group) this.start(g.req, g.cached);
    // Each row's last prompt position: its first token's logits, the only ones read.
    const keep = logitRows(this.m, group.map((_, j) => [ends[j]! - C - 1]), S);
    const t0 = performance.now();
    let outputs: Feeds;
    let forwardPast: Feeds | null;
    try {
      // One row of past for every row when they all start with the same C tokens and the graph
      // broadcasts it (split attention): no copy of the shared prefix per row.
      const one = C > 0 && (k === 1 || (this.m.sharedPast === true && pre.every((c) => c === C) && samePrefix(group, C)));
      forwardPast =
        one ? await this.sharedPast(group[0]!, h)
        : h > 0 ? repeatRows(await this.prefillHead(group[0]!, h), k)
        : C > 0 ? this.prefix.fill(group.map((g) => ({ prompt: promptOf(g.req), tokens: g.cached })), C, C, this.pool)
        : null;
      outputs = (await this.m.model.forward({
        input_ids: int64(ids, [k, S]),
        attention_mask: int64(mask, [k, C + S]),
        position_ids: int64(positions, [k, S]),
        ...keep.feeds,
        ...(forwardPast ? { past_key_values: forwardPast } : {}),
      })) as Feeds;
    } catch (err) {
      for (const { req } of group) {
        this.prefilling.splice(this.prefilling.indexOf(req), 1);
        this.settle(req, { error: ThreadError.from(err) });
      }
      return;
    }
    this.counters.prefillMs += performance.now() - t0;
    this.counters.prefills++;
    this.counters.prefillTokens += group.reduce((n, g, j) => n + g.req.promptIds.length - pre[j]!, 0);
    // The rows' caches are not built here: the re-layout that lays them into the batch reads
    // them from the forward's past (one row for all, when they share it) and its new keys and
    // values, one copy (hundreds of MB for a long shared prefix), after every first token has
    // gone out. Their prompts go to the prefix cache from there.
    const fresh = { outputs, C, S };
    group.forEach(({ req }, j) => {
      this.prefilling.splice(this.prefilling.indexOf(req), 1);
      req.lastLogits = keep.at(outputs.logits!, j, 0).slice();
      req.prefilled = req.promptIds.length;
      try {
        this.join(req, forwardPast ?? {}, j, ends[j]!, fresh);
      } catch (err) {
        this.settle(req, { error: ThreadError.from(err) });
      }
    });
  }

  /** The cache of one row: `member`'s cached prefix, then the next `h` tokens of its prompt prefilled over it. */
  private async prefillHead(member: Member, h: number): Promise<Feeds> {
    const { req, cached } = member;
    if (cached === 0) throw new Error('a shared head needs a cached prefix');
    // The prefix with room for the head, which the forward's new keys and values then fill: the
    // room is masked during the forward (the new positions come after it).
    const past = this.prefix.fill([{ prompt: promptOf(req), tokens: cached }], cached, cached + h, this.pool);
    const t0 = performance.now();
    const outputs = (await this.m.model.forward({
      input_ids: int64(req.promptIds.slice(cached, cached + h), [1, h]),
      attention_mask: int64([...new Array<number>(cached).fill(1), ...new Array<number>(h).fill(0), ...new Array<number>(h).fill(1)], [1, cached + 2 * h]),
      position_ids: int64(Array.from({ length: h }, (_, i) => cached + i), [1, h]),
      // Its logits are not read: the fewest the graph computes.
      ...logitRows(this.m, [[h - 1]], h).feeds,
      past_key_values: past,
    })) as Feeds;
    this.counters.prefillMs += performance.now() - t0;
    this.counters.prefills++;
    this.counters.prefillTokens += h;
    writeColumns(past, cached, outputs, h);
    return past;
  }

  /**
   * The one-row past a group sharing a prefix is prefilled over: its cached blocks (and the
   * shared head prefilled over them), kept for the next group over the same prefix (requests
   * that arrive a little apart), which then neither copies the blocks nor prefills the head
   * again. Never written to once made (forwards and re-layouts only read it).
   */
  private async sharedPast(member: Member, h: number): Promise<Feeds> {
    const { req, cached } = member;
    const whole = Math.floor(cached / BLOCK);
    const key = `${predecessorOf(promptOf(req), whole)}:${cached}:${req.promptIds.slice(whole * BLOCK, cached + h).join(',')}`;
    if (this.lastShared?.key === key) return this.lastShared.past;
    const past = h > 0 ? await this.prefillHead(member, h) : this.prefix.fill([{ prompt: promptOf(req), tokens: cached }], cached, cached, this.pool);
    this.lastShared = { key, past };
    this.kept.add(past);
    return past;
  }

  private async prefillChunk(req: Request, take: number): Promise<void> {
    const start = req.prefilled;
    const end = start + take;
    const t0 = performance.now();
    const ids = req.promptIds.slice(start, end);
    // Echoed prompts with logprobs read every position's logits; others the last one's.
    const echo = req.params.echo && req.params.logprobs !== null;
    const keep = logitRows(this.m, [echo ? ids.map((_, i) => i) : [take - 1]], take);
    const outputs = (await this.m.model.forward({
      input_ids: int64(ids, [1, take]),
      attention_mask: int64(new Array(end).fill(1), [1, end]),
      position_ids: int64(ids.map((_, i) => start + i), [1, take]),
      ...keep.feeds,
      ...(req.past ? { past_key_values: req.past } : {}),
    })) as Feeds;
    this.counters.prefillMs += performance.now() - t0;
    this.counters.prefills++;
    this.counters.prefillTokens += take;
    const logits = outputs.logits!;
    if (echo) {
      // Echoed prompts with logprobs: each prompt token as the positions before predicted it.
      const entries: TokenLogprob[] = [];
      for (let i = start; i < end; i++) {
        const id = req.promptIds[i]!;
        const before = i === 0 ? null : i - 1 >= start ? keep.at(logits, 0, i - 1 - start) : req.lastLogits;
        entries.push(before ? this.entry(before, id, req.params) : { id, token: this.pieceOf(id), logprob: null, top: [] });
      }
      for (let c = 0; c < req.params.n; c++) req.opts.onDelta(c, '', null, entries);
    }
    req.lastLogits = keep.at(logits, 0, echo ? take - 1 : 0).slice();
    const was = req.past;
    req.past = extendCache(was, start, outputs, take, end, this.pool);
    this.pool.give(was);
    req.prefilled = end;
  }

  /**
   * The prompt is in the cache (row `b` of `past`, ending before `end`): each choice samples its
   * first token, and the live ones wait in `joining` to be laid into the batch.
   */
  private join(req: Request, past: Feeds, b: number, end: number, fresh?: Source['fresh']): void {
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
    req.lastLogits = null;
    for (const row of req.rows) this.advance(row, row === req.rows.at(-1) ? logits : logits.slice());
    const live = req.rows.filter((row) => row.finishReason === null);
    if (live.length === 0) {
      // Finished at its first token: its prompt goes to the prefix cache from here.
      if (fresh && this.prefix.enabled) {
        const len = req.promptIds.length;
        const row = layRows([{ row: req.rows[0]!, past, b, end, fresh }], len, len, this.pool);
        this.prefix.store({ ids: req.promptIds, scope: req.opts.cacheScope }, row, 0, len);
        this.pool.give(row);
      }
      this.answerIfDone(req);
      return;
    }
    // A batched prefill's prompt goes to the prefix cache once laid out (once per request).
    for (const [i, row] of live.entries()) this.joining.push({ row, past, b, end, ...(fresh ? { fresh, ...(i === 0 && this.prefix.enabled ? { store: req.promptIds } : {}) } : {}) });
  }

  // --- decode -------------------------------------------------------------------------------------

  /** One batched forward for every row, then one token sampled per row. */
  private async step(): Promise<void> {
    const rows = this.rows;
    const B = rows.length;
    // Room for this step's keys and values at position L; when there is none left, a copy with more.
    if (Object.values(this.past!)[0]!.dims[2]! <= this.L) {
      const was = this.past!;
      this.past = extendCache(was, this.L, null, 0, this.L + room(this.L), this.pool);
      this.pool.give(was);
    }
    const cap = Object.values(this.past!)[0]!.dims[2]!;
    // Per row: its padding, its tokens, the free room (all but the tokens masked), then the new token.
    const total = cap + 1;
    const mask = new Array<number>(B * total).fill(0);
    rows.forEach((row, b) => {
      mask.fill(1, b * total + this.L - row.len, b * total + this.L);
      mask[b * total + cap] = 1;
    });
    const keep = logitRows(this.m, rows.map(() => [0]), 1);
    const t0 = performance.now();
    let outputs: Feeds;
    try {
      outputs = (await this.m.model.forward({
        ...keep.feeds,
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
    writeColumns(this.past!, this.L, outputs, 1);
    this.L += 1;
    const failed = new Map<Request, ThreadError>();
    rows.forEach((row, b) => {
      row.len++;
      if (failed.has(row.req)) return;
      try {
        // A view, not a copy: the step's logits are not read again once each row has sampled.
        this.advance(row, keep.at(outputs.logits!, b, 0));
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
    if (delta || row.finishReason || logprobs) row.req.opts.onDelta(row.index, delta, row.finishReason, logprobs, row.stream.matched ?? undefined);
  }
}
