/**
 * The character-level parser behind constrained decoding: a compiled grammar (`Node`s, built
 * from a JSON schema or a tool-call format by schema.ts) and an incremental, persistent parser
 * state over it.
 *
 * A state is a small set of stacks (the grammar is ambiguous in a few places: `anyOf`, a number
 * that may or may not go on, an optional property), each stack an immutable linked list of
 * frames. Advancing by one character builds new frames on top of shared tails, so forking a
 * state (to try every token of the vocabulary from one position) costs nothing.
 *
 * Every frame also knows the fewest characters that finish it (`minClose`), which lets the
 * constraint close the value in time when the token budget runs out.
 */

/** Longest integer part, fraction and exponent the decoder may write (JSON itself has no bound). */
export const MAX_INT_DIGITS = 15;
export const MAX_FRAC_DIGITS = 15;
export const MAX_EXP_DIGITS = 2;
/** Ambiguity bound: more parallel parses than this are dropped (any kept one is still valid). */
const MAX_STACKS = 32;

export interface Prop {
  key: string;
  /** The key as it is written: a JSON string with its quotes. */
  lit: string;
  node: Node;
  required: boolean;
}

interface Base {
  /** Fewest characters of any value of this node (computed after compiling). */
  min: number;
}
export type ObjNode = Base & {
  t: 'obj';
  props: Prop[];
  /** tail[k]: fewest characters after the properties before k are done (required ones from k, and `}`). */
  tail: number[];
  /** keyCands[k]: properties that may come next when the ones before k are done. */
  keyCands: number[][];
};
export type Node =
  | (Base & { t: 'any' })
  | ObjNode
  | (Base & { t: 'fobj'; values: Node })
  | (Base & { t: 'arr'; items: Node; minItems: number; maxItems: number })
  | (Base & { t: 'str' })
  | (Base & { t: 'num'; integer: boolean })
  | (Base & { t: 'lit'; values: string[] })
  | (Base & { t: 'alt'; alts: Node[] })
  | (Base & { t: 'seq'; parts: Node[] })
  | (Base & { t: 'rep'; item: Node; sep: Node; max: number });

type NumPh = 'sign' | 'zero' | 'int' | 'dot' | 'frac' | 'e' | 'esign' | 'exp';
export type Frame =
  | { k: 'root' }
  | { k: 'val'; node: Node; ws: number }
  | { k: 'str'; esc: number }
  | { k: 'num'; integer: boolean; ph: NumPh; n: number }
  | { k: 'lit'; cands: string[]; pos: number }
  | { k: 'obj'; node: ObjNode; ph: 'open' | 'after' | 'key' | 'colon'; idx: number; cur: number; ws: number }
  | { k: 'fobj'; node: Node & { t: 'fobj' }; ph: 'open' | 'after' | 'key' | 'colon'; ws: number }
  | { k: 'arr'; node: Node & { t: 'arr' }; ph: 'open' | 'after' | 'next'; count: number; ws: number }
  | { k: 'seq'; node: Node & { t: 'seq' }; i: number }
  | { k: 'rep'; node: Node & { t: 'rep' }; ph: 'after' | 'item'; count: number };

export interface Stack {
  readonly f: Frame;
  readonly up: Stack | null;
}
export type State = Stack[];

const push = (f: Frame, up: Stack | null): Stack => ({ f, up });
const STR0: Frame = { k: 'str', esc: 0 };
const ROOT: Stack = { f: { k: 'root' }, up: null };

export function initialState(node: Node): State {
  return [push({ k: 'val', node, ws: 0 }, ROOT)];
}

const isDigit = (c: string) => c >= '0' && c <= '9';
const isHex = (c: string) => isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
const ESCAPES = '"\\/bfnrt';

/** A child finished: its parent continues; parents that are finished themselves finish too. */
function settle(s: Stack, out: Stack[]): void {
  const f = s.f;
  if (f.k === 'seq' && f.i === f.node.parts.length) return settle(s.up!, out);
  if (f.k === 'rep' && f.ph === 'after') {
    if (f.count < f.node.max) out.push(s);
    return settle(s.up!, out);
  }
  out.push(s);
}

function stepLit(cands: string[], pos: number, up: Stack, ch: string, out: Stack[]): void {
  let more: string[] | null = null;
  let ended = false;
  for (const c of cands) {
    if (c[pos] !== ch) continue;
    if (c.length === pos + 1) ended = true;
    else (more ??= []).push(c);
  }
  if (more) out.push(push({ k: 'lit', cands: more, pos: pos + 1 }, up));
  if (ended) settle(up, out);
}

