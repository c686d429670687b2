import type { Engine, EngineEvent, Generation } from '../engine/types.js';
import {
  parseCompletionRequest,
  toCompletionParams,
  toLegacyLogprobs,
  toTextPrompts,
  type Completion,
  type CompletionRequest,
} from '../protocol/completions.js';
import type { TextPrompt } from '../protocol/chat.js';
import { ApiError, errors } from '../protocol/errors.js';
import { checkGeneration, maxBatchTokens } from '../protocol/limits.js';
import { wireId, type FinishReason, type TokenLogprob, type Usage } from '../protocol/shared.js';
import { SYSTEM_FINGERPRINT } from './chat.js';
import { beforeDeadline, requestTimeoutMs, resolveModel, type RequestContext } from './context.js';
import { noObserver, type Observer } from './observer.js';

export type CompletionResult = { kind: 'json'; requestId: string; body: Completion } | { kind: 'stream'; requestId: string; chunks: AsyncIterable<Completion> };

const toError = (e: Extract<EngineEvent, { type: 'error' }>) => ApiError.fromBody(e.status, { ...e.error, param: e.error.param === 'messages' ? 'prompt' : e.error.param });

/** One prompt's generation, its first event already read. */
interface Part {
  prompt: TextPrompt;
  gen: Generation;
  events: AsyncIterator<EngineEvent>;
  first: EngineEvent;
}

/**
 * POST /v1/completions (legacy): each prompt is its own generation (queued together), and
 * choice i of prompt p is index p·n + i, as OpenAI numbers them.
 */
