import { describe, expect, it } from 'vitest';
import {
  parseChatCompletionRequest,
  toChatPrompt,
  toSamplingParams,
  type ChatCompletionRequest,
} from '../../src/protocol/chat.js';
import { ApiError } from '../../src/protocol/errors.js';
import { pointerToParam } from '../../src/protocol/validate.js';

const minimal = () => ({ model: 'tiny-chat', messages: [{ role: 'user', content: 'Hi' }] });

/** Calls `fn`, expecting an ApiError; returns it. */
function apiError(fn: () => unknown): ApiError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    return e as ApiError;
  }
  throw new Error('expected an ApiError, nothing was thrown');
}

/** Parses `{...minimal(), ...patch}` expecting a 400 on `param`; returns the error. */
function rejects(patch: Record<string, unknown>, param: string | null, code: string | null = null): ApiError {
  const err = apiError(() => parseChatCompletionRequest({ ...minimal(), ...patch }));
  expect(err.status).toBe(400);
  expect(err.type).toBe('invalid_request_error');
  expect(err.param).toBe(param);
  expect(err.code).toBe(code);
  return err;
}

describe('parseChatCompletionRequest: valid requests', () => {
  it('accepts a minimal request and returns it unchanged', () => {
    const body = minimal();
    expect(parseChatCompletionRequest(body)).toEqual(minimal());
  });

  it('accepts a request with every supported parameter', () => {
    const body = {
      model: 'tiny-chat',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'developer', content: [{ type: 'text', text: 'Dev note.' }] },
        { role: 'user', content: [{ type: 'text', text: 'Hello ' }, { type: 'text', text: 'there' }], name: 'ann' },
        { role: 'assistant', content: null },
        { role: 'assistant', content: 'Sure.' },
        { role: 'tool', content: '42', tool_call_id: 'call_1' },
      ],
      frequency_penalty: 0.5,
      logprobs: false,
      max_completion_tokens: 16,
      max_tokens: 32,
      metadata: { team: 'a', run: '7' },
      n: 3,
      presence_penalty: -2,
      response_format: { type: 'text' },
      seed: 9007199254740991,
      stop: ['\n', 'END'],
      store: true,
      stream: true,
      stream_options: { include_usage: true },
      temperature: 2,
      top_p: 1,
      user: 'user-1',
      chat_template: '{{ messages[0].content }}',
    };
    expect(parseChatCompletionRequest(structuredClone(body))).toEqual(body);
  });

  it('accepts null for every optional parameter', () => {
    const nulls = {
      frequency_penalty: null, logprobs: null, max_completion_tokens: null, max_tokens: null, metadata: null,
      n: null, presence_penalty: null, response_format: null, seed: null, stop: null, store: null, stream: null,
      stream_options: null, temperature: null, top_p: null, user: null, chat_template: null,
    };
    const body = { ...minimal(), ...nulls };
    expect(parseChatCompletionRequest(body)).toEqual(body);
  });

  it('accepts stop as a single string, boundary values and stream_options with stream', () => {
    expect(() => parseChatCompletionRequest({ ...minimal(), stop: 'END' })).not.toThrow();
    expect(() => parseChatCompletionRequest({ ...minimal(), temperature: 0, top_p: 0.01, n: 128, max_tokens: 1 })).not.toThrow();
    expect(() => parseChatCompletionRequest({ ...minimal(), frequency_penalty: -2, presence_penalty: 2 })).not.toThrow();
    expect(() => parseChatCompletionRequest({ ...minimal(), stream: true, stream_options: {} })).not.toThrow();
  });
});

