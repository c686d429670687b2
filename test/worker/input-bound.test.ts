import type { PreTrainedTokenizer } from '@huggingface/transformers';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkEmbeddingInputs, checkGeneration, needsMoreThan, overflowAt } from '../../src/protocol/limits.js';
import { inputBoundOf, wordPieceShortener } from '../../src/worker/input-bound.js';
import { loadTokenizer } from './constrain/helpers.js';

/**
 * The cheap "cannot fit" rule against the real tokenizers of the fixtures: it may only refuse a
 * text the tokenizer would make longer than the budget (sound), and it must refuse a 6 MiB word
 * in milliseconds (a byte-level BPE tokenizer takes about 40 s to find that out).
 */
let bpe: PreTrainedTokenizer;
let wordpiece: PreTrainedTokenizer;

beforeAll(async () => {
  bpe = await loadTokenizer('tiny-chat');
  wordpiece = await loadTokenizer('tiny-embed');
});

/** Texts chosen to be cheap in tokens: long tokens repeated, blanks, marks, unknown words. */
function adversarial(seed: number): string[] {
  let s = seed;
  const rand = (n: number) => ((s = (s * 1103515245 + 12345) % 2 ** 31), s % n);
  const pieces = [' ', '    ', '\n\n', '\u3000', '\ufeff', 'İ', '中文', '=', '!?', '©', 'the', ' the', 'ing', '=', '================', '----', 'e\u0301', '\u0301', '\u200b', '\u1100\u1161', '名前', '𝄞', '12345', 'abc', '\t', 'ﬁ', '<|im_start|>', '[CLS]', 'x'.repeat(150)];
  return Array.from({ length: 40 }, () => Array.from({ length: 1 + rand(400) }, () => pieces[rand(pieces.length)]).join(''));
}

