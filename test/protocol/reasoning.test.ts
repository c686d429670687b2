import { describe, expect, it } from 'vitest';
import { ReasoningParser, REASONING_FORMATS, splitReasoning, readReasoningFormat, reasoningFormatProblem } from '../../src/protocol/reasoning.js';

const think = REASONING_FORMATS.think!;
const open = REASONING_FORMATS['think-open']!;

/** Feeds `text` in every split into pieces of `size` characters and joins what comes out. */
function streamed(text: string, format: typeof think, size: number) {
  const p = new ReasoningParser(format);
  let reasoning = '';
  let content = '';
  for (let i = 0; i < text.length; i += size) {
    const s = p.push(text.slice(i, i + size));
    reasoning += s.reasoning;
    content += s.content;
  }
  const s = p.finish();
  return { reasoning: reasoning + s.reasoning, content: content + s.content };
}

describe('reasoning split', () => {
  const cases: [typeof think, string, string | null, string][] = [
    [think, '<think>plan a</think>\n\nanswer', 'plan a', 'answer'],
    [think, '  <think>x</think>y', 'x', 'y'],
    [think, 'no thinking here', null, 'no thinking here'],
    [think, '<thin', null, '<thin'],
    [think, '<think>cut off mid-thought </thi', 'cut off mid-thought </thi', ''],
    [open, 'plan</think>\nanswer </think> more', 'plan', 'answer </think> more'],
    [open, 'all reasoning', 'all reasoning', ''],
    [open, '</think>answer', '', 'answer'],
  ];
  it('whole texts and every streaming split agree', () => {
    for (const [format, text, reasoning, content] of cases) {
      expect(splitReasoning(text, format), text).toEqual({ reasoning, content });
      for (const size of [1, 2, 3, 5, 100]) {
        expect(streamed(text, format, size), `${text} / ${size}`).toEqual({ reasoning: reasoning ?? '', content });
      }
    }
  });

  it('formats are checked as data', () => {
    expect(readReasoningFormat('think')).toEqual(think);
    expect(readReasoningFormat(null)).toBeNull();
    expect(readReasoningFormat({ start: '<r>', end: '</r>', opened_by_prompt: true })).toEqual({ start: '<r>', end: '</r>', opened_by_prompt: true });
    expect(reasoningFormatProblem({ start: '<r>', end: ' ', opened_by_prompt: true })).toMatch(/end/);
    expect(reasoningFormatProblem({ start: '<r>', end: '</r>' })).toMatch(/opened_by_prompt/);
    expect(reasoningFormatProblem([])).not.toBeNull();
  });
});
