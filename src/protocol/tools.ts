/**
 * Tool calls as a model writes them, and as OpenAI's wire format carries them.
 *
 * How a model writes a call is data (`ToolCallFormat`, in the model's config), not code per
 * model. The default is the Hermes/Qwen style their chat templates teach:
 *
 *     <tool_call>
 *     {"name": "get_weather", "arguments": {"city": "Paris"}}
 *     </tool_call>
 */
import { randomBytes } from 'node:crypto';

export interface ToolCallFormat {
  /** Written before each call's JSON object. */
  start: string;
  /** Written after it. */
  end: string;
  /** Between two calls of one reply (parallel tool calls). */
  separator: string;
  /** The keys of the call object holding the function's name and its arguments. */
  name_key: string;
  arguments_key: string;
}

export const HERMES_TOOL_FORMAT: ToolCallFormat = {
  start: '<tool_call>\n',
  end: '\n</tool_call>',
  separator: '\n',
  name_key: 'name',
  arguments_key: 'arguments',
};

/** Named formats `models add --tool-call-format` accepts besides a JSON object. */
export const TOOL_FORMATS: Record<string, ToolCallFormat> = {
  hermes: HERMES_TOOL_FORMAT,
  qwen: HERMES_TOOL_FORMAT,
};

/** Checks a stored or configured format; returns a message for what is wrong, or null. */
export function toolFormatProblem(v: unknown): string | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'a tool-call format must be a JSON object';
  const o = v as Record<string, unknown>;
  for (const key of ['start', 'end', 'separator', 'name_key', 'arguments_key'] as const) {
    if (typeof o[key] !== 'string') return `the tool-call format needs a string '${key}'`;
  }
  if (!(o.start as string).trim() || !(o.end as string).trim()) return "the tool-call format's 'start' and 'end' must not be blank";
  if (!o.name_key || !o.arguments_key || o.name_key === o.arguments_key) return "the tool-call format's 'name_key' and 'arguments_key' must be two different non-empty keys";
  return null;
}

export function readToolFormat(v: unknown): ToolCallFormat {
  if (v === null || v === undefined) return HERMES_TOOL_FORMAT;
  if (typeof v === 'string' && TOOL_FORMATS[v]) return TOOL_FORMATS[v]!;
  return toolFormatProblem(v) === null ? (v as ToolCallFormat) : HERMES_TOOL_FORMAT;
}

/** One call as the wire carries it. */
export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export const toolCallId = () => `call_${randomBytes(12).toString('hex')}`;

/** The call object between the markers: null when it is not a call (then it stays text). */
function readCall(json: string, f: ToolCallFormat): ToolCall | null {
  let v: unknown;
  try {
    v = JSON.parse(json.trim());
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const name = (v as Record<string, unknown>)[f.name_key];
  const args = (v as Record<string, unknown>)[f.arguments_key] ?? {};
  if (typeof name !== 'string' || !name) return null;
  return { id: toolCallId(), type: 'function', function: { name, arguments: typeof args === 'string' ? args : JSON.stringify(args) } };
}

export type ToolStreamEvent = { type: 'text'; text: string } | { type: 'call'; call: ToolCall };

/**
 * Splits generated text, as it streams, into plain text and tool calls. Text that may be the
 * beginning of a call's start marker is held back until it is clear; a call is reported once
 * its end marker (or the end of the text) arrives. Whitespace around calls is dropped.
 */
export class ToolCallParser {
  private readonly open: string;
  private readonly close: string;
  private buf = '';
  private inCall = false;
  private pendingSpace = '';
  calls = 0;

  constructor(private readonly format: ToolCallFormat = HERMES_TOOL_FORMAT) {
    this.open = format.start.trim();
    this.close = format.end.trim();
  }

  push(text: string): ToolStreamEvent[] {
    this.buf += text;
    const out: ToolStreamEvent[] = [];
    for (;;) {
      if (this.inCall) {
        const at = this.buf.indexOf(this.close);
        if (at < 0) break;
        const body = this.buf.slice(0, at);
        this.buf = this.buf.slice(at + this.close.length);
        this.inCall = false;
        this.emitCall(body, out);
        continue;
      }
      const at = this.buf.indexOf(this.open);
      if (at >= 0) {
        this.emitText(this.buf.slice(0, at), out, true);
        this.buf = this.buf.slice(at + this.open.length);
        this.inCall = true;
        continue;
      }
      // Keep what could still become the start marker.
      let keep = 0;
      for (let k = Math.min(this.open.length - 1, this.buf.length); k > 0; k--) {
        if (this.open.startsWith(this.buf.slice(this.buf.length - k))) {
          keep = k;
          break;
        }
      }
      this.emitText(this.buf.slice(0, this.buf.length - keep), out, false);
      this.buf = this.buf.slice(this.buf.length - keep);
      break;
    }
    return out;
  }

  /** The text is complete: what was held back, and a call left open by a length cut. */
  finish(): ToolStreamEvent[] {
    const out: ToolStreamEvent[] = [];
    if (this.inCall) {
      const call = readCall(this.buf, this.format);
      if (call) {
        this.calls++;
        out.push({ type: 'call', call });
      } else this.emitText(this.open + this.buf, out, false);
    } else this.emitText(this.buf, out, false);
    if (this.pendingSpace && this.calls === 0) out.push({ type: 'text', text: this.pendingSpace });
    this.buf = '';
    this.pendingSpace = '';
    return out;
  }

  private emitCall(body: string, out: ToolStreamEvent[]): void {
    const call = readCall(body, this.format);
    if (call) {
      this.calls++;
      this.pendingSpace = '';
      out.push({ type: 'call', call });
    } else this.emitText(this.open + body + this.close, out, false);
  }

  /** Whitespace is held until something other than a call follows it. */
  private emitText(text: string, out: ToolStreamEvent[], beforeCall: boolean): void {
    if (!text) return;
    if (!text.trim()) {
      if (!beforeCall) this.pendingSpace += text;
      else this.pendingSpace = '';
      return;
    }
    let t = this.pendingSpace + text;
    this.pendingSpace = '';
    if (beforeCall) t = t.trimEnd();
    else {
      const trimmed = t.trimEnd();
      this.pendingSpace = t.slice(trimmed.length);
      t = trimmed;
    }
    if (this.calls > 0 && !out.length) t = t.trimStart();
    if (t) out.push({ type: 'text', text: t });
  }
}

/** A whole reply: its text (null when it was only calls) and its calls. */
export function parseToolCalls(text: string, format: ToolCallFormat = HERMES_TOOL_FORMAT): { content: string | null; calls: ToolCall[] } {
  const p = new ToolCallParser(format);
  const events = [...p.push(text), ...p.finish()];
  const calls = events.flatMap((e) => (e.type === 'call' ? [e.call] : []));
  const content = events.flatMap((e) => (e.type === 'text' ? [e.text] : [])).join('');
  return { content: content || (calls.length ? null : ''), calls };
}