describe('parseChatCompletionRequest: rejections name the param', () => {
  it('rejects a body that is not a JSON object', () => {
    for (const body of [null, undefined, 'hi', 42, true, [minimal()]]) {
      const err = apiError(() => parseChatCompletionRequest(body));
      expect(err.status).toBe(400);
      expect(err.type).toBe('invalid_request_error');
      expect(err.param).toBeNull();
    }
  });

  it('requires model and messages', () => {
    const noModel = apiError(() => parseChatCompletionRequest({ messages: minimal().messages }));
    expect([noModel.status, noModel.param]).toEqual([400, 'model']);
    const noMessages = apiError(() => parseChatCompletionRequest({ model: 'm' }));
    expect([noMessages.status, noMessages.param]).toEqual([400, 'messages']);
    expect(noMessages.message).toContain("'messages'");
    rejects({ model: '' }, 'model');
    rejects({ model: 5 }, 'model');
    rejects({ messages: [] }, 'messages');
    rejects({ messages: 'hi' }, 'messages');
  });

  it('names the message and field of a bad message', () => {
    const two = (second: Record<string, unknown>) => ({ messages: [{ role: 'user', content: 'a' }, second] });
    const err = rejects(two({ role: 'user', content: 5 }), 'messages[1].content');
    expect(err.message).toContain('messages[1].content');
    rejects(two({ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }), 'messages[1].content[0].type', 'unsupported_parameter');
    rejects(two({ role: 'user', content: [{ type: 'text', text: 7 }] }), 'messages[1].content[0].text');
    rejects(two({ role: 'robot', content: 'a' }), 'messages[1].role');
    rejects(two({ content: 'a' }), 'messages[1].role');
    rejects(two({ role: 'user', content: 'a', name: 3 }), 'messages[1].name');
    rejects(two({ role: 'user', content: 'a', extra: 1 }), 'messages[1].extra', 'unknown_parameter');
    rejects(two({ role: 'user' }), 'messages[1].content');
    rejects(two({ role: 'system', content: null }), 'messages[1].content');
    rejects(two({ role: 'tool', content: 'r' }), 'messages[1].tool_call_id');
  });

  it('rejects wrong types and out-of-range numbers', () => {
    rejects({ max_tokens: '5' }, 'max_tokens');
    rejects({ max_tokens: 0 }, 'max_tokens');
    rejects({ max_tokens: 1.5 }, 'max_tokens');
    rejects({ max_completion_tokens: -1 }, 'max_completion_tokens');
    rejects({ n: 0 }, 'n');
    rejects({ n: 129 }, 'n');
    rejects({ top_p: 0 }, 'top_p');
    rejects({ top_p: 1.01 }, 'top_p');
    rejects({ temperature: -0.1 }, 'temperature');
    rejects({ temperature: 2.5 }, 'temperature');
    rejects({ frequency_penalty: 2.1 }, 'frequency_penalty');
    rejects({ presence_penalty: -3 }, 'presence_penalty');
    rejects({ seed: 1.5 }, 'seed');
    rejects({ seed: 2 ** 60 }, 'seed');
    rejects({ stream: 'yes' }, 'stream');
    rejects({ metadata: { a: 1 } }, 'metadata.a');
    rejects({ user: 5 }, 'user');
  });

  it('rejects bad stop values', () => {
    const err = rejects({ stop: 5 }, 'stop');
    expect(err.message).toContain('up to 4 non-empty strings');
    rejects({ stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop');
    rejects({ stop: ['ok', ''] }, 'stop[1]');
    rejects({ stop: [1] }, 'stop[0]');
    rejects({ stop: '' }, 'stop');
  });

  it('rejects known OpenAI parameters it does not implement with code unsupported_parameter', () => {
    rejects({ functions: [{ name: 'f' }] }, 'functions', 'unsupported_parameter');
    rejects({ function_call: 'auto' }, 'function_call', 'unsupported_parameter');
    rejects({ logit_bias: { '1': 2 } }, 'logit_bias', 'unsupported_parameter');
    rejects({ top_logprobs: 2 }, 'top_logprobs'); // only with logprobs: true
    rejects({ logprobs: true, top_logprobs: 21 }, 'top_logprobs');
    // Structured outputs are supported (test/serving/tools.test.ts); schema keywords they cannot enforce are not.
    rejects({ response_format: { type: 'json_schema', json_schema: { name: 'n', schema: { type: 'string', pattern: 'a' } } } }, 'response_format', 'invalid_json_schema');
  });

  it('rejects unknown keys with code unknown_parameter', () => {
    const err = rejects({ max_tokenz: 5 }, 'max_tokenz', 'unknown_parameter');
    expect(err.message).toContain('max_tokenz');
  });

  it('rejects stream_options without stream', () => {
    rejects({ stream_options: { include_usage: true } }, 'stream_options');
    rejects({ stream: false, stream_options: { include_usage: true } }, 'stream_options');
  });

  it('renders the OpenAI error envelope', () => {
    const err = rejects({ n: 0 }, 'n');
    expect(err.toBody()).toEqual({ error: { message: err.message, type: 'invalid_request_error', param: 'n', code: null } });
  });
});

describe('toSamplingParams', () => {
  const req = (patch: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest =>
    ({ ...minimal(), ...patch }) as ChatCompletionRequest;

  it("uses OpenAI's defaults when neither request nor model sets a value", () => {
    expect(toSamplingParams(req())).toEqual({
      maxTokens: null,
      temperature: 1,
      topP: 1,
      n: 1,
      stop: [],
      seed: null,
      frequencyPenalty: 0,
      presencePenalty: 0,
      logprobs: null,
      echo: false,
      constraint: null,
    });
  });

  it('asks for logprobs only when logprobs is true, with top_logprobs alternatives', () => {
    expect(toSamplingParams(req({ logprobs: true })).logprobs).toBe(0);
    expect(toSamplingParams(req({ logprobs: true, top_logprobs: 5 })).logprobs).toBe(5);
    expect(toSamplingParams(req({ logprobs: false })).logprobs).toBeNull();
  });

  it('treats null like absent', () => {
    const nulls = req({ temperature: null, top_p: null, n: null, stop: null, seed: null, max_tokens: null, frequency_penalty: null, presence_penalty: null });
    expect(toSamplingParams(nulls)).toEqual(toSamplingParams(req()));
  });

  it('passes request values through, keeping 0 (not replacing it with a default)', () => {
    const p = toSamplingParams(
      req({ temperature: 0, top_p: 0.5, n: 4, stop: ['a', 'b'], seed: 0, max_tokens: 9, frequency_penalty: 0.3, presence_penalty: -0.2 }),
      { temperature: 0.7, frequency_penalty: 1 },
    );
    expect(p).toEqual({ maxTokens: 9, temperature: 0, topP: 0.5, n: 4, stop: ['a', 'b'], seed: 0, frequencyPenalty: 0.3, presencePenalty: -0.2, logprobs: null, echo: false, constraint: null });
  });

  it('wraps a single stop string in an array', () => {
    expect(toSamplingParams(req({ stop: 'END' })).stop).toEqual(['END']);
  });

  it('prefers max_completion_tokens over max_tokens', () => {
    expect(toSamplingParams(req({ max_completion_tokens: 5, max_tokens: 50 })).maxTokens).toBe(5);
    expect(toSamplingParams(req({ max_tokens: 50 })).maxTokens).toBe(50);
    expect(toSamplingParams(req({ max_completion_tokens: null, max_tokens: 50 })).maxTokens).toBe(50);
  });

  it('uses model defaults for what the request leaves out', () => {
    const defaults = { temperature: 0.2, top_p: 0.9, n: 2, stop: '<end>', max_tokens: 64, frequency_penalty: 0.1, presence_penalty: 0.4 };
    expect(toSamplingParams(req(), defaults)).toEqual({
      maxTokens: 64, temperature: 0.2, topP: 0.9, n: 2, stop: ['<end>'], seed: null, frequencyPenalty: 0.1, presencePenalty: 0.4, logprobs: null, echo: false, constraint: null,
    });
    const p = toSamplingParams(req({ temperature: 1.5, stop: ['x'], max_completion_tokens: 3 }), defaults);
    expect([p.temperature, p.stop, p.maxTokens, p.topP]).toEqual([1.5, ['x'], 3, 0.9]);
  });
});

describe('toChatPrompt', () => {
  it('joins text parts, keeps name and tool_call_id, and maps null content to ""', () => {
    const r = parseChatCompletionRequest({
      model: 'm',
      messages: [
        { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }], name: 'n' },
        { role: 'assistant', content: null },
        { role: 'tool', content: 'r', tool_call_id: 'c1' },
      ],
      chat_template: 'T',
    });
    expect(toChatPrompt(r)).toEqual({
      messages: [
        { role: 'user', content: 'ab', name: 'n' },
        { role: 'assistant', content: '' },
        { role: 'tool', content: 'r', tool_call_id: 'c1' },
      ],
      chatTemplate: 'T',
    });
    expect(toChatPrompt(parseChatCompletionRequest(minimal())).chatTemplate).toBeNull();
  });
});

describe('pointerToParam', () => {
  it('turns JSON pointers into OpenAI param names', () => {
    expect(pointerToParam('')).toBe('');
    expect(pointerToParam('/max_tokens')).toBe('max_tokens');
    expect(pointerToParam('/messages/0/content')).toBe('messages[0].content');
    expect(pointerToParam('/messages/12/content/3/text')).toBe('messages[12].content[3].text');
    expect(pointerToParam('/stop/1')).toBe('stop[1]');
  });

  it('appends an extra property name', () => {
    expect(pointerToParam('', 'tools')).toBe('tools');
    expect(pointerToParam('/messages/1', 'extra')).toBe('messages[1].extra');
    expect(pointerToParam('/stop', '0')).toBe('stop[0]');
  });

  it('unescapes ~1 and ~0', () => {
    expect(pointerToParam('/metadata/a~1b')).toBe('metadata.a/b');
    expect(pointerToParam('/metadata/a~0b')).toBe('metadata.a~b');
    expect(pointerToParam('/metadata/~01')).toBe('metadata.~1');
  });
});
