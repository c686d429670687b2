import { describe, expect, it } from 'vitest';
import type { Engine, EngineEvent, GenerateRequest, Generation, ModelInfo } from '../../src/engine/types.js';
import type { ChatCompletionChunk } from '../../src/protocol/chat.js';
import { ApiError, errors } from '../../src/protocol/errors.js';
import { ChatServing, SYSTEM_FINGERPRINT } from '../../src/serving/chat.js';
import type { RequestContext } from '../../src/serving/context.js';

const REQUEST_ID = '0b6f1c2e-1111-4222-8333-944445555666';
const WIRE_ID = 'chatcmpl-0b6f1c2e111142228333944445555666';
const CREATED = 1_700_000_000;
const AT = 1_700_000_000_123;

const MODELS: ModelInfo[] = [
  { name: 'tiny-chat', task: 'chat', aliases: ['gpt-4o-mini'], created: 1, defaults: { temperature: 0.3, max_tokens: 77 }, dimensions: null },
  { name: 'other-chat', task: 'chat', aliases: [], created: 2, defaults: {}, dimensions: null },
];

/** An Engine whose generations replay a scripted list of events, recording what it was asked. */
class FakeEngine implements Engine {
  readonly requests: GenerateRequest[] = [];
  readonly cancelled: string[] = [];
  /** How many events the consumer pulled, and whether it closed the iterator early. */
  pulled = 0;
  returned = false;

  constructor(private readonly script: EngineEvent[]) {}

  async getModel(name: string): Promise<ModelInfo | null> {
    return MODELS.find((m) => m.name === name || m.aliases.includes(name)) ?? null;
  }

  async listModels(): Promise<ModelInfo[]> {
    return MODELS;
  }

  async embed(): Promise<never> {
    throw new Error('not used by chat serving');
  }

  async rerank(): Promise<never> {
    throw new Error('not used by chat serving');
  }

  async generate(req: GenerateRequest): Promise<Generation> {
    const model = await this.getModel(req.model);
    if (!model) throw errors.modelNotFound(req.model);
    this.requests.push(req);
    const script = this.script;
    const self = this;
    const events: AsyncIterable<EngineEvent> = {
      [Symbol.asyncIterator]: () => {
        let i = 0;
        return {
          async next(): Promise<IteratorResult<EngineEvent>> {
            if (i >= script.length) return { done: true, value: undefined };
            self.pulled++;
            return { done: false, value: script[i++]! };
          },
          async return(): Promise<IteratorResult<EngineEvent>> {
            self.returned = true;
            i = script.length;
            return { done: true, value: undefined };
          },
        };
      },
    };
    return { requestId: REQUEST_ID, model: model.name, created: CREATED, events };
  }

  async cancel(requestId: string): Promise<void> {
    this.cancelled.push(requestId);
  }
}

const ANY_KEY: RequestContext = { keyId: null, allowedModels: null };
const usage = (prompt: number, completion: number) => ({ prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion });
const body = (patch: Record<string, unknown> = {}) => ({ model: 'tiny-chat', messages: [{ role: 'user', content: 'Hi' }], ...patch });

async function collect(chunks: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const c of chunks) out.push(c);
  return out;
}

async function rejection(p: Promise<unknown>): Promise<ApiError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    return e as ApiError;
  }
  throw new Error('expected an ApiError, the promise resolved');
}

/** Two choices, interleaved, with a finish reason on each choice's last delta. */
const TWO_CHOICES: EngineEvent[] = [
  { type: 'start', promptTokens: 5 },
  { type: 'delta', at: AT, choices: [{ index: 0, text: 'Hel', finishReason: null }, { index: 1, text: 'Bon', finishReason: null }] },
  { type: 'delta', at: AT, choices: [{ index: 1, text: 'jour', finishReason: 'stop' }] },
  { type: 'delta', at: AT, choices: [{ index: 0, text: 'lo', finishReason: null }] },
  { type: 'delta', at: AT, choices: [{ index: 0, text: '', finishReason: 'length' }] },
  { type: 'done', choices: [{ index: 0, finishReason: 'length' }, { index: 1, finishReason: 'stop' }], usage: usage(5, 4) },
];

