import { describe, expect, it } from 'vitest';
import type { EngineEvent } from '../../src/engine/types.js';
import type { ResponseObject, ResponseStreamEvent } from '../../src/protocol/responses.js';
import { HERMES_TOOL_FORMAT } from '../../src/protocol/tools.js';
import { ResponseEventBuilder, responseErrorCode, responseObject, type ResponseOutcome } from '../../src/serving/response-events.js';
import { openaiSchemas } from '../helpers/openai-schema.js';

/**
 * The Responses stream events and objects of the endings an e2e run cannot easily bring about
 * (a worker lost part-way, a failure, a rate limit, a cancellation, tool calls mixed with text),
 * checked against OpenAI's schema as openai-node types it (test/helpers/openai-schema.ts).
 */
const schemas = openaiSchemas();

const base = (background = false): Omit<ResponseObject, keyof ResponseOutcome> => ({
  id: 'resp_0123456789abcdef0123456789abcdef',
  object: 'response',
  created_at: 1_700_000_000,
  background,
  instructions: null,
  max_output_tokens: null,
  metadata: {},
  parallel_tool_calls: true,
  temperature: 1,
  text: { format: { type: 'text' } },
  tool_choice: 'auto',
  tools: [],
  top_p: 1,
  truncation: 'disabled',
  safety_identifier: null,
  max_tool_calls: null,
  model: 'tiny',
  previous_response_id: null,
  reasoning: { effort: null, summary: null },
  service_tier: 'default',
  store: true,
});

const delta = (text: string, finishReason: 'stop' | 'length' | null = null): EngineEvent => ({ type: 'delta', choices: [{ index: 0, text, finishReason }], at: 1_700_000_001_000 });
const done = (finishReason: 'stop' | 'length' = 'stop'): EngineEvent => ({ type: 'done', choices: [{ index: 0, finishReason }], usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });
const error = (status: number, code: string): EngineEvent => ({ type: 'error', status, error: { message: `it went wrong (${code})`, type: status < 500 ? 'invalid_request_error' : 'server_error', param: null, code } });

function run(events: EngineEvent[], opts: { tools?: boolean; mode?: 'stream' | 'render'; background?: boolean } = {}): { events: ResponseStreamEvent[]; snapshot: ResponseObject } {
  const b = new ResponseEventBuilder(base(opts.background), opts.tools ? HERMES_TOOL_FORMAT : null, opts.mode ?? 'stream');
  const out = [...b.begin()];
  for (const e of events) out.push(...b.feed(e));
  return { events: out, snapshot: b.snapshot() };
}

function expectValid(r: { events: ResponseStreamEvent[]; snapshot: ResponseObject }) {
  for (const e of r.events) expect(schemas.eventErrors(e), JSON.stringify(e)).toEqual([]);
  expect(schemas.errors('OpenAIResponse', r.snapshot), JSON.stringify(r.snapshot)).toEqual([]);
}

describe('ResponseEventBuilder against OpenAI’s schema', () => {
  it('completed, incomplete and empty replies', () => {
    expectValid(run([delta('Hello'), delta(' there', 'stop'), done()]));
    const cut = run([delta('Hel', 'length'), done('length')]);
    expectValid(cut);
    expect(cut.snapshot).toMatchObject({ status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } });
    expectValid(run([done()]));
  });

  it('function calls, alone and after text', () => {
    const call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';
    const r = run([delta('Let me look. '), delta(call, 'stop'), done()], { tools: true });
    expectValid(r);
    expect(r.snapshot.output.map((o) => o.type)).toEqual(['message', 'function_call']);
    expectValid(run([delta(call, 'stop'), done()], { tools: true }));
  });

  it('failures: an error code of OpenAI’s set, whatever ours was; a rate limit; a bad prompt', () => {
    for (const [status, code, expected] of [
      [500, 'internal_error', 'server_error'],
      [504, 'timeout', 'server_error'],
      [429, 'rate_limit_exceeded', 'rate_limit_exceeded'],
      [400, 'context_length_exceeded', 'invalid_prompt'],
    ] as const) {
      const r = run([delta('part'), error(status, code)]);
      expectValid(r);
      expect(r.events.at(-1)).toMatchObject({ type: 'response.failed', response: { status: 'failed', error: { code: expected, message: `it went wrong (${code})` } } });
      expect(responseErrorCode(status, code)).toBe(expected);
    }
  });

  it('a cancellation ends the stream with response.failed, its response cancelled with no error', () => {
    const r = run([delta('part'), error(499, 'cancelled')], { background: true });
    expectValid(r);
    expect(r.events.at(-1)).toMatchObject({ type: 'response.failed', response: { status: 'cancelled', error: null } });
    expect(r.events.map((e) => e.type)).not.toContain('response.cancelled');
  });

  it('a worker lost after output went out: an error event; rendered, the restarted run counts', () => {
    const lost = run([delta('part'), { type: 'restart', attempt: 2 }]);
    expectValid(lost);
    expect(lost.events.at(-1)).toMatchObject({ type: 'error', code: 'worker_lost', param: null });
    expectValid(run([delta('part'), { type: 'restart', attempt: 2 }, delta('again', 'stop'), done()], { mode: 'render' }));
  });

  it('no usage key and no user key until there is one (optional, not nullable, in the schema)', () => {
    const r = run([]);
    expect(r.snapshot).not.toHaveProperty('usage');
    expect(r.snapshot).not.toHaveProperty('user');
    expect(r.events[0]!.response).not.toHaveProperty('usage');
    expect(run([done()]).snapshot.usage).toEqual({ input_tokens: 3, input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 }, output_tokens: 2, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 5 });
  });

  it('an outcome stored in the older shape (our error code, no cache_write_tokens, usage null) is shown in today’s', () => {
    const old = {
      status: 'failed',
      output: [],
      usage: { input_tokens: 3, input_tokens_details: { cached_tokens: 0 }, output_tokens: 0, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 3 },
      error: { code: 'internal_error', message: 'boom' },
      incomplete_details: null,
      completed_at: 1_700_000_002,
    } as unknown as ResponseOutcome;
    const r = responseObject(base(), old);
    expect(schemas.errors('OpenAIResponse', r)).toEqual([]);
    expect(r.error).toEqual({ code: 'server_error', message: 'boom' });
    expect(r.usage!.input_tokens_details).toEqual({ cached_tokens: 0, cache_write_tokens: 0 });
    const none = responseObject(base(), { ...old, status: 'cancelled', usage: null, error: null });
    expect(schemas.errors('OpenAIResponse', none)).toEqual([]);
    expect(none).not.toHaveProperty('usage');
  });
});
