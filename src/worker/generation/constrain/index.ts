/**
 * Constrained decoding: the decoder may only emit tokens that keep the output a valid prefix of
 * what was asked for (a JSON value of a schema, any JSON object, or tool calls in the model's
 * format), and the value is complete when the sequence ends.
 *
 * Per step, `choose` first lets the sampler draw from the unconstrained distribution and keeps
 * the draw when it is allowed (exact for greedy and for top_p = 1: P(x | allowed) ∝ p(x)); only
 * otherwise does it build the mask, walking the vocabulary sorted by text so that a dead prefix
 * skips every token that starts with it. Inside a JSON string, every token made of plain
 * characters is allowed at once (a precomputed class).
 */
import type { PreTrainedTokenizer } from '@huggingface/transformers';
import type { ConstraintSpec } from '../../../protocol/chat.js';
import { advance, advanceText, initialState, isComplete, isDone, minClose, type Node, type State } from './grammar.js';
import { createHash } from 'node:crypto';
import { ANY_OBJECT, compileSchema, finish, jsonLiteral, lit, objectNode, schemaBudget } from './schema.js';
import { ThreadError } from '../thread-error.js';

export { SchemaError, checkSchema, SCHEMA_LIMITS } from './schema.js';
import { AfterReasoning } from './reasoning.js';

export type { ConstraintSpec };

export interface TokenConstraint {
  /** Picks the next token among those that keep the output a valid prefix (see the module comment). */
  choose(logits: Float32Array, draw: (logits: Float32Array) => number): number;
  /** Advance past the emitted token (always the one choose() returned). */
  accept(token: number): void;
  /** The value is complete: the loop ends this sequence at once (finish_reason 'stop'). */
  readonly done: boolean;
}

export interface Vocabulary {
  /** Token ids the tokenizer knows (logit rows may be longer: the rest is never allowed). */
  size: number;
  /** Each token's text; '' for tokens never allowed (special tokens, partial UTF-8). */
  texts: string[];
  eos: number[];
  /** Usable ids sorted by text, and each one's common prefix length with the one before. */
  sorted: Int32Array;
  lcp: Int32Array;
  longest: number;
  /** Usable tokens without `"`, `\` or control characters: inside a string they change nothing. */
  plain: Int32Array;
  /** Usable tokens with some of those. */
  special: Int32Array;
}

const vocabularies = new WeakMap<object, Vocabulary>();

