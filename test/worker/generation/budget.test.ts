import { describe, expect, it } from 'vitest';
import { checkBudget, type ChatModel } from '../../../src/worker/generation/generate.js';
import { ThreadError } from '../../../src/worker/generation/thread-error.js';

/** The memory check every generation passes before it is admitted (scheduler.ts). */
const m = { contextLength: 2048 } as ChatModel;

const refusal = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    return (err as ThreadError).body;
  }
  throw new Error('not refused');
};

describe('checkBudget', () => {
  it('n × (prompt + max_tokens) over the budget is a 400 naming n (or max_tokens, or the prompt, when n is 1)', () => {
    expect(refusal(() => checkBudget(m, 60, { n: 34, maxTokens: 1900 }, 65_536))).toMatchObject({ code: 'invalid_value', param: 'n' });
    expect(refusal(() => checkBudget(m, 60, { n: 1, maxTokens: 1900 }, 1000))).toMatchObject({ code: 'invalid_value', param: 'max_tokens' });
    expect(refusal(() => checkBudget(m, 1200, { n: 1, maxTokens: null }, 1000))).toMatchObject({ code: 'invalid_value', param: 'messages' });
    expect(checkBudget(m, 60, { n: 33, maxTokens: 1900 }, 65_536)).toBe(1900);
  });

  it('without max_tokens a choice runs to the context end or to its share of the budget, whichever comes first', () => {
    expect(checkBudget(m, 48, { n: 1, maxTokens: null }, 65_536)).toBe(2000);
    expect(checkBudget(m, 48, { n: 128, maxTokens: null }, 65_536)).toBe(512 - 48);
    expect(refusal(() => checkBudget(m, 600, { n: 128, maxTokens: null }, 65_536))).toMatchObject({ param: 'n' });
  });

  it('the context check comes first', () => {
    expect(refusal(() => checkBudget(m, 2000, { n: 1, maxTokens: 100 }, 65_536))).toMatchObject({ code: 'context_length_exceeded' });
  });
});
