import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, type Proc } from '../helpers/stack.js';

/**
 * The Messages API's stop sequences and thinking blocks with @anthropic-ai/sdk: `tiny` (the
 * tiny-chat fixture) for stop sequences, and `thinker` (the same model with a generation prompt
 * that opens `<think>` and --reasoning-format think-open, as test/e2e/reasoning.test.ts) for
 * thinking: the random model never closes its reasoning by itself, a forced tool call gets the
 * end marker forced after half its budget, so both a thinking block and a tool_use block come.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: Anthropic;
let dir: string;
const TEMPLATE =
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";
const ask = [{ role: 'user' as const, content: 'Tell me a story about the sea.' }];
const add = {
  name: 'add',
  input_schema: { type: 'object' as const, properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'], additionalProperties: false },
};

beforeAll(async () => {
  db = await createTestDatabase();
  dir = mkdtempSync(join(tmpdir(), 'switchyard-athink-'));
  writeFileSync(join(dir, 'think.jinja'), TEMPLATE);
  const env = { DATABASE_URL: db.url };
  for (const args of [
    ['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'],
    ['models', 'add', 'thinker', '--task', 'chat', '--source', 'tiny-chat', '--chat-template-file', join(dir, 'think.jinja'), '--reasoning-format', 'think-open'],
  ]) {
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(0);
  }
  const key = (await cli(['keys', 'create', '--name', 'a'], env)).stdout.trim();
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new Anthropic({ baseURL: serve.url, apiKey: key, maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Greedy decoding (this SDK version's types leave temperature out, its API takes it). */
const greedy: object = { temperature: 0 };
/** msg-<32 hex> → the request's uuid. */
const uuidOf = (id: string) => id.replace(/^msg-/, '').replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');
const textOf = (m: Anthropic.Message) => m.content.flatMap((b) => (b.type === 'text' ? [b.text] : [])).join('');

describe('stop sequences', () => {
  it("a stop sequence that ends the text: stop_reason 'stop_sequence' and the sequence, in JSON and in the stream", async () => {
    // Greedy decoding repeats itself: a piece from the middle of a free run is where the same
    // request stops once that piece is a stop sequence.
    const free = await client.messages.create({ model: 'tiny', max_tokens: 40, ...greedy, messages: ask });
    const text = textOf(free);
    expect(free.stop_reason).toBe('max_tokens');
    const start = Math.floor(text.length / 2);
    const seq = text.slice(start, start + 3);
    expect(seq.trim().length).toBeGreaterThan(0);
    const cut = text.slice(0, text.indexOf(seq));

    const m = await client.messages.create({ model: 'tiny', max_tokens: 40, ...greedy, messages: ask, stop_sequences: ['§never§', seq] });
    expect(m.stop_reason).toBe('stop_sequence');
    expect(m.stop_sequence).toBe(seq);
    expect(textOf(m)).toBe(cut);

    const stream = client.messages.stream({ model: 'tiny', max_tokens: 40, ...greedy, messages: ask, stop_sequences: [seq] });
    const deltas: Anthropic.MessageDeltaEvent[] = [];
    stream.on('streamEvent', (e) => {
      if (e.type === 'message_delta') deltas.push(e);
    });
    const final = await stream.finalMessage();
    expect(final.stop_reason).toBe('stop_sequence');
    expect(final.stop_sequence).toBe(seq);
    expect(textOf(final)).toBe(cut);
    expect(deltas.map((d) => d.delta)).toEqual([{ stop_reason: 'stop_sequence', stop_sequence: seq }]);
  });

  it("the end of the token budget or the model's end is not a stop sequence", async () => {
    const m = await client.messages.create({ model: 'tiny', max_tokens: 5, ...greedy, messages: ask, stop_sequences: ['§never§'] });
    expect(m.stop_reason).toBe('max_tokens');
    expect(m.stop_sequence).toBeNull();
  });
});

describe('thinking blocks (a model with a reasoning format)', () => {
  it('JSON: the reasoning is a thinking block before the text, equal to what the model wrote', async () => {
    const m = await client.messages.create({ model: 'thinker', max_tokens: 24, ...greedy, messages: ask });
    expect(m.content[0]!.type).toBe('thinking');
    const block = m.content[0] as Anthropic.ThinkingBlock;
    expect(block.thinking.length).toBeGreaterThan(0);
    const [row] = await query<{ output: { choices: { text: string }[] } }>(db.url, `select output from ai.requests where id = $1`, [uuidOf(m.id)]);
    // think-open: all of it is reasoning until the model writes </think> (the random model does not).
    expect(row!.output.choices[0]!.text.startsWith(block.thinking.trimEnd())).toBe(true);
    const off = await client.messages.create({ model: 'thinker', max_tokens: 24, ...greedy, messages: ask, thinking: { type: 'disabled' } });
    expect(off.content.some((b) => b.type === 'thinking')).toBe(false);
  });

  it('stream: thinking_delta events the SDK accumulates into the same thinking block', async () => {
    const json = await client.messages.create({ model: 'thinker', max_tokens: 24, ...greedy, messages: ask, thinking: { type: 'enabled', budget_tokens: 1024 } });
    const stream = client.messages.stream({ model: 'thinker', max_tokens: 24, ...greedy, messages: ask, thinking: { type: 'enabled', budget_tokens: 1024 } });
    const kinds: string[] = [];
    stream.on('streamEvent', (e) => {
      if (e.type === 'content_block_delta') kinds.push(e.delta.type);
      if (e.type === 'content_block_start') kinds.push(`start:${e.content_block.type}`);
    });
    const final = await stream.finalMessage();
    expect(kinds[0]).toBe('start:thinking');
    expect(kinds).toContain('thinking_delta');
    expect(final.content).toEqual(json.content);
  });

  it('a forced tool call after the reasoning: a thinking block, then a tool_use block; thinking sent back is accepted', async () => {
    const m = await client.messages.create({ model: 'thinker', max_tokens: 200, ...greedy, messages: ask, tools: [add], tool_choice: { type: 'any', disable_parallel_tool_use: true } });
    expect(m.content.map((b) => b.type), JSON.stringify(m.content)).toEqual(['thinking', 'tool_use']);
    expect(m.stop_reason).toBe('tool_use');
    const call = m.content[1] as Anthropic.ToolUseBlock;
    expect(Object.keys(call.input as object).sort()).toEqual(['a', 'b']);
    const next = await client.messages.create({
      model: 'thinker',
      max_tokens: 8,
      messages: [...ask, { role: 'assistant', content: m.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: '5' }] }],
    });
    expect(next.type).toBe('message');
  });
});
