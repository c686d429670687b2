import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Tokenizers } from '../../src/engine/types.js';
import { FakeEngine, fakeApp } from '../helpers/fake-app.js';

/**
 * /v1/messages and /v1/messages/count_tokens under random bodies (a seeded mutator over valid
 * requests), in process over the fake engine: no answer is a 5xx, every refusal is in
 * Anthropic's envelope, and every 200 is a Message (or a count).
 */
let app: FastifyInstance;
const tokenizers: Tokenizers = {
  tokenize: async (req) => ({ model: req.model, tokens: 'text' in req.input ? [1] : req.input.messages.map(() => 1), maxModelLen: 2048 }),
  detokenize: async () => '',
};

beforeAll(async () => {
  app = fakeApp(new FakeEngine(), { auth: false, tokenizers });
  await app.ready();
});
afterAll(async () => app?.close());

/** mulberry32: the same bodies on every run. */
function rng(seed: number) {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const VALID = [
  { model: 'tiny-chat', max_tokens: 4, messages: [{ role: 'user', content: 'hi' }] },
  { model: 'tiny-chat', max_tokens: 4, system: [{ type: 'text', text: 's' }], stop_sequences: ['x'], metadata: { user_id: 'u' }, temperature: 0.5, top_p: 0.9, messages: [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }] },
  {
    model: 'tiny-chat',
    max_tokens: 4,
    tools: [{ name: 'f', input_schema: { type: 'object', properties: { a: { type: 'integer' } } } }],
    tool_choice: { type: 'tool', name: 'f' },
    messages: [
      { role: 'user', content: 'call f' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'f', input: { a: 1 } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't1', content: [{ type: 'text', text: '1' }], is_error: true }] },
    ],
    stream: true,
  },
];
const ODD: unknown[] = [null, true, 0, -1, 1.5, 1e300, '', 'x', '\u0000', '\ud800', [], [null], {}, { type: 'text' }, { type: 'image' }, 'a'.repeat(300), [[[[]]]]];

function mutate(value: unknown, r: () => number, depth = 0): unknown {
  if (depth > 0 && r() < 0.25) return ODD[Math.floor(r() * ODD.length)];
  if (Array.isArray(value)) {
    const out = value.map((v) => (r() < 0.4 ? mutate(v, r, depth + 1) : v));
    if (r() < 0.15) out.pop();
    if (r() < 0.15) out.push(ODD[Math.floor(r() * ODD.length)]);
    return out;
  }
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (r() < 0.1) continue;
      out[k] = r() < 0.4 ? mutate(v, r, depth + 1) : v;
    }
    if (r() < 0.08) out[['top_k', 'thinking', 'extra', 'cache_control'][Math.floor(r() * 4)]!] = 1;
    return out;
  }
  return r() < 0.5 ? ODD[Math.floor(r() * ODD.length)] : value;
}

it('no 5xx, refusals in Anthropic envelope, 200s well-formed', async () => {
  const r = rng(19);
  const problems: string[] = [];
  let ok = 0;
  let refused = 0;
  for (let i = 0; i < 1500; i++) {
    const body = mutate(VALID[i % VALID.length], r);
    const url = i % 5 === 4 ? '/v1/messages/count_tokens' : '/v1/messages';
    const res = await app.inject({ method: 'POST', url, payload: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    const what = `${url} ${JSON.stringify(body).slice(0, 300)} -> ${res.statusCode} ${res.body.slice(0, 200)}`;
    if (res.statusCode >= 500) problems.push(what);
    else if (res.statusCode >= 400) {
      refused++;
      const b = res.json() as { type?: string; error?: { type?: unknown; message?: unknown } };
      if (b.type !== 'error' || typeof b.error?.type !== 'string' || typeof b.error.message !== 'string') problems.push(what);
    } else {
      ok++;
      if (url.endsWith('count_tokens')) {
        if (typeof res.json().input_tokens !== 'number') problems.push(what);
      } else if (res.headers['content-type']?.toString().startsWith('text/event-stream')) {
        if (!res.body.startsWith('event: message_start') || !res.body.trimEnd().endsWith('data: {"type":"message_stop"}')) problems.push(what);
      } else if (res.json().type !== 'message') problems.push(what);
    }
  }
  expect(problems.slice(0, 10)).toEqual([]);
  // Not vacuous: both outcomes happen often.
  expect(ok).toBeGreaterThan(100);
  expect(refused).toBeGreaterThan(300);
});
