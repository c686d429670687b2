import { Ajv } from 'ajv';
import type { PreTrainedModel, PreTrainedTokenizer } from '@huggingface/transformers';
import { beforeAll, describe, expect, it } from 'vitest';
import { HERMES_TOOL_FORMAT, parseToolCalls } from '../../../src/protocol/tools.js';
import type { Vocabulary } from '../../../src/worker/generation/constrain/index.js';
import { compileSchema } from '../../../src/worker/generation/constrain/schema.js';
import { createConstraint, loadModel, loadTokenizer, modelLogits, run, sampling, spec, vocabularyOf } from './helpers.js';
import { variedSchemas } from './schemas.js';

/**
 * The constraint against the random-weight chat model itself (in-process, our own small decode
 * loop over model.forward): the model's logits are what a worker would see, so this is the
 * issue's acceptance 1 without the queue in between.
 */
let tok: PreTrainedTokenizer;
let model: PreTrainedModel;
let vocab: Vocabulary;
const ajv = new Ajv({ strict: false });

beforeAll(async () => {
  [tok, model] = await Promise.all([loadTokenizer(), loadModel()]);
  vocab = vocabularyOf(tok);
});

const promptIds = (content: string) =>
  tok.encode(tok.apply_chat_template([{ role: 'user', content }], { tokenize: false, add_generation_prompt: true }) as string, { add_special_tokens: false });

describe('constrained decoding on tiny-chat', () => {
  it('100 varied schemas: every output parses and validates', async () => {
    const schemas = variedSchemas(100, 21);
    let tokens = 0;
    let ms = 0;
    for (const [i, schema] of schemas.entries()) {
      const p = i % 2 ? sampling({ temperature: 1 }) : sampling({ temperature: 0 });
      const max = compileSchema(schema).min + 40;
      const c = createConstraint(spec({ kind: 'json_schema', schema, maxTokens: max }), vocab);
      const r = await run(vocab, c, modelLogits(model, promptIds(`Answer as JSON #${i}`)), { maxTokens: max, sampling: p, seed: i });
      expect(r.ended, r.text).toBe('done');
      const value = JSON.parse(r.text);
      const validate = ajv.compile(schema);
      expect(validate(value), `${r.text} ${JSON.stringify(validate.errors)}`).toBe(true);
      tokens += r.tokens.length;
      ms += r.msPerToken * r.tokens.length;
    }
    console.log(`tiny-chat, 100 schemas: ${tokens} tokens, choose+accept ${(ms / tokens).toFixed(2)} ms/token (sampling included)`);
  }, 300_000);

  it('a forced tool call validates against its function', async () => {
    const parameters = { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city', 'days'], additionalProperties: false };
    for (let seed = 0; seed < 6; seed++) {
      const c = createConstraint(spec({ kind: 'tool_calls', format: HERMES_TOOL_FORMAT, tools: [{ name: 'forecast', parameters }], parallel: false, maxTokens: 60 }), vocab);
      const r = await run(vocab, c, modelLogits(model, promptIds('Weather?')), { maxTokens: 60, sampling: sampling({ temperature: seed % 2 }), seed });
      expect(r.ended).toBe('done');
      const { calls } = parseToolCalls(r.text);
      expect(calls).toHaveLength(1);
      expect(calls[0]!.function.name).toBe('forecast');
      expect(ajv.validate(parameters, JSON.parse(calls[0]!.function.arguments))).toBe(true);
    }
  });
});