export class CompletionsServing {
  constructor(
    private readonly engine: Engine,
    private readonly observer: Observer = noObserver,
  ) {}

  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<CompletionResult> {
    const req = parseCompletionRequest(body);
    const model = await resolveModel(this.engine, req.model, ctx);
    const params = toCompletionParams(req, model.defaults);
    // Echo needs the prompt's tokens as text, which the worker reports as logprob entries.
    const internal = req.echo ? { ...params, logprobs: params.logprobs ?? 0 } : params;
    const deadline = Date.now() + requestTimeoutMs();
    const parts: Part[] = [];
    for (const p of toTextPrompts(req)) {
      checkGeneration('ids' in p ? { tokens: p.ids.length } : { texts: [p.text] }, params, model.inputBound, maxBatchTokens(), 'prompt');
    }
    try {
      for (const prompt of toTextPrompts(req)) {
        const gen = await this.engine.generate({
          endpoint: 'completions',
          model: req.model,
          prompt,
          params: internal,
          stream: req.stream === true,
          keyId: ctx.keyId,
          onLimits: ctx.onLimits,
          traceparent: ctx.traceparent,
          meta: req.user ? { user: req.user } : {},
        });
        onQueued?.(gen.requestId);
        const events = gen.events[Symbol.asyncIterator]();
        parts.push({ prompt, gen, events, first: undefined as unknown as EngineEvent });
      }
      for (const part of parts) {
        const first = await beforeDeadline(part.events.next(), deadline, () => this.engine.cancel(part.gen.requestId));
        if (first.done) throw errors.internal('The generation ended without a result.');
        if (first.value.type === 'error') throw toError(first.value);
        part.first = first.value;
      }
    } catch (err) {
      for (const p of parts) void this.engine.cancel(p.gen.requestId).catch(() => {});
      throw err;
    }
    const id = wireId('cmpl', parts[0]!.gen.requestId);
    const created = parts[0]!.gen.created;
    if (req.stream) return { kind: 'stream', requestId: parts[0]!.gen.requestId, chunks: this.chunks(req, parts, id, created, model.name) };
    const done = await beforeDeadline(Promise.all(parts.map((p) => this.collect(p, req.echo === true))), deadline, () =>
      Promise.all(parts.map((p) => this.engine.cancel(p.gen.requestId))).then(() => undefined),
    );
    const n = req.n ?? 1;
    const usage = done.reduce<Usage>(
      (u, d) => ({ prompt_tokens: u.prompt_tokens + d.usage.prompt_tokens, completion_tokens: u.completion_tokens + d.usage.completion_tokens, total_tokens: u.total_tokens + d.usage.total_tokens }),
      { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
    );
    for (const d of done) this.observer.usage(model.name, d.usage);
    return {
      kind: 'json',
      requestId: parts[0]!.gen.requestId,
      body: {
        id,
        object: 'text_completion',
        created,
        model: req.model,
        choices: done.flatMap((d, p) =>
          d.choices.map((c, i) => {
            const echoed = req.echo ? this.echoText(parts[p]!.prompt, c.promptEntries) : '';
            const entries = [...(req.echo ? c.promptEntries : []), ...c.entries];
            return {
              text: echoed + c.text,
              index: p * n + i,
              logprobs: req.logprobs !== null && req.logprobs !== undefined ? toLegacyLogprobs(entries, req.logprobs) : null,
              finish_reason: c.finishReason,
            };
          }),
        ),
        usage,
        system_fingerprint: SYSTEM_FINGERPRINT,
      },
    };
  }

  private echoText(prompt: TextPrompt, entries: TokenLogprob[]): string {
    return 'text' in prompt ? prompt.text : entries.map((e) => e.token).join('');
  }

  /** Splits logprob entries into the prompt's (only sent for echo: they come first) and the completion's. */
  private async collect(part: Part, echo: boolean) {
    const choices = new Map<number, { text: string; entries: TokenLogprob[]; promptEntries: TokenLogprob[]; finishReason: FinishReason | null }>();
    let promptTokens = 0;
    const choice = (i: number) => {
      let c = choices.get(i);
      if (!c) choices.set(i, (c = { text: '', entries: [], promptEntries: [], finishReason: null }));
      return c;
    };
    for (let e: EngineEvent | undefined = part.first; e; e = (await part.events.next()).value as EngineEvent | undefined) {
      if (e.type === 'start') promptTokens = e.promptTokens;
      else if (e.type === 'restart') choices.clear();
      else if (e.type === 'delta') {
        for (const d of e.choices) {
          const c = choice(d.index);
          c.text += d.text;
          for (const entry of d.logprobs ?? []) (echo && c.promptEntries.length < promptTokens ? c.promptEntries : c.entries).push(entry);
          if (d.finishReason) c.finishReason = d.finishReason;
        }
      } else if (e.type === 'error') throw toError(e);
      else if (e.type === 'done') {
        for (const s of e.choices) choice(s.index).finishReason = s.finishReason;
        return { usage: e.usage, choices: [...choices.entries()].sort(([a], [b]) => a - b).map(([, c]) => c) };
      }
    }
    throw errors.internal('The generation ended without a result.');
  }

  private async *chunks(req: CompletionRequest, parts: Part[], id: string, created: number, model: string): AsyncGenerator<Completion> {
    const n = req.n ?? 1;
    const includeUsage = req.stream_options?.include_usage === true;
    const wantLogprobs = req.logprobs !== null && req.logprobs !== undefined;
    const total: Usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
    const chunk = (index: number, text: string, entries: TokenLogprob[], finish: FinishReason | null): Completion => ({
      id,
      object: 'text_completion',
      created,
      model: req.model,
      choices: [{ text, index, logprobs: wantLogprobs ? toLegacyLogprobs(entries, req.logprobs!) : null, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
      system_fingerprint: SYSTEM_FINGERPRINT,
    });
    try {
      for (const [p, part] of parts.entries()) {
        let promptTokens = 0;
        const promptSeen = new Map<number, number>();
        let sent = false;
        for (let e: EngineEvent | undefined = part.first; e; e = (await part.events.next()).value as EngineEvent | undefined) {
          if (e.type === 'start') promptTokens = e.promptTokens;
          else if (e.type === 'restart') {
            if (sent) throw errors.workerLost();
          } else if (e.type === 'delta') {
            for (const d of e.choices) {
              const index = p * n + d.index;
              const entries = d.logprobs ?? [];
              // Prompt entries (echo) arrive first, before any generated token of the choice.
              const seen = promptSeen.get(d.index) ?? 0;
              const promptPart = req.echo ? entries.slice(0, Math.max(0, promptTokens - seen)) : [];
              promptSeen.set(d.index, seen + promptPart.length);
              const rest = entries.slice(promptPart.length);
              if (req.echo && promptPart.length) {
                sent = true;
                yield chunk(index, seen === 0 && 'text' in part.prompt ? part.prompt.text : promptPart.map((x) => x.token).join(''), promptPart, null);
              }
              if (d.text || d.finishReason || (wantLogprobs && rest.length)) {
                sent = true;
                yield chunk(index, d.text, rest, d.finishReason);
              }
            }
          } else if (e.type === 'error') throw toError(e);
          else if (e.type === 'done') {
            this.observer.usage(model, e.usage);
            total.prompt_tokens += e.usage.prompt_tokens;
            total.completion_tokens += e.usage.completion_tokens;
            total.total_tokens += e.usage.total_tokens;
            break;
          }
        }
      }
    } finally {
      for (const part of parts) await part.events.return?.();
    }
    if (includeUsage) yield { id, object: 'text_completion', created, model: req.model, choices: [], usage: total, system_fingerprint: SYSTEM_FINGERPRINT };
  }
}
