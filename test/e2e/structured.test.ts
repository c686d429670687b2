import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { compileSchema } from '../../src/worker/generation/constrain/schema.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, startServe, startWorker, type Proc } from '../helpers/stack.js';
import { UNSUPPORTED_SCHEMAS, variedSchemas } from '../worker/constrain/schemas.js';

/**
 * Structured outputs through the whole stack (serve + worker + Postgres) on the random-weight
 * chat model: whatever the weights, the output is valid by construction (issue 9, acceptance 1).
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc & { workerId: string };
let client: OpenAI;
const ajv = new Ajv({ strict: false });
const messages = [{ role: 'user' as const, content: 'Describe a city as JSON.' }];

beforeAll(async () => {
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const r = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env);
  expect(r.code, r.stderr).toBe(0);
  [serve, worker] = await Promise.all([startServe(db.url, ['--no-auth']), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

const expectValid = (schema: object, text: string) => {
  const value = JSON.parse(text);
  const validate = ajv.compile(schema);
  expect(validate(value), `${text}\n${JSON.stringify(validate.errors)}`).toBe(true);
};

describe('response_format json_schema', () => {
  it('100 varied schemas: every reply parses and validates', async () => {
    const schemas = variedSchemas(100, 33);
    // Eight at a time: the worker batches them.
    for (let i = 0; i < schemas.length; i += 8) {
      await Promise.all(
        schemas.slice(i, i + 8).map(async (schema, j) => {
          const c = await client.chat.completions.create({
            model: 'tiny',
            messages,
            max_tokens: compileSchema(schema).min + 40,
            temperature: (i + j) % 2,
            seed: i + j,
            response_format: { type: 'json_schema', json_schema: { name: `s${i + j}`, schema, strict: true } },
          });
          expect(c.choices[0]!.finish_reason).toBe('stop');
          expectValid(schema, c.choices[0]!.message.content!);
        }),
      );
    }
  }, 600_000);

  it('refuses schema keywords it cannot enforce: 400 naming the keyword', async () => {
    for (const { schema, keyword } of UNSUPPORTED_SCHEMAS) {
      const err = await client.chat.completions
        .create({ model: 'tiny', messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } })
        .then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      const e = err as InstanceType<typeof OpenAI.BadRequestError>;
      expect(e.param).toBe('response_format');
      expect(e.message).toContain(`'${keyword}'`);
    }
  });

  it('streams a valid value too', async () => {
    const schema = { type: 'object', properties: { city: { type: 'string' }, population: { type: 'integer' }, rivers: { type: 'array', items: { type: 'string' }, maxItems: 2 } }, required: ['city', 'population', 'rivers'], additionalProperties: false };
    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 80,
      stream: true,
      response_format: { type: 'json_schema', json_schema: { name: 'city', schema } },
    });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe('stop');
    expectValid(schema, text);
  });

  it('json_object: a JSON object', async () => {
    const c = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 40, n: 3, temperature: 1, response_format: { type: 'json_object' } });
    for (const choice of c.choices) {
      const v = JSON.parse(choice.message.content!);
      expect(typeof v === 'object' && v !== null && !Array.isArray(v)).toBe(true);
    }
  });

  it("the openai package's chat.completions.parse with a zod schema accepts the reply", async () => {
    const City = z.object({
      name: z.string(),
      population: z.number().int(),
      coastal: z.boolean(),
      kind: z.enum(['capital', 'town']),
      mayor: z.string().nullable(),
    });
    const c = await client.chat.completions.parse({ model: 'tiny', messages, max_tokens: 100, response_format: zodResponseFormat(City, 'city') });
    const parsed = c.choices[0]!.message.parsed;
    expect(parsed).not.toBeNull();
    expect(City.parse(parsed)).toEqual(parsed);
  });
});