describe('ChatServing.create (non-streaming)', () => {
  it('assembles each choice from its deltas, with finish reasons and usage', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    let queued: string | null = null;
    const result = await new ChatServing(engine).create(body({ n: 2 }), ANY_KEY, (id) => (queued = id));
    expect(queued).toBe(REQUEST_ID);
    expect(result.kind).toBe('json');
    if (result.kind !== 'json') return;
    expect(result.requestId).toBe(REQUEST_ID);
    expect(result.body).toEqual({
      id: WIRE_ID,
      object: 'chat.completion',
      created: CREATED,
      model: 'tiny-chat',
      choices: [
        { index: 0, message: { role: 'assistant', content: 'Hello', refusal: null }, logprobs: null, finish_reason: 'length' },
        { index: 1, message: { role: 'assistant', content: 'Bonjour', refusal: null }, logprobs: null, finish_reason: 'stop' },
      ],
      usage: usage(5, 4),
      system_fingerprint: SYSTEM_FINGERPRINT,
    });
  });

  it('echoes the model name the client used (an alias), not the registered name', async () => {
    const engine = new FakeEngine([
      { type: 'start', promptTokens: 2 },
      { type: 'delta', at: AT, choices: [{ index: 0, text: 'Hi', finishReason: 'stop' }] },
      { type: 'done', choices: [{ index: 0, finishReason: 'stop' }], usage: usage(2, 1) },
    ]);
    const result = await new ChatServing(engine).create(body({ model: 'gpt-4o-mini' }), ANY_KEY);
    if (result.kind !== 'json') throw new Error('expected json');
    expect(result.body.model).toBe('gpt-4o-mini');
    expect(result.body.choices).toHaveLength(1);
    expect(result.body.choices[0]!.message.content).toBe('Hi');
    expect(engine.requests[0]!.model).toBe('gpt-4o-mini');
  });

  it('passes the prompt, sampling params (with model defaults), stream flag and meta to the engine', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    await new ChatServing(engine).create(
      body({ n: 2, stop: 'END', top_p: 0.5, seed: 3, user: 'u1', metadata: { k: 'v' }, messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }] }),
      { keyId: 'key-1', allowedModels: null },
    );
    expect(engine.requests).toEqual([
      {
        endpoint: 'chat.completions',
        model: 'tiny-chat',
        prompt: { messages: [{ role: 'user', content: 'ab' }], chatTemplate: null },
        params: { maxTokens: 77, temperature: 0.3, topP: 0.5, n: 2, stop: ['END'], seed: 3, frequencyPenalty: 0, presencePenalty: 0, logprobs: null, echo: false, constraint: null },
        stream: false,
        keyId: 'key-1',
        meta: { user: 'u1', metadata: { k: 'v' } },
      },
    ]);
  });

  it('an error as the first event rejects create with that ApiError (e.g. 400 context_length_exceeded)', async () => {
    const err = errors.contextLength('too long');
    const engine = new FakeEngine([{ type: 'error', status: 400, error: err.toBody().error }]);
    const e = await rejection(new ChatServing(engine).create(body(), ANY_KEY));
    expect(e.status).toBe(400);
    expect(e.code).toBe('context_length_exceeded');
    expect(e.param).toBe('messages');
    expect(e.message).toBe('too long');
    // also when the client asked for a stream: the status is decided before any chunk
    const streaming = new FakeEngine([{ type: 'error', status: 503, error: errors.modelLoad('boom').toBody().error }]);
    const e2 = await rejection(new ChatServing(streaming).create(body({ stream: true }), ANY_KEY));
    expect([e2.status, e2.code]).toEqual([503, 'model_load_failed']);
  });

  it('an error after output rejects the non-streaming request', async () => {
    const engine = new FakeEngine([
      { type: 'start', promptTokens: 3 },
      { type: 'delta', at: AT, choices: [{ index: 0, text: 'partial', finishReason: null }] },
      { type: 'error', status: 500, error: errors.internal('worker died').toBody().error },
    ]);
    const e = await rejection(new ChatServing(engine).create(body(), ANY_KEY));
    expect([e.status, e.message]).toEqual([500, 'worker died']);
  });

  it('events that end without done or error are a 500', async () => {
    const noEvents = await rejection(new ChatServing(new FakeEngine([])).create(body(), ANY_KEY));
    expect(noEvents.status).toBe(500);
    const noDone = await rejection(
      new ChatServing(new FakeEngine([{ type: 'start', promptTokens: 1 }, { type: 'delta', at: AT, choices: [{ index: 0, text: 'x', finishReason: null }] }])).create(body(), ANY_KEY),
    );
    expect(noDone.status).toBe(500);
  });

  it('rejects an invalid body before reaching the engine', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    const e = await rejection(new ChatServing(engine).create(body({ max_tokens: 0 }), ANY_KEY));
    expect([e.status, e.param]).toEqual([400, 'max_tokens']);
    expect(engine.requests).toHaveLength(0);
  });
});