function startValue(node: Node, up: Stack, ch: string, out: Stack[]): void {
  switch (node.t) {
    case 'alt':
      for (const a of node.alts) startValue(a, up, ch, out);
      return;
    case 'any':
      throw new Error('unreachable: any is compiled to alternatives');
    case 'obj':
      if (ch === '{') out.push(push({ k: 'obj', node, ph: 'open', idx: 0, cur: -1, ws: 0 }, up));
      return;
    case 'fobj':
      if (ch === '{') out.push(push({ k: 'fobj', node, ph: 'open', ws: 0 }, up));
      return;
    case 'arr':
      if (ch === '[') out.push(push({ k: 'arr', node, ph: 'open', count: 0, ws: 0 }, up));
      return;
    case 'str':
      if (ch === '"') out.push(push(STR0, up));
      return;
    case 'num':
      if (ch === '-') out.push(push({ k: 'num', integer: node.integer, ph: 'sign', n: 0 }, up));
      else if (isDigit(ch)) stepNumDigit(node.integer, ch === '0' ? 'zero' : 'int', 1, up, out);
      return;
    case 'lit':
      return stepLit(node.values, 0, up, ch, out);
    case 'seq':
      return startValue(node.parts[0]!, push({ k: 'seq', node, i: 1 }, up), ch, out);
    case 'rep':
      return startValue(node.item, push({ k: 'rep', node, ph: 'after', count: 1 }, up), ch, out);
  }
}

/** A digit that leaves the number complete: it may go on, or end here. */
function stepNumDigit(integer: boolean, ph: NumPh, n: number, up: Stack, out: Stack[]): void {
  out.push(push({ k: 'num', integer, ph, n }, up));
  settle(up, out);
}

function stepNum(f: Frame & { k: 'num' }, up: Stack, ch: string, out: Stack[]): void {
  const digit = isDigit(ch);
  const exp = !f.integer && (ch === 'e' || ch === 'E');
  switch (f.ph) {
    case 'sign':
      if (digit) stepNumDigit(f.integer, ch === '0' ? 'zero' : 'int', 1, up, out);
      return;
    case 'zero':
    case 'int':
      if (digit && f.ph === 'int' && f.n < MAX_INT_DIGITS) stepNumDigit(f.integer, 'int', f.n + 1, up, out);
      else if (ch === '.' && !f.integer) out.push(push({ ...f, ph: 'dot', n: 0 }, up));
      else if (exp) out.push(push({ ...f, ph: 'e', n: 0 }, up));
      return;
    case 'dot':
      if (digit) stepNumDigit(false, 'frac', 1, up, out);
      return;
    case 'frac':
      if (digit && f.n < MAX_FRAC_DIGITS) stepNumDigit(false, 'frac', f.n + 1, up, out);
      else if (exp) out.push(push({ ...f, ph: 'e', n: 0 }, up));
      return;
    case 'e':
      if (ch === '+' || ch === '-') out.push(push({ ...f, ph: 'esign', n: 0 }, up));
      else if (digit) stepNumDigit(false, 'exp', 1, up, out);
      return;
    case 'esign':
      if (digit) stepNumDigit(false, 'exp', 1, up, out);
      return;
    case 'exp':
      if (digit && f.n < MAX_EXP_DIGITS) stepNumDigit(false, 'exp', f.n + 1, up, out);
      return;
  }
}

function step(s: Stack, ch: string, out: Stack[]): void {
  const f = s.f;
  const up = s.up!;
  switch (f.k) {
    case 'root':
      return;
    case 'val':
      if (ch === ' ' && f.ws > 0) out.push(push({ ...f, ws: f.ws - 1 }, up));
      else startValue(f.node, up, ch, out);
      return;
    case 'str':
      if (f.esc === 0) {
        if (ch === '"') settle(up, out);
        else if (ch === '\\') out.push(push({ k: 'str', esc: 1 }, up));
        else if (ch.charCodeAt(0) >= 0x20) out.push(s);
      } else if (f.esc === 1) {
        if (ch === 'u') out.push(push({ k: 'str', esc: 2 }, up));
        else if (ESCAPES.includes(ch)) out.push(push(STR0, up));
      } else if (isHex(ch)) {
        out.push(push(f.esc === 5 ? STR0 : { k: 'str', esc: f.esc + 1 }, up));
      }
      return;
    case 'num':
      return stepNum(f, up, ch, out);
    case 'lit':
      return stepLit(f.cands, f.pos, up, ch, out);
    case 'obj': {
      const node = f.node;
      if (f.ph === 'colon') {
        if (ch === ':') out.push(push({ k: 'val', node: node.props[f.cur]!.node, ws: 1 }, push({ ...f, ph: 'after', cur: -1 }, up)));
        return;
      }
      if (f.ph === 'key' && ch === ' ' && f.ws > 0) {
        out.push(push({ ...f, ws: 0 }, up));
        return;
      }
      const cands = node.keyCands[f.idx]!;
      if (ch === '}' && (f.ph === 'open' || f.ph === 'after') && node.tail[f.idx] === 1) {
        settle(up, out);
      } else if (ch === ',' && f.ph === 'after') {
        if (cands.length) out.push(push({ ...f, ph: 'key', ws: 1 }, up));
      } else if (ch === '"' && (f.ph === 'open' || f.ph === 'key')) {
        for (const j of cands) {
          out.push(push({ k: 'lit', cands: [node.props[j]!.lit], pos: 1 }, push({ k: 'obj', node, ph: 'colon', idx: j + 1, cur: j, ws: 0 }, up)));
        }
      }
      return;
    }
    case 'fobj':
      if (f.ph === 'colon') {
        if (ch === ':') out.push(push({ k: 'val', node: f.node.values, ws: 1 }, push({ ...f, ph: 'after' }, up)));
      } else if (f.ph === 'key' && ch === ' ' && f.ws > 0) out.push(push({ ...f, ws: 0 }, up));
      else if (ch === '}' && (f.ph === 'open' || f.ph === 'after')) settle(up, out);
      else if (ch === ',' && f.ph === 'after') out.push(push({ ...f, ph: 'key', ws: 1 }, up));
      else if (ch === '"' && (f.ph === 'open' || f.ph === 'key')) out.push(push(STR0, push({ ...f, ph: 'colon' }, up)));
      return;
    case 'arr': {
      const node = f.node;
      if (f.ph === 'next' && ch === ' ' && f.ws > 0) out.push(push({ ...f, ws: 0 }, up));
      else if (ch === ']' && f.ph !== 'next' && f.count >= node.minItems) settle(up, out);
      else if (ch === ',' && f.ph === 'after') {
        if (f.count < node.maxItems) out.push(push({ ...f, ph: 'next', ws: 1 }, up));
      } else if (f.ph === 'next' || (f.ph === 'open' && node.maxItems > 0)) {
        startValue(node.items, push({ ...f, ph: 'after', count: f.count + 1, ws: 0 }, up), ch, out);
      }
      return;
    }
    case 'seq':
      return startValue(f.node.parts[f.i]!, push({ ...f, i: f.i + 1 }, up), ch, out);
    case 'rep':
      if (f.ph === 'after') startValue(f.node.sep, push({ ...f, ph: 'item' }, up), ch, out);
      else startValue(f.node.item, push({ ...f, ph: 'after', count: f.count + 1 }, up), ch, out);
      return;
  }
}

