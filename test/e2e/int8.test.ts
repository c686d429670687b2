import { AutoModelForCausalLM, AutoTokenizer, env, Tensor, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, startServe, startWorker, type Proc } from '../helpers/stack.js';
import { makeRng } from '../../src/worker/generation/sampler.js';

/**
 * The int8 default through the gateway: the fixture registered without --dtype runs its int8
 * export, and each request's tokens are the ones that export gives run directly (a plain
 * prefill-then-decode loop, one sequence at a time, as the requests here are).
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;
let tok: PreTrainedTokenizer;
let q8: PreTrainedModel;

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url, SWITCHYARD_MODELS_DIR: modelsDir() };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], e)).code).toBe(0);
  const key = (await cli(['keys', 'create', '--name', 'int8'], e)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
  tok = await AutoTokenizer.from_pretrained('tiny-chat');
  q8 = await AutoModelForCausalLM.from_pretrained('tiny-chat', { dtype: 'q8' });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

const int64 = (a: number[], dims: number[]) => new Tensor('int64', BigInt64Array.from(a.map(BigInt)), dims);

/** Greedy tokens of `model` after `ids`: the prompt in one forward, then one token per forward over the KV cache. */
async function greedy(model: PreTrainedModel, ids: number[], n: number): Promise<number[]> {
  const out: number[] = [];
  let past: Record<string, Tensor> = {};
  let input = ids;
  let len = 0;
  for (let k = 0; k < n; k++) {
    const total = len + input.length;
    const r = (await model.forward({
      input_ids: int64(input, [1, input.length]),
      attention_mask: int64(new Array(total).fill(1), [1, total]),
      position_ids: int64(input.map((_, i) => len + i), [1, input.length]),
      ...(len > 0 ? { past_key_values: past } : {}),
    })) as Record<string, Tensor>;
    const V = r.logits!.dims[2]!;
    const row = (r.logits!.data as Float32Array).subarray((input.length - 1) * V, input.length * V);
    let best = 0;
    for (let i = 1; i < V; i++) if (row[i]! > row[best]!) best = i;
    out.push(best);
    past = {};
    for (const [name, t] of Object.entries(r)) if (name.startsWith('present')) past[name.replace('present', 'past_key_values')] = t;
    len = total;
    input = [best];
  }
  return out;
}

async function storedTokenIds(requestId: string): Promise<number[]> {
  const [row] = await query<{ output: { choices: { token_ids: number[] }[] } }>(db.url, 'select output from ai.requests where id = $1', [requestId]);
  return row!.output.choices[0]!.token_ids;
}

it('registers the fixture in int8 by default on CPU', async () => {
  const listed = JSON.parse((await cli(['models', 'list', '--json'], { DATABASE_URL: db.url })).stdout) as { name: string; dtype: string }[];
  expect(listed.find((m) => m.name === 'tiny')!.dtype).toBe('q8');
});

it("gives the int8 export's own tokens, token for token (legacy prompts of token ids, and a chat)", async () => {
  const rng = makeRng(8);
  const prompts = [9, 23, 41].map((n) => Array.from({ length: n }, () => 100 + Math.floor(rng() * 40_000)));
  let differ = 0;
  const fp32 = await AutoModelForCausalLM.from_pretrained('tiny-chat', { dtype: 'fp32' });
  for (const prompt of prompts) {
    const r = await client.completions.create({ model: 'tiny', prompt, max_tokens: 16, temperature: 0 }).withResponse();
    const got = await storedTokenIds(r.response.headers.get('x-request-id')!);
    expect(got).toEqual(await greedy(q8, prompt, 16));
    if (JSON.stringify(got) !== JSON.stringify(await greedy(fp32, prompt, 16))) differ++;
  }
  await fp32.dispose();
  // It really is the int8 graph that ran: fp32 goes its own way on at least one of them.
  expect(differ).toBeGreaterThan(0);

  const messages = [{ role: 'user' as const, content: 'Tell me about the lighthouse on the northern cape.' }];
  const c = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0 }).withResponse();
  const text = tok.apply_chat_template(messages as never, { tokenize: false, add_generation_prompt: true }) as string;
  const ids = tok.encode(text, { add_special_tokens: false });
  expect(await storedTokenIds(c.response.headers.get('x-request-id')!)).toEqual(await greedy(q8, ids, 12));
});

it('loaded the int8 graph rewritten: grouped attention, the cache in place, logits only for the positions read (their tokens checked above)', () => {
  expect(worker.output()).toMatch(/model tiny ready in \d+ ms \(context \d+ tokens; attention over grouped KV heads: 4 products rewritten at load; 4 cache outputs hold only new tokens \(the cache stays in place\); logits only for the positions read\)/);
});