describe('ChatServing.create: model resolution and key scope', () => {
  it('an unknown model is a 404 naming the model', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    const e = await rejection(new ChatServing(engine).create(body({ model: 'nope' }), ANY_KEY));
    expect([e.status, e.type, e.code, e.param]).toEqual([404, 'not_found_error', 'model_not_found', 'model']);
    expect(engine.requests).toHaveLength(0);
  });

  it('a key scoped to other models is a 403', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    const ctx: RequestContext = { keyId: 'k', allowedModels: ['other-chat'] };
    const e = await rejection(new ChatServing(engine).create(body(), ctx));
    expect([e.status, e.type, e.code, e.param]).toEqual([403, 'permission_error', 'model_not_allowed', 'model']);
    expect(engine.requests).toHaveLength(0);
  });

  it('a key scoped to the model (by name or by alias) may use it under either name', async () => {
    for (const allowedModels of [['tiny-chat'], ['gpt-4o-mini']]) {
      for (const model of ['tiny-chat', 'gpt-4o-mini']) {
        const result = await new ChatServing(new FakeEngine(TWO_CHOICES)).create(body({ model, n: 2 }), { keyId: 'k', allowedModels });
        expect(result.kind).toBe('json');
      }
    }
  });

  it('an empty scope allows nothing', async () => {
    const e = await rejection(new ChatServing(new FakeEngine(TWO_CHOICES)).create(body(), { keyId: 'k', allowedModels: [] }));
    expect(e.status).toBe(403);
  });
});

/** The `created` a streamed request stored for its replay: within the last minute. */
function replayCreated(engine: FakeEngine): number {
  const created = (engine.requests[0]!.meta as { replay?: { created?: number } }).replay?.created;
  expect(created).toBeGreaterThan(Date.now() / 1000 - 60);
  return created!;
}