/** The state after one more character; empty when the character is not allowed. */
export function advance(state: State, ch: string): State {
  const out: Stack[] = [];
  for (const s of state) {
    step(s, ch, out);
    if (out.length >= MAX_STACKS) break;
  }
  return out.length > MAX_STACKS ? out.slice(0, MAX_STACKS) : out;
}

/** The state after a whole string; empty as soon as a character is not allowed. */
export function advanceText(state: State, text: string): State {
  let s = state;
  for (let i = 0; i < text.length && s.length; i++) s = advance(s, text[i]!);
  return s;
}

/** Some parse has finished the value: end-of-sequence is allowed. */
export const isComplete = (state: State) => state.some((s) => s.f.k === 'root');
/** Every parse has finished: nothing more can be written. */
export const isDone = (state: State) => state.length > 0 && state.every((s) => s.f.k === 'root');

function frameCost(f: Frame): number {
  switch (f.k) {
    case 'root':
      return 0;
    case 'val':
      return f.node.min;
    case 'str':
      return f.esc === 0 ? 1 : f.esc === 1 ? 2 : 7 - f.esc;
    case 'num':
      return f.ph === 'zero' || f.ph === 'int' || f.ph === 'frac' || f.ph === 'exp' ? 0 : 1;
    case 'lit': {
      let best = Infinity;
      for (const c of f.cands) best = Math.min(best, c.length - f.pos);
      return best;
    }
    case 'obj': {
      const { node } = f;
      if (f.ph === 'after') return node.tail[f.idx]!;
      if (f.ph === 'open') return node.tail[f.idx]! - (node.tail[f.idx] === 1 ? 0 : 1);
      if (f.ph === 'colon') return 1 + node.props[f.cur]!.node.min + node.tail[f.idx]!;
      let best = Infinity;
      for (const j of node.keyCands[f.idx]!) best = Math.min(best, node.props[j]!.lit.length + 1 + node.props[j]!.node.min + node.tail[j + 1]!);
      return best;
    }
    case 'fobj':
      if (f.ph === 'open' || f.ph === 'after') return 1;
      if (f.ph === 'colon') return 2 + f.node.values.min;
      return 4 + f.node.values.min;
    case 'arr': {
      const { minItems, items } = f.node;
      if (f.ph === 'open') return minItems === 0 ? 1 : minItems * items.min + minItems;
      if (f.ph === 'after') return Math.max(0, minItems - f.count) * (1 + items.min) + 1;
      const r = Math.max(1, minItems - f.count);
      return r * items.min + r;
    }
    case 'seq': {
      let sum = 0;
      for (let i = f.i; i < f.node.parts.length; i++) sum += f.node.parts[i]!.min;
      return sum;
    }
    case 'rep':
      return f.ph === 'after' ? 0 : f.node.item.min;
  }
}

/** Fewest characters that finish the value from this state (Infinity for a dead state). */
export function minClose(state: State): number {
  let best = Infinity;
  for (const top of state) {
    let sum = 0;
    let s: Stack | null = top;
    for (; s; s = s.up) sum += frameCost(s.f);
    if (sum < best) best = sum;
  }
  return best;
}
