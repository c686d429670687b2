/**
 * How a chat model marks its reasoning (model data, like the tool-call format): the text between
 * `start` and `end` is `reasoning_content`, the rest `content`. `opened_by_prompt`: the chat
 * template itself opens the section (DeepSeek-R1's and QwQ's end the generation prompt with
 * `<think>\n`), so the output begins inside it and only `end` appears; otherwise (Qwen3) a reply
 * may open it with `start`, and one that does not is all content.
 */
export interface ReasoningFormat {
  start: string;
  end: string;
  opened_by_prompt: boolean;
}

/** Named formats `models add --reasoning-format` accepts besides a JSON object. */
export const REASONING_FORMATS: Record<string, ReasoningFormat> = {
  think: { start: '<think>', end: '</think>', opened_by_prompt: false },
  'think-open': { start: '<think>', end: '</think>', opened_by_prompt: true },
};

export function reasoningFormatProblem(v: unknown): string | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'a reasoning format must be a JSON object';
  const o = v as Record<string, unknown>;
  if (typeof o.start !== 'string' || !o.start.trim()) return "the reasoning format needs a non-blank string 'start'";
  if (typeof o.end !== 'string' || !o.end.trim()) return "the reasoning format needs a non-blank string 'end'";
  if (typeof o.opened_by_prompt !== 'boolean') return "the reasoning format needs a boolean 'opened_by_prompt'";
  return null;
}

/** A stored format (null: the model does not reason, all output is content). */
export function readReasoningFormat(v: unknown): ReasoningFormat | null {
  if (v === null || v === undefined) return null;
  if (typeof v === 'string') return REASONING_FORMATS[v] ?? null;
  return reasoningFormatProblem(v) === null ? (v as ReasoningFormat) : null;
}

/** Pieces of text as they stream, split into reasoning and content. */
export interface ReasoningSplit {
  reasoning: string;
  content: string;
}

/**
 * Splits streamed text at the format's markers. Text that might be the beginning of a marker is
 * held back until the next piece tells (a marker split across tokens); content that follows the
 * section starts after its leading whitespace (templates put a blank line after `end`).
 */
export class ReasoningParser {
  private state: 'start' | 'reasoning' | 'content';
  private buf = '';
  private trimContent = false;

  constructor(private readonly format: ReasoningFormat) {
    this.state = format.opened_by_prompt ? 'reasoning' : 'start';
  }

  get inReasoning(): boolean {
    return this.state === 'reasoning';
  }

  push(text: string): ReasoningSplit {
    const out: ReasoningSplit = { reasoning: '', content: '' };
    this.buf += text;
    for (;;) {
      if (this.state === 'start') {
        const s = this.buf.trimStart();
        if (s.startsWith(this.format.start)) {
          this.state = 'reasoning';
          this.buf = s.slice(this.format.start.length);
          continue;
        }
        if (this.format.start.startsWith(s)) return out;
        this.state = 'content';
        continue;
      }
      if (this.state === 'reasoning') {
        const i = this.buf.indexOf(this.format.end);
        if (i >= 0) {
          out.reasoning += this.buf.slice(0, i);
          this.buf = this.buf.slice(i + this.format.end.length);
          this.state = 'content';
          this.trimContent = true;
          continue;
        }
        const keep = heldBack(this.buf, this.format.end);
        out.reasoning += this.buf.slice(0, this.buf.length - keep);
        this.buf = this.buf.slice(this.buf.length - keep);
        return out;
      }
      if (this.trimContent) {
        this.buf = this.buf.trimStart();
        if (!this.buf) return out;
        this.trimContent = false;
      }
      out.content += this.buf;
      this.buf = '';
      return out;
    }
  }

  /** The end of the text: whatever was held back is what it seemed to be. */
  finish(): ReasoningSplit {
    const rest = this.buf;
    this.buf = '';
    if (this.state === 'reasoning') return { reasoning: rest, content: '' };
    return { reasoning: '', content: this.trimContent ? rest.trimStart() : rest };
  }
}

/** How many characters at the end of `text` could begin `marker`. */
function heldBack(text: string, marker: string): number {
  for (let n = Math.min(marker.length - 1, text.length); n > 0; n--) if (marker.startsWith(text.slice(text.length - n))) return n;
  return 0;
}

/** A whole text: its reasoning (null when it has none) and content. */
export function splitReasoning(text: string, format: ReasoningFormat): { reasoning: string | null; content: string } {
  const p = new ReasoningParser(format);
  const a = p.push(text);
  const b = p.finish();
  const reasoning = a.reasoning + b.reasoning;
  const opened = format.opened_by_prompt || reasoning.length > 0 || text.trimStart().startsWith(format.start);
  return { reasoning: opened ? reasoning : null, content: a.content + b.content };
}