describe('ChatServing.create (streaming)', () => {
  it('yields a role chunk per choice first, then content chunks, then finish chunks', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    const result = await new ChatServing(engine).create(body({ n: 2, stream: true }), ANY_KEY);
    expect(result.kind).toBe('stream');
    if (result.kind !== 'stream') return;
    expect(result.stream.requestId).toBe(REQUEST_ID);
    expect(engine.requests[0]!.stream).toBe(true);
    const chunks = await collect(result.stream.chunks);
    // A stream's `created` is what its stored replay fields say (serving/chat-replay.ts rebuilds
    // the same chunks from them): the time serve took the request, the same on every chunk.
    const created = replayCreated(engine);
    for (const c of chunks) {
      expect(c).toMatchObject({ id: WIRE_ID, object: 'chat.completion.chunk', created, model: 'tiny-chat', system_fingerprint: SYSTEM_FINGERPRINT });
      expect(c).not.toHaveProperty('usage');
      expect(c.choices).toHaveLength(1);
      expect(c.choices[0]!.logprobs).toBeNull();
    }
    const summary = chunks.map((c) => [c.choices[0]!.index, c.choices[0]!.delta, c.choices[0]!.finish_reason]);
    expect(summary).toEqual([
      [0, { role: 'assistant', content: '' }, null],
      [1, { role: 'assistant', content: '' }, null],
      [0, { content: 'Hel' }, null],
      [1, { content: 'Bon' }, null],
      [1, { content: 'jour' }, null],
      [1, {}, 'stop'],
      [0, { content: 'lo' }, null],
      [0, {}, 'length'],
    ]);
    expect(engine.returned).toBe(true);
  });

  it('with stream_options.include_usage: usage null on every chunk, then a final chunk with no choices and the usage', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    const result = await new ChatServing(engine).create(body({ n: 2, stream: true, stream_options: { include_usage: true } }), ANY_KEY);
    if (result.kind !== 'stream') throw new Error('expected a stream');
    const chunks = await collect(result.stream.chunks);
    const last = chunks.at(-1)!;
    expect(last).toEqual({ id: WIRE_ID, object: 'chat.completion.chunk', created: replayCreated(engine), model: 'tiny-chat', system_fingerprint: SYSTEM_FINGERPRINT, choices: [], usage: usage(5, 4) });
    const rest = chunks.slice(0, -1);
    expect(rest).toHaveLength(8);
    for (const c of rest) {
      expect(c).toHaveProperty('usage', null);
      expect(c.choices).toHaveLength(1);
    }
  });

  it('include_usage false behaves like no stream_options', async () => {
    const result = await new ChatServing(new FakeEngine(TWO_CHOICES)).create(body({ n: 2, stream: true, stream_options: { include_usage: false } }), ANY_KEY);
    if (result.kind !== 'stream') throw new Error('expected a stream');
    const chunks = await collect(result.stream.chunks);
    expect(chunks).toHaveLength(8);
    for (const c of chunks) expect(c).not.toHaveProperty('usage');
  });

  it('an error event mid-stream makes the chunk iterator throw that ApiError, after the chunks before it', async () => {
    const engine = new FakeEngine([
      { type: 'start', promptTokens: 3 },
      { type: 'delta', at: AT, choices: [{ index: 0, text: 'par', finishReason: null }] },
      { type: 'error', status: 503, error: errors.unavailable('worker lost').toBody().error },
      { type: 'delta', at: AT, choices: [{ index: 0, text: 'never', finishReason: null }] },
    ]);
    const result = await new ChatServing(engine).create(body({ stream: true }), ANY_KEY);
    if (result.kind !== 'stream') throw new Error('expected a stream');
    const seen: ChatCompletionChunk[] = [];
    const e = await rejection(
      (async () => {
        for await (const c of result.stream.chunks) seen.push(c);
      })(),
    );
    expect([e.status, e.code, e.message]).toEqual([503, 'service_unavailable', 'worker lost']);
    expect(seen.map((c) => c.choices[0]!.delta)).toEqual([{ role: 'assistant', content: '' }, { content: 'par' }]);
    expect(engine.returned).toBe(true);
  });

  it('a stream whose events end without done throws a 500', async () => {
    const engine = new FakeEngine([{ type: 'start', promptTokens: 1 }, { type: 'delta', at: AT, choices: [{ index: 0, text: 'x', finishReason: null }] }]);
    const result = await new ChatServing(engine).create(body({ stream: true }), ANY_KEY);
    if (result.kind !== 'stream') throw new Error('expected a stream');
    const e = await rejection(collect(result.stream.chunks));
    expect(e.status).toBe(500);
  });

  it('a consumer that leaves early closes the event subscription', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    const result = await new ChatServing(engine).create(body({ n: 2, stream: true }), ANY_KEY);
    if (result.kind !== 'stream') throw new Error('expected a stream');
    for await (const c of result.stream.chunks) {
      if (c.choices[0]!.delta.content === 'Hel') break;
    }
    expect(engine.returned).toBe(true);
    expect(engine.pulled).toBeLessThan(TWO_CHOICES.length);
  });

  // Regression guard: the role chunks once came before the try/finally that closes the
  // subscription, so a consumer leaving during them (client gone after the first SSE event) leaked it.
  it('a consumer that leaves during the role chunks also closes the event subscription', async () => {
    const engine = new FakeEngine(TWO_CHOICES);
    const result = await new ChatServing(engine).create(body({ n: 2, stream: true }), ANY_KEY);
    if (result.kind !== 'stream') throw new Error('expected a stream');
    for await (const c of result.stream.chunks) {
      expect(c.choices[0]!.delta.role).toBe('assistant');
      break;
    }
    expect(engine.returned).toBe(true);
  });
});
