import { describe, expect, it } from 'vitest';
import type { Engine, EngineEvent, GenerateRequest, Generation, ModelInfo } from '../../src/engine/types.js';
import type { ChatCompletionChunk } from '../../src/protocol/chat.js';
import { ApiError } from '../../src/protocol/errors.js';
import { HERMES_TOOL_FORMAT, parseToolCalls, ToolCallParser, type ToolCallFormat } from '../../src/protocol/tools.js';
import { ChatServing } from '../../src/serving/chat.js';

const AT = 1_700_000_000_123;
const usage = { prompt_tokens: 5, completion_tokens: 9, total_tokens: 14 };

/** Replays `text` as deltas of `step` characters, then done. */
class ScriptEngine implements Engine {
  readonly requests: GenerateRequest[] = [];
  constructor(
    private readonly texts: string[],
    private readonly step = 3,
    private readonly format?: ToolCallFormat,
  ) {}
  async getModel(name: string): Promise<ModelInfo | null> {
    return { name, task: 'chat', aliases: [], created: 1, defaults: {}, dimensions: null, ...(this.format ? { toolCallFormat: this.format } : {}) };
  }
  async listModels(): Promise<ModelInfo[]> {
    return [];
  }
  async embed(): Promise<never> {
    throw new Error('unused');
  }
  async rerank(): Promise<never> {
    throw new Error('unused');
  }
  async cancel(): Promise<void> {}
  async generate(req: GenerateRequest): Promise<Generation> {
    this.requests.push(req);
    const events: EngineEvent[] = [{ type: 'start', promptTokens: 5 }];
    this.texts.forEach((text, index) => {
      for (let i = 0; i < text.length; i += this.step) {
        const last = i + this.step >= text.length;
        events.push({ type: 'delta', at: AT, choices: [{ index, text: text.slice(i, i + this.step), finishReason: last ? 'stop' : null }] });
      }
    });
    events.push({ type: 'done', choices: this.texts.map((_, index) => ({ index, finishReason: 'stop' as const })), usage });
    return {
      requestId: '0b6f1c2e-1111-4222-8333-944445555666',
      model: req.model,
      created: 1,
      events: (async function* () {
        yield* events;
      })(),
    };
  }
}

const ctx = { keyId: null, allowedModels: null };
const weather = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false },
  },
};
const body = (patch: Record<string, unknown> = {}) => ({ model: 'm', messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [weather], ...patch });
const CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';

async function error(p: Promise<unknown>): Promise<ApiError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    return e as ApiError;
  }
  throw new Error('expected an ApiError');
}

