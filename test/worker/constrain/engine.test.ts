import { Ajv } from 'ajv';
import type { PreTrainedTokenizer } from '@huggingface/transformers';
import { beforeAll, describe, expect, it } from 'vitest';
import { HERMES_TOOL_FORMAT, parseToolCalls } from '../../../src/protocol/tools.js';
import { checkSchema, SchemaError, type Vocabulary } from '../../../src/worker/generation/constrain/index.js';
import { createConstraint, loadTokenizer, randomLogits, run, sampling, spec, vocabularyOf } from './helpers.js';
import { compileSchema } from '../../../src/worker/generation/constrain/schema.js';
import { UNSUPPORTED_SCHEMAS, variedSchemas } from './schemas.js';

let tok: PreTrainedTokenizer;
let vocab: Vocabulary;
const ajv = new Ajv({ strict: false, allErrors: true });

beforeAll(async () => {
  tok = await loadTokenizer();
  vocab = vocabularyOf(tok);
});

function expectValid(schema: unknown, text: string): void {
  let value: unknown;
  expect(() => (value = JSON.parse(text)), text).not.toThrow();
  const validate = ajv.compile(schema as object);
  expect(validate(value), `${text}\n${JSON.stringify(validate.errors)}`).toBe(true);
}

describe('vocabulary', () => {
  it('decodes every token once, sorts them, and classes plain string tokens', () => {
    expect(vocabularyOf(tok)).toBe(vocab);
    expect(vocab.size).toBe(49152);
    expect(vocab.eos).toEqual([2]);
    expect(vocab.texts[2]).toBe(''); // special: never emitted as text
    expect(vocab.plain.length + vocab.special.length).toBe(vocab.sorted.length);
    for (let i = 1; i < vocab.sorted.length; i += 997) expect(vocab.texts[vocab.sorted[i - 1]!]! <= vocab.texts[vocab.sorted[i]!]!).toBe(true);
    for (const id of vocab.plain.slice(0, 2000)) expect(vocab.texts[id]).not.toMatch(/["\\\u0000-\u001f]/);
  });
});

describe('schema checks', () => {
  it.each(UNSUPPORTED_SCHEMAS)('refuses $keyword, naming it', ({ schema, keyword }) => {
    expect(() => checkSchema(schema)).toThrow(SchemaError);
    try {
      checkSchema(schema);
    } catch (err) {
      expect((err as SchemaError).keyword).toBe(keyword);
      expect((err as Error).message).toContain(`'${keyword}'`);
    }
  });

  it('accepts the strict-mode subset', () => {
    for (const s of variedSchemas(50)) expect(() => checkSchema(s)).not.toThrow();
  });

  it('refuses bad references and schemas without a finite value', () => {
    expect(() => checkSchema({ $ref: '#/$defs/nope' })).toThrow(/points to nothing/);
    expect(() => checkSchema({ $ref: 'http://example.com/s.json' })).toThrow(/local references/);
    expect(() => checkSchema({ $defs: { a: { type: 'object', properties: { a: { $ref: '#/$defs/a' } }, required: ['a'] } }, $ref: '#/$defs/a' })).toThrow(/no finite value/);
  });
});

describe('constrained decoding over random logits', () => {
  it('json_object: any JSON object, ended by the constraint', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const c = createConstraint(spec({ kind: 'json_object', maxTokens: 40 }), vocab);
      const r = await run(vocab, c, randomLogits(49152, seed), { maxTokens: 40, seed });
      const v = JSON.parse(r.text);
      expect(typeof v === 'object' && v !== null && !Array.isArray(v), r.text).toBe(true);
      expect(r.ended).toBe('done');
    }
  });

  it('100 varied schemas: every output parses and validates (greedy, sampled, top_p)', async () => {
    const schemas = variedSchemas(100);
    const modes = [sampling({ temperature: 0 }), sampling({ temperature: 1 }), sampling({ temperature: 0.8, topP: 0.9 })];
    let tokens = 0;
    let ms = 0;
    for (const [i, schema] of schemas.entries()) {
      const p = modes[i % modes.length]!;
      // Room for the schema's smallest value (in characters: at most as many tokens) and some more.
      const max = compileSchema(schema).min + 60;
      const c = createConstraint(spec({ kind: 'json_schema', schema, maxTokens: max, lazy: p.temperature === 0 || p.topP >= 1 }), vocab);
      const r = await run(vocab, c, randomLogits(49152, i), { maxTokens: max, sampling: p, seed: i });
      expect(r.ended, r.text).toBe('done');
      expectValid(schema, r.text);
      tokens += r.tokens.length;
      ms += r.msPerToken * r.tokens.length;
    }
    console.log(`choose+accept over random logits: ${(ms / tokens).toFixed(2)} ms/token over ${tokens} tokens (sampling included)`);
  });

  it('closes the value within max_tokens however small', async () => {
    const schema = variedSchemas(1, 5)[0]!;
    for (const max of [20, 30, 50]) {
      const c = createConstraint(spec({ kind: 'json_schema', schema: { type: 'object', properties: { s: { type: 'string' }, n: { type: 'array', items: { type: 'string' } } }, required: ['s', 'n'], additionalProperties: false }, maxTokens: max }), vocab);
      const r = await run(vocab, c, randomLogits(49152, max), { maxTokens: max });
      expect(r.tokens.length).toBeLessThanOrEqual(max);
      expect(r.ended).toBe('done');
      JSON.parse(r.text);
    }
    void schema;
  });

  it('greedy is exactly the argmax over the allowed tokens', () => {
    const c = createConstraint(spec({ kind: 'json_schema', schema: { type: 'object', properties: { a: { type: 'boolean' } }, required: ['a'], additionalProperties: false }, maxTokens: null }), vocab);
    const logits = randomLogits(49152, 3)([]);
    const argmax = (l: Float32Array) => l.reduce((b, v, i) => (v > l[b]! ? i : b), 0);
    const token = c.choose(logits, argmax);
    expect(vocab.texts[token]!.startsWith('{')).toBe(true);
    // No allowed token has a higher logit.
    let best = -Infinity;
    for (let id = 0; id < vocab.size; id++) if (vocab.texts[id]!.length && '{"a":'.startsWith(vocab.texts[id]!) ) best = Math.max(best, logits[id]!);
    expect(logits[token]).toBeGreaterThanOrEqual(best);
  });

  it('allows end-of-sequence only once the value is complete', () => {
    const c = createConstraint(spec({ kind: 'json_object', maxTokens: null, lazy: false }), vocab);
    const eosOnly = new Float32Array(49152).fill(-5);
    eosOnly[2] = 50;
    const argmax = (l: Float32Array) => l.reduce((b, v, i) => (v > l[b]! ? i : b), 0);
    expect(c.choose(eosOnly.slice(), argmax)).not.toBe(2);
  });

  it('forced tool calls: the Hermes format, a known function, arguments valid for its parameters', async () => {
    const tools = [
      { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { enum: ['c', 'f'] } }, required: ['city', 'unit'], additionalProperties: false } },
      { name: 'add', parameters: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'], additionalProperties: false } },
    ];
    for (let seed = 1; seed <= 12; seed++) {
      const parallel = seed % 3 === 0;
      const c = createConstraint(spec({ kind: 'tool_calls', format: HERMES_TOOL_FORMAT, tools, parallel, maxTokens: 80 }), vocab);
      const r = await run(vocab, c, randomLogits(49152, seed), { maxTokens: 80, seed, sampling: sampling({ temperature: seed % 2 ? 0 : 1 }) });
      expect(r.text.startsWith('<tool_call>\n{"name":')).toBe(true);
      const { calls } = parseToolCalls(r.text);
      expect(calls.length, r.text).toBeGreaterThanOrEqual(1);
      if (!parallel) expect(r.ended).toBe('done');
      for (const call of calls) {
        const t = tools.find((x) => x.name === call.function.name)!;
        expect(t, r.text).toBeDefined();
        expectValid(t.parameters, call.function.arguments);
      }
    }
  });
});