/** Built once per tokenizer (about 0.2 s for 49k tokens). */
export function vocabularyOf(tokenizer: PreTrainedTokenizer, eosIds?: Iterable<number>): Vocabulary {
  const hit = vocabularies.get(tokenizer);
  if (hit) return hit;
  let size = 0;
  for (const id of tokenizer.get_vocab().values()) size = Math.max(size, id + 1);
  const specialIds = new Set(tokenizer.all_special_ids ?? []);
  const texts: string[] = new Array(size);
  const usable: number[] = [];
  const plain: number[] = [];
  const special: number[] = [];
  for (let id = 0; id < size; id++) {
    const text = specialIds.has(id) ? '' : tokenizer.decode([id], { skip_special_tokens: false });
    // U+FFFD: a piece of a multi-byte character, which would decode differently in context.
    const ok = text.length > 0 && !text.includes('\uFFFD');
    texts[id] = ok ? text : '';
    if (!ok) continue;
    usable.push(id);
    if (/["\\\u0000-\u001f]/.test(text)) special.push(id);
    else plain.push(id);
  }
  usable.sort((a, b) => (texts[a]! < texts[b]! ? -1 : texts[a]! > texts[b]! ? 1 : a - b));
  const lcp = new Int32Array(usable.length);
  let longest = 0;
  for (let i = 0; i < usable.length; i++) {
    const t = texts[usable[i]!]!;
    longest = Math.max(longest, t.length);
    if (i === 0) continue;
    const p = texts[usable[i - 1]!]!;
    let k = 0;
    while (k < t.length && k < p.length && t[k] === p[k]) k++;
    lcp[i] = k;
  }
  const eos = new Set<number>(eosIds ?? []);
  if (typeof tokenizer.eos_token_id === 'number') eos.add(tokenizer.eos_token_id);
  const vocab: Vocabulary = {
    size,
    texts,
    eos: [...eos],
    sorted: Int32Array.from(usable),
    lcp,
    longest,
    plain: Int32Array.from(plain),
    special: Int32Array.from(special),
  };
  vocabularies.set(tokenizer, vocab);
  return vocab;
}

/**
 * Compiled grammars by a digest of the spec (without the per-request fields): schemas repeat
 * across requests, and a key of 32 bytes instead of the schema's text keeps the cache small.
 */
const grammars = new Map<string, Node>();
const MAX_GRAMMARS = 256;

function toolCallsGrammar(spec: Extract<ConstraintSpec, { kind: 'tool_calls' }>): Node {
  const f = spec.format;
  // One size budget for all the tools' parameters together (SCHEMA_LIMITS).
  const budget = schemaBudget();
  const calls: Node[] = spec.tools.map((t) => {
    // The parameters compile on their own: their $refs are relative to their root.
    const params = compileSchema(t.parameters ?? { type: 'object', properties: {} }, budget);
    return objectNode([
      { key: f.name_key, lit: jsonLiteral(f.name_key), node: lit([jsonLiteral(t.name)]), required: true },
      { key: f.arguments_key, lit: jsonLiteral(f.arguments_key), node: params, required: true },
    ]);
  });
  const parts = [f.start ? lit([f.start]) : null, calls.length === 1 ? calls[0]! : { t: 'alt' as const, alts: calls, min: Infinity }, f.end ? lit([f.end]) : null];
  const item: Node = { t: 'seq', parts: parts.filter((p): p is Node => p !== null), min: Infinity };
  const repeat = spec.parallel && f.separator !== '' ? Infinity : 1;
  return finish({ t: 'rep', item, sep: lit([f.separator || ' ']), max: repeat, min: Infinity }, 'of the tool calls');
}

function grammarOf(spec: ConstraintSpec): Node {
  if (spec.kind === 'json_object') return ANY_OBJECT;
  const key = createHash('sha256')
    .update(JSON.stringify(spec.kind === 'json_schema' ? [spec.kind, spec.schema] : [spec.kind, spec.format, spec.tools, spec.parallel]))
    .digest('base64');
  let g = grammars.get(key);
  if (!g) {
    g = spec.kind === 'json_schema' ? compileSchema(spec.schema) : toolCallsGrammar(spec);
    if (grammars.size >= MAX_GRAMMARS) grammars.delete(grammars.keys().next().value!);
    grammars.set(key, g);
  }
  return g;
}

/** Per sequence (a request with n choices gets n of these). Throws SchemaError for a schema it cannot enforce. */
export function createConstraint(spec: ConstraintSpec, vocab: Vocabulary): TokenConstraint {
  if (spec.reasoning?.opened_by_prompt) {
    const { reasoning, ...inner } = spec;
    return new AfterReasoning(reasoning, inner as ConstraintSpec, vocab, (s) => createConstraint(s, vocab));
  }
  return new GrammarConstraint(grammarOf(spec), vocab, spec.maxTokens, spec.lazy, spec.kind === 'tool_calls' ? 'tools' : 'response_format');
}

class GrammarConstraint implements TokenConstraint {
  private state: State;
  private used = 0;
  /** The state after the token choose() last returned, so accept() need not compute it again. */
  private next: { token: number; state: State } | null = null;
  private states: State[];

  constructor(
    grammar: Node,
    private readonly vocab: Vocabulary,
    private readonly maxTokens: number | null,
    private readonly lazy: boolean,
    /** The request parameter an unsatisfiable constraint is blamed on. */
    private readonly param: string,
  ) {
    this.state = initialState(grammar);
    this.states = new Array(vocab.longest + 1);
  }

  get done(): boolean {
    return isDone(this.state);
  }

  /** Characters the value may still take after the token being chosen (one token per character, at worst). */
  private room(): number {
    return this.maxTokens === null ? Infinity : this.maxTokens - this.used - 1;
  }

  /** The state after `token`, or null when the token is not allowed now. */
  private after(token: number, room: number): State | null {
    if (this.vocab.eos.includes(token)) return isComplete(this.state) ? this.state : null;
    const text = token < this.vocab.size ? this.vocab.texts[token]! : '';
    if (!text) return null;
    const s = advanceText(this.state, text);
    if (!s.length || (room !== Infinity && minClose(s) > room)) return null;
    return s;
  }

  choose(logits: Float32Array, draw: (logits: Float32Array) => number): number {
    const room = this.room();
    if (this.lazy) {
      const token = draw(logits.slice());
      const s = this.after(token, room);
      if (s) {
        this.next = { token, state: s };
        return token;
      }
    }
    let masked = this.mask(logits, room);
    // The budget cannot be met (max_tokens below the smallest valid value): stay valid, run long.
    if (!masked) masked = this.mask(logits, Infinity);
    if (!masked) {
      throw ThreadError.user(
        400,
        "The requested format cannot be followed with this model's vocabulary: no token can continue the output " +
          '(the schema asks for text the tokenizer cannot produce, e.g. a character it only has inside other tokens).',
        'unsatisfiable_schema',
        this.param,
      );
    }
    const token = draw(masked);
    this.next = null;
    return token;
  }

  accept(token: number): void {
    const s = this.next?.token === token ? this.next.state : this.after(token, Infinity);
    this.next = null;
    this.used++;
    // A token the constraint did not allow (the loop should never do this): keep the old state.
    if (s) this.state = s;
  }

  /** The logits with every token that is not allowed set to -Infinity; null when none is allowed. */
  mask(logits: Float32Array, room: number): Float32Array | null {
    const { vocab, state } = this;
    const out = new Float32Array(logits.length).fill(-Infinity);
    let any = false;
    const allow = (id: number) => {
      if (id < logits.length) {
        out[id] = logits[id]!;
        any = true;
      }
    };
    const fits = (s: State) => room === Infinity || minClose(s) <= room;
    if (state.every((s) => s.f.k === 'str' && s.f.esc === 0)) {
      // Inside a string: plain tokens leave the state as it is.
      if (fits(state)) for (const id of vocab.plain) allow(id);
      for (const id of vocab.special) {
        const s = advanceText(state, vocab.texts[id]!);
        if (s.length && fits(s)) allow(id);
      }
    } else {
      this.walk(room, allow);
    }
    if (isComplete(state)) for (const id of vocab.eos) allow(id);
    return any ? out : null;
  }

  /** Every token of the vocabulary, in text order, sharing the states of common prefixes. */
  private walk(room: number, allow: (id: number) => void): void {
    const { sorted, lcp, texts } = this.vocab;
    const states = this.states;
    states[0] = this.state;
    let depth = 0; // states[0..depth] are valid for the previous token's text
    const n = sorted.length;
    let i = 0;
    while (i < n) {
      const id = sorted[i]!;
      const text = texts[id]!;
      let d = Math.min(lcp[i]!, depth);
      while (d < text.length) {
        const s = advance(states[d]!, text[d]!);
        if (!s.length) break;
        states[++d] = s;
      }
      depth = d;
      i++;
      if (d === text.length) {
        if (room === Infinity || minClose(states[d]!) <= room) allow(id);
      } else {
        // text[0..d] is dead: so is every following token that starts with it.
        while (i < n && lcp[i]! > d) i++;
      }
    }
  }
}