describe('input bounds', () => {
  it('knows a rule for byte-level BPE (chars) and WordPiece (words)', () => {
    expect(inputBoundOf(bpe, 2048)).toMatchObject({ kind: 'chars', contextLength: 2048, blanks: true });
    expect(inputBoundOf(wordpiece, 512)).toMatchObject({ kind: 'words', contextLength: 512, punctuation: true });
  });

  it('never refuses a text that would fit (checked against the tokenizers)', () => {
    for (const tok of [bpe, wordpiece]) {
      const bound = inputBoundOf(tok, 2048)!;
      for (const text of adversarial(tok === bpe ? 1 : 2)) {
        const tokens = tok.encode(text, { add_special_tokens: false }).length;
        // The tightest budget the rule refuses must be below the real count.
        let refused = -1;
        for (let budget = tokens; budget >= 0 && needsMoreThan([text], bound, budget); budget--) refused = budget;
        if (refused !== -1) expect(refused, JSON.stringify(text.slice(0, 80))).toBeLessThan(tokens);
        expect(needsMoreThan([text], bound, tokens), JSON.stringify(text.slice(0, 80))).toBe(false);
      }
    }
  });

  it('refuses a 6 MiB word, in milliseconds', () => {
    const word = 'a'.repeat(6 * 1024 * 1024);
    const bound = inputBoundOf(bpe, 2048)!;
    const t0 = performance.now();
    expect(needsMoreThan([word], bound, 2047)).toBe(true);
    // Blanks count for a tokenizer without a normalizer: 6 MiB of spaces takes it minutes, too.
    expect(needsMoreThan([' '.repeat(6 * 1024 * 1024)], bound, 2047)).toBe(true);
    // So do combining marks: 6 MiB of U+0301 overflows the tokenizer's stack (a 500, once).
    expect(bound.raw).toBe(true);
    expect(needsMoreThan(['\u0301'.repeat(6 * 1024 * 1024)], bound, 2047)).toBe(true);
    expect(performance.now() - t0).toBeLessThan(500);
    // WordPiece makes one [UNK] of it: that fits, and the rule says so.
    expect(needsMoreThan([word], inputBoundOf(wordpiece, 512)!, 511)).toBe(false);
    expect(needsMoreThan(['hello world '.repeat(600)], inputBoundOf(wordpiece, 512)!, 511)).toBe(true);
  });

  it('WordPiece: each punctuation mark is a token (6 MiB of "=" is refused), and a huge text that fits is shortened to one that tokenizes the same', () => {
    const bound = inputBoundOf(wordpiece, 512)!;
    expect(needsMoreThan(['='.repeat(6 * 1024 * 1024)], bound, 511)).toBe(true);
    const shorten = wordPieceShortener(wordpiece)!;
    for (const text of [...adversarial(3), 'a'.repeat(6 * 1024 * 1024), ' '.repeat(1 << 20), `go ${'é'.repeat(5000)}x ${'𝔘'.repeat(3000)} ok`, `${'ab'.repeat(300)}中${'cd'.repeat(300)}`]) {
      const t0 = performance.now();
      const short = shorten(text);
      expect(performance.now() - t0).toBeLessThan(1000);
      expect(short.length).toBeLessThanOrEqual(text.length);
      expect(wordpiece.encode(short), JSON.stringify(text.slice(0, 80))).toEqual(wordpiece.encode(text));
    }
    expect(shorten('a'.repeat(6 * 1024 * 1024)).length).toBeLessThan(300);
    expect(wordPieceShortener(bpe)).toBeNull();
  });

  it('texts are counted together, and overflowAt says where the budget ran out', () => {
    const bound = { kind: 'chars' as const, contextLength: 10, tokenChars: 2 };
    expect(needsMoreThan(['abcdefghij', 'abcdefghij'], bound, 10)).toBe(false);
    expect(overflowAt(['abcdefghij', 'abcdefghij', 'k'], bound, 10)).toEqual([2, 0]);
    // Blanks and combining marks are not counted (a normalizer may drop or fuse them).
    expect(needsMoreThan([' \u0301'.repeat(1000)], bound, 0)).toBe(false);
    expect(needsMoreThan([' \u0301'.repeat(1000)], { ...bound, blanks: true }, 10)).toBe(true);
    // An astral character is one character, and the prefix never ends inside it.
    expect(overflowAt(['𝄞𝄞𝄞'], bound, 1)).toEqual([0, 4]);
    // Without a normalizer every character counts, marks and controls too.
    const raw = { ...bound, raw: true };
    expect(needsMoreThan([' \u0301'.repeat(1000)], raw, 999)).toBe(true);
    expect(needsMoreThan(['\u0301'.repeat(20)], raw, 10)).toBe(false);
    expect(overflowAt(['abc', '\u0301\u0301\u0301'], raw, 2)).toEqual([1, 1]);
    expect(overflowAt(['𝄞𝄞𝄞'], raw, 1)).toEqual([0, 2]);
    expect(overflowAt(['a𝄞𝄞'], raw, 1)).toEqual([0, 1]);
  });

  it('the gateway refuses what does not fit, naming the param', () => {
    const bound = { kind: 'chars' as const, contextLength: 100, tokenChars: 4 };
    const refuse = (fn: () => void) => {
      try {
        fn();
      } catch (err) {
        return err as { status: number; code: string; param: string };
      }
      throw new Error('not refused');
    };
    expect(refuse(() => checkGeneration({ texts: ['x'.repeat(401)] }, { n: 1, maxTokens: null }, bound, 65_536, 'messages'))).toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'messages' });
    expect(refuse(() => checkGeneration({ tokens: 50 }, { n: 1, maxTokens: 60 }, bound, 65_536, 'prompt'))).toMatchObject({ code: 'context_length_exceeded', param: 'prompt' });
    expect(refuse(() => checkGeneration({ tokens: 5 }, { n: 128, maxTokens: 600 }, null, 65_536, 'prompt'))).toMatchObject({ status: 400, code: 'invalid_value', param: 'n' });
    expect(refuse(() => checkGeneration({ texts: ['hi'] }, { n: 1, maxTokens: 70_000 }, null, 65_536, 'messages'))).toMatchObject({ code: 'invalid_value', param: 'max_tokens' });
    expect(() => checkGeneration({ texts: ['x'.repeat(300)] }, { n: 16, maxTokens: 20 }, bound, 65_536, 'messages')).not.toThrow();
    expect(refuse(() => checkEmbeddingInputs(['ok', 'y'.repeat(401)], bound, false))).toMatchObject({ code: 'context_length_exceeded', param: 'input' });
    expect(() => checkEmbeddingInputs(['y'.repeat(401)], bound, true)).not.toThrow();
  });
});
