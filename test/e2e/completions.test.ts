import { AutoModelForCausalLM, AutoTokenizer, env, Tensor, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/** Legacy /v1/completions and logprobs, checked against the model run directly. */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;
let tok: PreTrainedTokenizer;
let model: PreTrainedModel;

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat', '--dtype', 'fp32', '--alias', 'gpt-3.5-turbo-instruct'], e)).code).toBe(0);
  const key = (await cli(['keys', 'create', '--name', 'legacy'], e)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
  tok = await AutoTokenizer.from_pretrained('tiny-chat');
  model = await AutoModelForCausalLM.from_pretrained('tiny-chat', { dtype: 'fp32' });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

/** log-softmax of the model's logits at each position of `ids`, computed in one full forward pass. */
async function directLogprobs(ids: number[]): Promise<(k: number, token: number) => number> {
  const L = ids.length;
  const t = (a: number[]) => new Tensor('int64', BigInt64Array.from(a.map(BigInt)), [1, L]);
  const out = (await model.forward({ input_ids: t(ids), attention_mask: t(ids.map(() => 1)), position_ids: t(ids.map((_, i) => i)) })) as { logits: Tensor };
  const V = out.logits.dims[2]!;
  const data = out.logits.data as Float32Array;
  // Log-probability of `token` at position k, predicted from the logits at position k - 1.
  return (k, token) => {
    const row = data.subarray((k - 1) * V, k * V);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    return row[token]! - max - Math.log(sum);
  };
}

async function storedTokenIds(requestId: string): Promise<number[]> {
  const [row] = await query<{ output: { choices: { token_ids: number[] }[] } }>(db.url, 'select output from ai.requests where id = $1', [requestId]);
  return row!.output.choices[0]!.token_ids;
}

describe('legacy completions', () => {
  it('completes a prompt with legacy logprobs equal to log-softmax from the model', async () => {
    const prompt = 'Once upon a time, in a land far away';
    const r = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt, max_tokens: 8, temperature: 0, logprobs: 3 }).withResponse();
    const c = r.data;
    expect(c).toMatchObject({ object: 'text_completion', model: 'gpt-3.5-turbo-instruct' });
    expect(c.id).toMatch(/^cmpl-[0-9a-f]{32}$/);
    expect(c.choices).toHaveLength(1);
    expect(c.choices[0]!.finish_reason).toBe('length');
    const lp = c.choices[0]!.logprobs!;
    expect(lp.tokens).toHaveLength(8);
    expect(lp.tokens!.join('')).toBe(c.choices[0]!.text);
    expect(lp.text_offset![0]).toBe(0);
    for (const top of lp.top_logprobs!) expect(Object.keys(top)).toHaveLength(3);
    const promptIds = tok.encode(prompt);
    expect(c.usage).toEqual({ prompt_tokens: promptIds.length, completion_tokens: 8, total_tokens: promptIds.length + 8 });
    const generated = await storedTokenIds(r.response.headers.get('x-request-id')!);
    const direct = await directLogprobs([...promptIds, ...generated]);
    generated.forEach((token, k) => expect(lp.token_logprobs![k]).toBeCloseTo(direct(promptIds.length + k, token), 4));
    // Greedy: the chosen token is the most likely one.
    lp.token_logprobs!.forEach((l, k) => expect(l).toBeCloseTo(Math.max(...Object.values(lp.top_logprobs![k]!)), 5));
  });

  it('echoes the prompt, with its tokens and logprobs (the first is null)', async () => {
    const prompt = 'Hello there';
    const c = await client.completions.create({ model: 'tiny', prompt, max_tokens: 3, temperature: 0, echo: true, logprobs: 0 });
    const text = c.choices[0]!.text;
    expect(text.startsWith(prompt)).toBe(true);
    const promptIds = tok.encode(prompt);
    const lp = c.choices[0]!.logprobs!;
    expect(lp.tokens).toHaveLength(promptIds.length + 3);
    expect(lp.token_logprobs![0]).toBeNull();
    const direct = await directLogprobs(promptIds);
    for (let k = 1; k < promptIds.length; k++) expect(lp.token_logprobs![k]).toBeCloseTo(direct(k, promptIds[k]!), 4);
  });

  it('numbers choices prompt by prompt, n each, and sums usage', async () => {
    const c = await client.completions.create({ model: 'tiny', prompt: ['first prompt', 'second one'], n: 2, max_tokens: 4, seed: 1 });
    expect(c.choices.map((x) => x.index)).toEqual([0, 1, 2, 3]);
    expect(c.usage!.completion_tokens).toBe(16);
    // Each prompt counts once, whatever n (the choices share its prefill).
    expect(c.usage!.prompt_tokens).toBe(tok.encode('first prompt').length + tok.encode('second one').length);
  });

  it('accepts token ids, stops at stop strings, and streams the same text', async () => {
    const ids = tok.encode('The weather today is');
    const plain = await client.completions.create({ model: 'tiny', prompt: ids, max_tokens: 12, temperature: 0 });
    const stream = await client.completions.create({ model: 'tiny', prompt: ids, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage: unknown = null;
    for await (const chunk of stream) {
      for (const ch of chunk.choices) text += ch.text;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(plain.choices[0]!.text);
    expect(usage).toEqual(plain.usage);
  });

  it('rejects what it does not serve, naming the param', async () => {
    for (const [body, param] of [
      [{ suffix: 'end' }, 'suffix'],
      [{ best_of: 3 }, 'best_of'],
      [{ logprobs: 9 }, 'logprobs'],
      [{ logit_bias: { '1': 2 } }, 'logit_bias'],
      [{ prompt: [] }, 'prompt'],
    ] as const) {
      const err = await client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 2, ...body } as never).catch((e) => e);
      expect(err, JSON.stringify(body)).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.param).toBe(param);
    }
  });
});

describe('chat logprobs', () => {
  const messages = [{ role: 'user' as const, content: 'Tell me something.' }];

  it('returns logprobs and top_logprobs in OpenAI shape, equal to log-softmax from the model', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 }).withResponse();
    const content = r.data.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(6);
    for (const e of content) {
      expect(e.bytes).toEqual([...Buffer.from(e.token, 'utf8')]);
      expect(e.top_logprobs).toHaveLength(2);
      expect(e.logprob).toBeCloseTo(e.top_logprobs[0]!.logprob, 5);
    }
    const promptIds = tok.encode(tok.apply_chat_template(messages, { tokenize: false, add_generation_prompt: true }) as string, { add_special_tokens: false });
    const generated = await storedTokenIds(r.response.headers.get('x-request-id')!);
    const direct = await directLogprobs([...promptIds, ...generated]);
    generated.forEach((token, k) => expect(content[k]!.logprob).toBeCloseTo(direct(promptIds.length + k, token), 4));
  });

  it('streams logprobs with the chunks', async () => {
    const stream = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 6, temperature: 0, logprobs: true, stream: true });
    const entries = [];
    for await (const chunk of stream) entries.push(...(chunk.choices[0]?.logprobs?.content ?? []));
    expect(entries).toHaveLength(6);
    const plain = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 6, temperature: 0, logprobs: true });
    expect(entries.map((e) => e.logprob)).toEqual(plain.choices[0]!.logprobs!.content!.map((e) => e.logprob));
  });

  it('needs logprobs: true for top_logprobs', async () => {
    const err = await client.chat.completions.create({ model: 'tiny', messages, top_logprobs: 2 }).catch((e) => e);
    expect(err.param).toBe('top_logprobs');
  });
});