describe('parseToolCalls / ToolCallParser', () => {
  it('reads Hermes calls, keeps other text as content', () => {
    expect(parseToolCalls(CALL)).toMatchObject({ content: null, calls: [{ type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] });
    const two = parseToolCalls(`Let me check.\n${CALL}\n${CALL.replace('Paris', 'Rome')}`);
    expect(two.content).toBe('Let me check.');
    expect(two.calls.map((c) => JSON.parse(c.function.arguments).city)).toEqual(['Paris', 'Rome']);
    expect(two.calls[0]!.id).toMatch(/^call_[0-9a-f]{24}$/);
    expect(parseToolCalls('just text')).toEqual({ content: 'just text', calls: [] });
    // Not a call object: stays text.
    expect(parseToolCalls('<tool_call>\nnot json\n</tool_call>').calls).toEqual([]);
  });

  it('gives the same result streamed one character at a time', () => {
    const text = `Sure < not a call.\n${CALL}\n`;
    const p = new ToolCallParser(HERMES_TOOL_FORMAT);
    const events = [...text].flatMap((c) => p.push(c)).concat(p.finish());
    expect(events.filter((e) => e.type === 'text').map((e) => (e as { text: string }).text).join('')).toBe('Sure < not a call.');
    expect(events.filter((e) => e.type === 'call')).toHaveLength(1);
  });

  it('reads a call cut off before its end marker, if its JSON is complete', () => {
    expect(parseToolCalls('<tool_call>\n{"name": "f", "arguments": {}}').calls).toHaveLength(1);
    expect(parseToolCalls('<tool_call>\n{"name": "f", "argu').calls).toHaveLength(0);
  });
});

describe('tools through ChatServing', () => {
  it('returns message.tool_calls with finish_reason tool_calls', async () => {
    const r = await new ChatServing(new ScriptEngine([CALL])).create(body(), ctx);
    if (r.kind !== 'json') throw new Error('json expected');
    const choice = r.body.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.content).toBeNull();
    expect(choice.message.tool_calls).toEqual([{ id: expect.stringMatching(/^call_/), type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }]);
  });

  it('streams delta.tool_calls in OpenAI chunk shape', async () => {
    const r = await new ChatServing(new ScriptEngine([`Checking. ${CALL}\n${CALL}`], 4)).create(body({ stream: true }), ctx);
    if (r.kind !== 'stream') throw new Error('stream expected');
    const chunks: ChatCompletionChunk[] = [];
    for await (const c of r.stream.chunks) chunks.push(c);
    const deltas = chunks.map((c) => c.choices[0]!.delta);
    expect(deltas.map((d) => d.content ?? '').join('')).toBe('Checking.');
    const calls = deltas.flatMap((d) => d.tool_calls ?? []);
    expect(calls[0]).toEqual({ index: 0, id: expect.stringMatching(/^call_/), type: 'function', function: { name: 'get_weather', arguments: '' } });
    expect(calls[1]).toEqual({ index: 0, function: { arguments: '{"city":"Paris"}' } });
    expect(calls[2]).toMatchObject({ index: 1, type: 'function', function: { name: 'get_weather', arguments: '' } });
    expect(calls[3]).toEqual({ index: 1, function: { arguments: '{"city":"Paris"}' } });
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe('tool_calls');
  });

  it("leaves the text alone with tool_choice 'none'", async () => {
    const r = await new ChatServing(new ScriptEngine([CALL])).create(body({ tool_choice: 'none' }), ctx);
    if (r.kind !== 'json') throw new Error('json expected');
    expect(r.body.choices[0]!.message.content).toBe(CALL);
    expect(r.body.choices[0]!.finish_reason).toBe('stop');
  });

  it('uses the model’s tool-call format', async () => {
    const format = { start: '[CALL]', end: '[/CALL]', separator: '', name_key: 'function', arguments_key: 'args' };
    const r = await new ChatServing(new ScriptEngine(['[CALL]{"function": "get_weather", "args": {"city": "Oslo"}}[/CALL]'], 3, format)).create(body(), ctx);
    if (r.kind !== 'json') throw new Error('json expected');
    expect(r.body.choices[0]!.message.tool_calls![0]!.function).toEqual({ name: 'get_weather', arguments: '{"city":"Oslo"}' });
  });

  it('sends the constraint and the tools to the engine', async () => {
    const engine = new ScriptEngine([CALL]);
    await new ChatServing(engine).create(body({ tool_choice: 'required', max_tokens: 50, parallel_tool_calls: false }), ctx);
    const req = engine.requests[0]!;
    expect(req.params.constraint).toEqual({
      kind: 'tool_calls',
      maxTokens: 50,
      lazy: true,
      format: HERMES_TOOL_FORMAT,
      tools: [{ name: 'get_weather', parameters: weather.function.parameters }],
      parallel: false,
    });
    expect('messages' in req.prompt && req.prompt.tools).toEqual([weather]);
    await new ChatServing(engine).create(body({ tool_choice: { type: 'function', function: { name: 'get_weather' } }, temperature: 0.5, top_p: 0.5 }), ctx);
    expect(engine.requests[1]!.params.constraint).toMatchObject({ kind: 'tool_calls', lazy: false, parallel: false });
    await new ChatServing(engine).create(body({ tools: undefined, response_format: { type: 'json_object' } }), ctx);
    expect(engine.requests[2]!.params.constraint).toEqual({ kind: 'json_object', maxTokens: null, lazy: true });
    await new ChatServing(engine).create(body(), ctx);
    expect(engine.requests[3]!.params.constraint).toBeNull();
  });

  it('accepts assistant tool_calls and tool messages in history, arguments as objects for the template', async () => {
    const engine = new ScriptEngine(['It is sunny.']);
    const r = await new ChatServing(engine).create(
      body({
        messages: [
          { role: 'user', content: 'Weather in Paris?' },
          { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
          { role: 'tool', tool_call_id: 'call_1', content: '{"sky":"clear"}' },
        ],
      }),
      ctx,
    );
    if (r.kind !== 'json') throw new Error('json expected');
    expect(r.body.choices[0]!.message).toEqual({ role: 'assistant', content: 'It is sunny.', refusal: null });
    const prompt = engine.requests[0]!.prompt;
    expect('messages' in prompt && prompt.messages[1]).toEqual({ role: 'assistant', content: '', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: { city: 'Paris' } } }] });
  });
});

describe('bad requests are 400s naming the param', () => {
  const cases: [string, Record<string, unknown>, string][] = [
    ['unknown named function', { tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice.function.name'],
    ['tool_choice without tools', { tools: undefined, tool_choice: 'auto' }, 'tool_choice'],
    ['bad tool_choice', { tool_choice: 'sometimes' }, 'tool_choice'],
    ['duplicate function names', { tools: [weather, weather] }, 'tools[1].function.name'],
    ['forced function with unsupported keyword', { tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { n: { type: 'integer', minimum: 1 } } } } }], tool_choice: 'required' }, 'tools[0].function.parameters'],
    ['unsupported schema keyword', { tools: undefined, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { n: { type: 'number', maximum: 3 } } } } } }, 'response_format'],
    ['json_schema without a name', { tools: undefined, response_format: { type: 'json_schema', json_schema: { schema: {} } } }, 'response_format.json_schema'],
    ['unknown response_format type', { tools: undefined, response_format: { type: 'yaml' } }, 'response_format.type'],
    ['tool_calls on a user message', { messages: [{ role: 'user', content: 'x', tool_calls: [] }] }, 'messages[0].tool_calls'],
    ['functions (deprecated)', { functions: [] }, 'functions'],
  ];
  it.each(cases)('%s', async (_, patch, param) => {
    const e = await error(new ChatServing(new ScriptEngine(['x'])).create(body(patch), ctx));
    expect(e.status).toBe(400);
    expect(e.param).toBe(param);
  });

  it('names the unsupported keyword in the message', async () => {
    const e = await error(
      new ChatServing(new ScriptEngine(['x'])).create(body({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { n: { type: 'number', minimum: 3 } } } } } }), ctx),
    );
    expect(e.message).toContain("'minimum'");
    expect(e.code).toBe('invalid_json_schema');
  });
});
