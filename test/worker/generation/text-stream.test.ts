import { AutoTokenizer, env, type PreTrainedTokenizer } from '@huggingface/transformers';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureFixtureModels } from '../../../fixtures/models/index.mjs';
import { TextStream } from '../../../src/worker/generation/text-stream.js';

const utf8 = new TextEncoder();

/**
 * A fake byte-level tokenizer: each id is a byte sequence; decoding concatenates the bytes and
 * decodes them as UTF-8, so an id holding part of a multi-byte character decodes to '\uFFFD'
 * until the id that completes it arrives (as with real byte-level BPE).
 */
function fakeTokenizer(pieces: (string | number[])[]) {
  const bytes = pieces.map((p) => (typeof p === 'string' ? utf8.encode(p) : Uint8Array.from(p)));
  const calls: number[][] = [];
  const decode = (ids: number[]): string => {
    calls.push([...ids]);
    const out: number[] = [];
    for (const id of ids) out.push(...bytes[id]!);
    return new TextDecoder().decode(Uint8Array.from(out));
  };
  return { decode, calls };
}

/** A tokenizer where every piece is a plain string; `ids` pushes those pieces in order. */
function run(pieces: string[], stop: string[]) {
  const { decode } = fakeTokenizer(pieces);
  const stream = new TextStream(decode, stop);
  const deltas = pieces.map((_, id) => stream.push(id));
  return { stream, deltas };
}

// "😀" is F0 9F 98 80; "é" is C3 A9.
const GRIN = [0xf0, 0x9f, 0x98, 0x80];

describe('TextStream without stop strings', () => {
  it('emits deltas whose concatenation is the full text', () => {
    const pieces = ['Hello', ',', ' wor', 'ld', '!', ' ', 'ok'];
    const { stream, deltas } = run(pieces, []);
    expect(deltas).toEqual(pieces);
    expect(stream.finish()).toBe('');
    expect(stream.text).toBe('Hello, world! ok');
    expect(stream.stopped).toBe(false);
  });

  it('holds back an incomplete UTF-8 sequence until the id that completes it', () => {
    const { decode } = fakeTokenizer(['hi ', GRIN.slice(0, 2), GRIN.slice(2), [0xc3], [0xa9, 0x21], ' ', GRIN.slice(0, 1), GRIN.slice(1, 3), GRIN.slice(3)]);
    const stream = new TextStream(decode, []);
    const deltas = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((id) => stream.push(id));
    expect(deltas).toEqual(['hi ', '', '😀', '', 'é!', ' ', '', '', '😀']);
    expect(deltas.join('')).toBe('hi 😀é! 😀');
    expect(stream.text).toBe('hi 😀é! 😀');
    expect(deltas.some((d) => d.includes('\uFFFD'))).toBe(false);
  });

  it('a piece that completes one character and starts the next is emitted when the second completes', () => {
    // [F0 9F] [98 80 F0 9F] [98 80]: the middle id ends in an incomplete character
    const { decode } = fakeTokenizer([GRIN.slice(0, 2), [...GRIN.slice(2), ...GRIN.slice(0, 2)], GRIN.slice(2), 'x']);
    const stream = new TextStream(decode, []);
    const deltas = [0, 1, 2, 3].map((id) => stream.push(id));
    expect(deltas.join('')).toBe('😀😀x');
    expect(deltas[3]).toBe('x');
    expect(deltas.some((d) => d.includes('\uFFFD'))).toBe(false);
  });

  it('decodes a bounded window, not the whole output, per token', () => {
    const pieces = Array.from({ length: 200 }, (_, i) => `w${i} `);
    const { decode, calls } = fakeTokenizer(pieces);
    const stream = new TextStream(decode, []);
    const out = pieces.map((_, id) => stream.push(id)).join('');
    expect(out).toBe(pieces.join(''));
    expect(Math.max(...calls.map((c) => c.length))).toBeLessThanOrEqual(3);
  });

  it('an id that decodes to nothing (a skipped special token) emits nothing and breaks nothing', () => {
    const { stream, deltas } = run(['a', '', 'b'], []);
    expect(deltas).toEqual(['a', '', 'b']);
    expect(stream.text).toBe('ab');
  });
});

