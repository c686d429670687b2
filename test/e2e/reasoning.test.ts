import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * Reasoning formats through the whole stack. The `tiny-chat` fixture registered with a ChatML
 * template whose generation prompt opens `<think>` (as DeepSeek-R1's does) and
 * `--reasoning-format think-open`: its output begins inside the reasoning section. The random
 * model never closes it by itself; a constrained reply (JSON, a forced call) gets the end marker
 * forced after half its budget, and the value after it, so both parts are exercised.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;
let dir: string;
const ajv = new Ajv({ strict: false });
const TEMPLATE =
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";
const schema = { type: 'object', properties: { answer: { type: 'integer' }, sure: { type: 'boolean' } }, required: ['answer', 'sure'], additionalProperties: false };
const messages = [{ role: 'user' as const, content: 'What is 2 + 3? Think first.' }];
const tools = [{ type: 'function' as const, function: { name: 'add', parameters: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'], additionalProperties: false } } }];

beforeAll(async () => {
  db = await createTestDatabase();
  dir = mkdtempSync(join(tmpdir(), 'switchyard-think-'));
  writeFileSync(join(dir, 'think.jinja'), TEMPLATE);
  const env = { DATABASE_URL: db.url };
  for (const args of [
    ['models', 'add', 'thinker', '--task', 'chat', '--source', 'tiny-chat', '--chat-template-file', join(dir, 'think.jinja'), '--reasoning-format', 'think-open'],
    ['models', 'add', 'qwenish', '--task', 'chat', '--source', 'tiny-chat', '--reasoning-format', 'think'],
  ]) {
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(0);
  }
  const bad = await cli(['models', 'add', 'bad', '--task', 'chat', '--source', 'tiny-chat', '--reasoning-format', '{"start":"<t>"}'], env);
  expect(bad.code).not.toBe(0);
  expect(bad.stderr).toContain('--reasoning-format');
  [serve, worker] = await Promise.all([startServe(db.url, ['--no-auth']), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Msg = { content: string | null; reasoning_content?: string | null; tool_calls?: { function: { name: string; arguments: string } }[] };
const rowText = async (id: string) => {
  const [row] = await query<{ output: { choices: { text: string }[] } }>(db.url, 'select output from ai.requests where id = $1', [id]);
  return row!.output.choices[0]!.text;
};

async function streamOf(body: Record<string, unknown>) {
  const stream = await client.chat.completions.create({ ...(body as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming), stream: true });
  let reasoning = '';
  let content = '';
  const args: string[] = [];
  const order: string[] = [];
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta as { content?: string; reasoning_content?: string; tool_calls?: { index: number; function?: { arguments?: string } }[] } | undefined;
    if (!d) continue;
    if (d.reasoning_content) (reasoning += d.reasoning_content), order.push('reasoning');
    if (d.content) (content += d.content), order.push('content');
    for (const c of d.tool_calls ?? []) (args[c.index] = (args[c.index] ?? '') + (c.function?.arguments ?? '')), order.push('call');
  }
  return { reasoning, content, args, order };
}

describe('reasoning_content', () => {
  it('JSON: a json_schema reply has its reasoning apart and valid JSON as content; the row holds both, in order', async () => {
    const body = { model: 'thinker', messages, max_tokens: 40, temperature: 0, response_format: { type: 'json_schema' as const, json_schema: { name: 'sum', schema } } };
    const res = await client.chat.completions.create(body).withResponse();
    const msg = res.data.choices[0]!.message as unknown as Msg;
    expect(msg.reasoning_content!.length).toBeGreaterThan(0);
    expect(msg.reasoning_content).not.toContain('</think>');
    expect(ajv.validate(schema, JSON.parse(msg.content!)), msg.content!).toBe(true);
    const raw = await rowText(res.response.headers.get('x-request-id')!);
    expect(raw.startsWith(`${msg.reasoning_content}</think>`)).toBe(true);
    expect(raw.endsWith(msg.content!)).toBe(true);
    // Streamed at temperature 0: the same two parts, reasoning first.
    const s = await streamOf(body);
    expect(s.reasoning).toBe(msg.reasoning_content);
    expect(s.content).toBe(msg.content);
    expect(s.order.indexOf('content')).toBeGreaterThan(s.order.lastIndexOf('reasoning'));
  });

  it('a forced tool call comes after the reasoning section, with arguments valid for its parameters', async () => {
    const body = { model: 'thinker', messages, tools, tool_choice: 'required' as const, parallel_tool_calls: false, max_tokens: 100, temperature: 0 };
    const c = await client.chat.completions.create(body);
    const msg = c.choices[0]!.message as unknown as Msg;
    expect(c.choices[0]!.finish_reason, JSON.stringify(msg) + JSON.stringify(c.usage)).toBe('tool_calls');
    expect(msg.reasoning_content!.length).toBeGreaterThan(0);
    expect(msg.tool_calls).toHaveLength(1);
    expect(ajv.validate(tools[0]!.function.parameters, JSON.parse(msg.tool_calls![0]!.function.arguments))).toBe(true);
    const s = await streamOf(body);
    expect(s.reasoning).toBe(msg.reasoning_content);
    expect(s.args[0]).toBe(msg.tool_calls![0]!.function.arguments);
    expect(s.order.indexOf('call')).toBeGreaterThan(s.order.lastIndexOf('reasoning'));
  });

  it('an unconstrained reply cut off while thinking is all reasoning (content null), JSON and stream', async () => {
    const body = { model: 'thinker', messages, max_tokens: 12, temperature: 0 };
    const res = await client.chat.completions.create(body).withResponse();
    const msg = res.data.choices[0]!.message as unknown as Msg;
    expect(res.data.choices[0]!.finish_reason).toBe('length');
    expect(msg.content).toBeNull();
    expect(msg.reasoning_content).toBe(await rowText(res.response.headers.get('x-request-id')!));
    const s = await streamOf(body);
    expect(s.reasoning).toBe(msg.reasoning_content);
    expect(s.content).toBe('');
  });

  it("a model whose reply does not open the section ('think') answers in content, reasoning_content null", async () => {
    const c = await client.chat.completions.create({ model: 'qwenish', messages, max_tokens: 8, temperature: 0 });
    const msg = c.choices[0]!.message as unknown as Msg;
    expect(msg.content!.length).toBeGreaterThan(0);
    expect(msg.reasoning_content).toBeNull();
  });
});
