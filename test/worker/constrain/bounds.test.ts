import { describe, expect, it } from 'vitest';
import { parseChatCompletionRequest } from '../../../src/protocol/chat.js';
import { compileSchema, MAX_OPTIONAL, SCHEMA_LIMITS, SchemaError } from '../../../src/worker/generation/constrain/schema.js';

/** Schemas are bounded in size: compiling runs on the model thread, between decode steps. */
const wide = (n: number, optional = false) => {
  const keys = Array.from({ length: n }, (_, i) => `p${i}`);
  return { type: 'object', properties: Object.fromEntries(keys.map((k) => [k, { type: 'string' }])), required: optional ? [] : keys };
};
const deep = (levels: number): Record<string, unknown> => (levels === 0 ? { type: 'string' } : { type: 'object', properties: { a: deep(levels - 1) } });

const chat = (extra: Record<string, unknown>) => ({ model: 'm', messages: [{ role: 'user', content: 'hi' }], ...extra });
const format = (schema: unknown) => ({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } });

function refusal(body: unknown) {
  try {
    parseChatCompletionRequest(body);
  } catch (err) {
    return err as { status: number; code: string; param: string; message: string };
  }
  throw new Error('accepted');
}

describe('schema bounds', () => {
  it('too many values, too deep, or too many characters: a 400 naming the param', () => {
    expect(refusal(chat(format(wide(SCHEMA_LIMITS.values))))).toMatchObject({ status: 400, code: 'invalid_json_schema', param: 'response_format', message: expect.stringMatching(/too large/) });
    expect(refusal(chat(format({ type: 'string', description: 'd'.repeat(SCHEMA_LIMITS.chars + 1) })))).toMatchObject({ param: 'response_format', message: expect.stringMatching(/characters/) });
    expect(() => parseChatCompletionRequest(chat(format(deep(10))))).not.toThrow();
    expect(refusal(chat(format(wide(MAX_OPTIONAL + 1, true))))).toMatchObject({ param: 'response_format', message: expect.stringMatching(/optional properties/) });
    expect(() => parseChatCompletionRequest(chat(format(wide(MAX_OPTIONAL, true))))).not.toThrow();
  });

  it("the forced tools' parameters share one budget", () => {
    // About 3 values a property: two of these fit in the budget, three do not.
    const third = wide(Math.ceil(SCHEMA_LIMITS.values / 7));
    const tools = [0, 1, 2].map((i) => ({ type: 'function', function: { name: `f${i}`, parameters: third } }));
    // Only forced calls are compiled: with 'auto' the same tools are fine.
    expect(() => parseChatCompletionRequest(chat({ tools, tool_choice: 'auto' }))).not.toThrow();
    expect(refusal(chat({ tools, tool_choice: 'required' }))).toMatchObject({ code: 'invalid_json_schema', param: 'tools[2].function.parameters' });
  });

  it('the worker refuses the same (SQL- and SDK-originated requests), and compiles what is allowed quickly', () => {
    // Deeper than the HTTP body may nest: only a request from SQL or the SDK gets here.
    expect(() => compileSchema(deep(SCHEMA_LIMITS.depth))).toThrow(/nests deeper/);
    expect(() => compileSchema(wide(MAX_OPTIONAL + 1, true))).toThrow(SchemaError);
    // The largest schema of this shape within the limits.
    const big = wide(Math.floor(SCHEMA_LIMITS.values / 3) - 10);
    const t0 = performance.now();
    compileSchema(big);
    expect(performance.now() - t0).toBeLessThan(1000);
  });
});