describe('TextStream with stop strings', () => {
  it('cuts the text before a stop string that spans several tokens and sets stopped', () => {
    const { stream, deltas } = run(['Hello', ' S', 'TO', 'P!', ' more'], ['STOP']);
    expect(deltas).toEqual(['Hello', ' ', '', '', '']);
    expect(stream.stopped).toBe(true);
    expect(stream.text).toBe('Hello ');
  });

  it('cuts a stop string that starts and ends inside tokens', () => {
    const { stream, deltas } = run(['abc<', 'e', 'nd>xyz'], ['<end>']);
    expect(deltas.join('')).toBe('abc');
    expect(stream.text).toBe('abc');
    expect(stream.stopped).toBe(true);
  });

  it('cuts a stop string found within a single token', () => {
    const { stream, deltas } = run(['one two', ' three\n\nfour', 'five'], ['\n\n']);
    expect(deltas).toEqual(['one two', ' three', '']);
    expect(stream.text).toBe('one two three');
    expect(stream.stopped).toBe(true);
  });

  it('stops at once when the stop string is the first text', () => {
    const { stream, deltas } = run(['STOP', 'x'], ['STOP']);
    expect(deltas).toEqual(['', '']);
    expect(stream.text).toBe('');
    expect(stream.stopped).toBe(true);
  });

  it('holds back a prefix of a stop string and releases it through finish() when generation ends', () => {
    const { decode } = fakeTokenizer(['Hello', ' ST', 'O']);
    const stream = new TextStream(decode, ['STOP']);
    expect(stream.push(0)).toBe('Hello');
    expect(stream.push(1)).toBe(' ');
    expect(stream.push(2)).toBe('');
    expect(stream.text).toBe('Hello ');
    expect(stream.finish()).toBe('STO');
    expect(stream.text).toBe('Hello STO');
    expect(stream.stopped).toBe(false);
    expect(stream.finish()).toBe('');
  });

  it('releases a held-back prefix as soon as the text diverges from the stop string', () => {
    const { stream, deltas } = run(['x ST', 'AR', ' S', 'TOP'], ['STOP']);
    expect(deltas).toEqual(['x ', 'STAR', ' ', '']);
    expect(stream.text).toBe('x STAR ');
    expect(stream.stopped).toBe(true);
  });

  it('holds back the longest suffix that could still become a stop string (overlapping prefixes)', () => {
    const { stream, deltas } = run(['a', 'a', 'a', 'b', 'c'], ['aab']);
    expect(deltas).toEqual(['', '', 'a', '', '']);
    expect(stream.text).toBe('a');
    expect(stream.stopped).toBe(true);
  });

  it('the earliest of several stop strings wins, whatever their order in the list', () => {
    for (const stop of [['world', 'lo, w'], ['lo, w', 'world']]) {
      const { stream, deltas } = run(['Hello, world', '!'], stop);
      expect(deltas.join('')).toBe('Hel');
      expect(stream.text).toBe('Hel');
      expect(stream.stopped).toBe(true);
    }
  });

  it('the first stop string to appear wins when stops complete in different tokens', () => {
    const { stream } = run(['a', 'b', 'X', 'c', 'Y'], ['cY', 'bX']);
    expect(stream.text).toBe('a');
    expect(stream.stopped).toBe(true);
  });

  it('emits nothing after stopping: push and finish return "" and the text does not change', () => {
    const { decode } = fakeTokenizer(['keep', ' END', ' after', 'more']);
    const stream = new TextStream(decode, ['END']);
    expect(stream.push(0)).toBe('keep');
    expect(stream.push(1)).toBe(' ');
    expect(stream.stopped).toBe(true);
    expect(stream.push(2)).toBe('');
    expect(stream.push(3)).toBe('');
    expect(stream.finish()).toBe('');
    expect(stream.text).toBe('keep ');
  });

  it('matches a multi-byte stop string arriving as partial UTF-8 pieces', () => {
    const { decode } = fakeTokenizer(['hi ', GRIN.slice(0, 2), GRIN.slice(2), 'after']);
    const stream = new TextStream(decode, ['😀']);
    const deltas = [0, 1, 2, 3].map((id) => stream.push(id));
    expect(deltas.join('')).toBe('hi ');
    expect(stream.text).toBe('hi ');
    expect(stream.stopped).toBe(true);
  });

  it('concatenated deltas plus finish() always equal stream.text', () => {
    const pieces = ['The', ' en', 'd is', ' ne', 'ar', ' e', 'n'];
    const { decode } = fakeTokenizer(pieces);
    const stream = new TextStream(decode, ['end.', 'e\n']);
    let out = pieces.map((_, id) => stream.push(id)).join('');
    out += stream.finish();
    expect(out).toBe('The end is near en');
    expect(stream.text).toBe(out);
  });
});

describe('TextStream with the SmolLM2 tokenizer', () => {
  let tokenizer: PreTrainedTokenizer;
  const decode = (ids: number[]) => (ids.length ? tokenizer.decode(ids, { skip_special_tokens: true }) : '');

  beforeAll(async () => {
    const { dir } = await ensureFixtureModels();
    env.localModelPath = dir + '/';
    env.allowRemoteModels = false;
    tokenizer = await AutoTokenizer.from_pretrained('tiny-chat');
  });

  const SAMPLE = 'Grüße, 世界! 👋🏽 Привет — naïve café 😀🎉 ∑x² 日本語のテキスト 🇯🇵 done.';

  it('pushing the ids one by one yields exactly the decoded text', () => {
    const ids = tokenizer.encode(SAMPLE, { add_special_tokens: false });
    expect(decode(ids)).toBe(SAMPLE);
    const stream = new TextStream(decode, []);
    const deltas = ids.map((id) => stream.push(id));
    deltas.push(stream.finish());
    expect(deltas.join('')).toBe(SAMPLE);
    expect(stream.text).toBe(SAMPLE);
    expect(deltas.some((d) => d.includes('\uFFFD'))).toBe(false);
    // the sample does split characters across ids, so holding back was exercised
    expect(ids.some((_, i) => decode(ids.slice(0, i + 1)).endsWith('\uFFFD'))).toBe(true);
  });

  it('applies a multilingual stop string to the real tokens', () => {
    const ids = tokenizer.encode(SAMPLE, { add_special_tokens: false });
    const stream = new TextStream(decode, ['😀🎉']);
    const out = ids.map((id) => stream.push(id)).join('');
    expect(stream.stopped).toBe(true);
    expect(out).toBe(SAMPLE.slice(0, SAMPLE.indexOf('😀🎉')));
    expect(stream.text).toBe(out);
  });
});
