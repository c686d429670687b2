import { errors } from './errors.js';

/**
 * Bounds on the work one request may ask for, checked before any of it is done. Shared by the
 * gateway (which rejects what it can before queueing) and the worker (which applies the same
 * rules to every request, SQL- and SDK-originated ones too): pure, no tokenizer here.
 */

/**
 * What a worker learns about a model's tokenizer when it loads it (recorded in
 * ai.models.input_bound): enough to tell, without tokenizing, that a text cannot fit.
 *
 * - `chars`: every character of a text ends up in some token (byte-level BPE, or BPE with byte
 *   fallback) and no token stands for more than `tokenChars` characters, so a text needs at
 *   least (its characters) / tokenChars tokens. Only characters no normalizer can remove or
 *   fuse are counted (not combining marks, controls or Hangul jamo; blanks only with `blanks`,
 *   when the tokenizer's normalizer cannot remove them), or, with `raw` (no normalizer at all),
 *   every character.
 * - `words`: WordPiece gives every word at least one token (a word it cannot spell, however
 *   long, is one [UNK]), so a text needs at least one token per run of non-blank characters
 *   that holds a letter or digit (runs are split only at ' ', \t, \n, \r: fewer than BERT splits),
 *   and, with `punctuation` (BERT's pre-tokenizer), one per punctuation character besides.
 *
 * A tokenizer that fits neither (SentencePiece Unigram merges unknown characters into one
 * <unk>) gets no bound: its texts are tokenized, with the model thread's other safeguards.
 */
export interface InputBound {
  kind: 'chars' | 'words';
  /** Tokens the model takes (its context length, as the worker applies it). */
  contextLength: number;
  /** The longest token's text, in characters (a byte-level token's length in bytes). */
  tokenChars: number;
  /** `words`: every punctuation character is a token of its own (BertPreTokenizer). */
  punctuation?: boolean;
  /** `chars`: blanks count too (no normalizer that could strip them). */
  blanks?: boolean;
  /** `chars`: every character counts (the tokenizer has no normalizer: marks, controls and jamo stay bytes of some token). */
  raw?: boolean;
}

/** A stored bound can outlive the code that wrote it: anything unexpected means "no bound". */
export function readInputBound(value: unknown): InputBound | null {
  const v = value as Partial<InputBound> | null;
  if (!v || typeof v !== 'object' || (v.kind !== 'chars' && v.kind !== 'words')) return null;
  const positive = (x: unknown): x is number => Number.isInteger(x) && (x as number) > 0;
  if (!positive(v.contextLength) || !positive(v.tokenChars)) return null;
  return {
    kind: v.kind, contextLength: v.contextLength, tokenChars: v.tokenChars,
    ...(v.punctuation === true ? { punctuation: true } : {}), ...(v.blanks === true ? { blanks: true } : {}),
    ...(v.raw === true && v.kind === 'chars' ? { raw: true } : {}),
  };
}

const SIGNIFICANT = 1;
const WORDY = 2;
/** BERT's punctuation: Unicode P*, and every ASCII symbol. */
const PUNCT = 4;
const BLANK = 8;
/** Per UTF-16 code unit: SIGNIFICANT (counted by `chars`), WORDY (a letter or digit). Built once, ~10 ms. */
let table: Uint8Array | null = null;
const insignificant = /[\s\p{M}\p{C}\u1100-\u11ff\uff9e\uff9f]/u;
const blank = /^\s$/u;
const wordy = /[\p{L}\p{N}]/u;
const punct = /[\p{P}!-\/:-@[-`{-~]/u;

/** A character's class bits (a code point outside the BMP is classified whole). */
const classOf = (ch: string): number =>
  (insignificant.test(ch) ? 0 : SIGNIFICANT) | (wordy.test(ch) ? WORDY : 0) | (punct.test(ch) ? PUNCT : 0) | (blank.test(ch) ? BLANK : 0);

function classes(): Uint8Array {
  if (table) return table;
  table = new Uint8Array(0x10000);
  for (let c = 0; c < 0x10000; c++) {
    if (c >= 0xd800 && c <= 0xdfff) continue; // surrogates: classified as pairs below
    const ch = String.fromCharCode(c);
    table[c] = classOf(ch);
  }
  return table;
}

/**
 * Scans texts as if concatenated (a token may span two of them) and returns where the bound
 * first says "more than `budget` tokens": [text index, character index], or null when all of it
 * may fit. Linear, one pass: about 10 ms for 6 MiB, against some 40 s for a byte-level BPE
 * tokenizer to find out that a 6 MiB word is too long.
 */
export function overflowAt(texts: readonly string[], bound: InputBound, budget: number): [number, number] | null {
  const t = classes();
  // `chars`: more than budget × tokenChars counted characters cannot fit in budget tokens.
  const most = bound.kind === 'chars' ? budget * bound.tokenChars : budget;
  if (bound.kind === 'chars' && bound.raw) {
    // Every code unit is at least one byte of some token: counting code units undercounts a pair's four bytes, safely.
    for (let k = 0, counted = 0; k < texts.length; k++) {
      const text = texts[k]!;
      if (counted + text.length > most) {
        const at = most - counted;
        // Never inside a surrogate pair.
        return [k, at > 0 && (text.charCodeAt(at - 1) & 0xfc00) === 0xd800 ? at - 1 : at];
      }
      counted += text.length;
    }
    return null;
  }
  let counted = 0;
  let inWord = false;
  let wordCounted = false;
  for (let k = 0; k < texts.length; k++) {
    const text = texts[k]!;
    for (let i = 0; i < text.length; i++) {
      const at = i;
      const c = text.charCodeAt(i);
      if (bound.kind === 'words' && (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d)) {
        inWord = false;
        continue;
      }
      let cls: number;
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
        const ch = String.fromCodePoint(text.codePointAt(i)!);
        cls = classOf(ch);
        i++;
      } else cls = t[c]!;
      if (bound.kind === 'chars') {
        if (cls & (bound.blanks ? SIGNIFICANT | BLANK : SIGNIFICANT) && ++counted > most) return [k, at];
        continue;
      }
      if (cls & PUNCT && bound.punctuation) {
        // A token of its own, and it ends the word before it.
        inWord = false;
        if (++counted > most) return [k, at];
        continue;
      }
      if (!inWord) {
        inWord = true;
        wordCounted = false;
      }
      if (cls & WORDY && !wordCounted) {
        wordCounted = true;
        if (++counted > most) return [k, at];
      }
    }
  }
  return null;
}

/** Whether these texts, rendered together into one prompt, certainly need more than `tokens` tokens. */
export function needsMoreThan(texts: readonly string[], bound: InputBound, tokens: number): boolean {
  return tokens < 0 || overflowAt(texts, bound, tokens) !== null;
}

// ---------------------------------------------------------------------------------------------
// The batch budget
// ---------------------------------------------------------------------------------------------

/** A setting that must be a positive integer, else `fallback`. */
export const positiveSetting = (env: NodeJS.ProcessEnv, name: string, fallback: number): number => {
  const v = Number(env[name]);
  return Number.isInteger(v) && v > 0 ? v : fallback;
};

/**
 * SWITCHYARD_MAX_BATCH_TOKENS (default 65536): KV-cache tokens a worker reserves at once per
 * chat model, Σ n × (prompt + max new tokens). One request may reserve at most all of it.
 */
export const maxBatchTokens = (env: NodeJS.ProcessEnv = process.env): number => positiveSetting(env, 'SWITCHYARD_MAX_BATCH_TOKENS', 65_536);
/** SWITCHYARD_MAX_BATCH (default 16): sequences a worker decodes together per chat model. */
export const maxBatchSequences = (env: NodeJS.ProcessEnv = process.env): number => positiveSetting(env, 'SWITCHYARD_MAX_BATCH', 16);

/** Why a request over the budget is refused; `prompt` is its length in tokens, or what is known of it. */
export function budgetMessage(n: number, prompt: number | string, maxTokens: number, budget: number, param: string): string {
  return (
    `This request needs more memory than a worker gives one request: n × (prompt + max_tokens) = ${n} × (${prompt} + ${maxTokens}) ` +
    `tokens is over its budget of ${budget} (SWITCHYARD_MAX_BATCH_TOKENS). Lower '${param}'.`
  );
}

/**
 * What the gateway can refuse before queueing, without a tokenizer: a prompt that certainly
 * does not fit the model's context with max_tokens, or n × (prompt + max_tokens) over the
 * worker's budget. Throws the 400 the worker would give; the worker checks again, exactly.
 */
export function checkGeneration(
  prompt: { texts: readonly string[] } | { tokens: number },
  params: { n: number; maxTokens: number | null },
  bound: InputBound | null | undefined,
  budget: number,
  promptParam: 'messages' | 'prompt',
): void {
  const { n, maxTokens } = params;
  /** The prompt certainly needs more than `tokens` tokens. */
  const over = (tokens: number): boolean =>
    'tokens' in prompt ? prompt.tokens > tokens : bound ? needsMoreThan(prompt.texts, bound, tokens) : tokens < 0;
  if (bound && over(bound.contextLength - (maxTokens ?? 1))) {
    throw errors.contextLength(
      `This model's maximum context length is ${bound.contextLength} tokens. However, your ${promptParam} ` +
        ('tokens' in prompt ? `have ${prompt.tokens} tokens` : 'are longer than that') +
        ` with ${maxTokens ?? 1} tokens for the completion. Please reduce the length of the ${promptParam} or completion.`,
      promptParam,
    );
  }
  if (maxTokens !== null && over(Math.floor(budget / n) - maxTokens)) {
    const param = n > 1 ? 'n' : 'max_tokens';
    throw errors.invalid(budgetMessage(n, 'tokens' in prompt ? prompt.tokens : 'the prompt', maxTokens, budget, param), param, 'invalid_value');
  }
}

/** Embedding inputs: one that certainly cannot fit is a 400, unless the model cuts inputs to fit. */
export function checkEmbeddingInputs(inputs: readonly (string | number[])[], bound: InputBound | null | undefined, truncate: boolean): void {
  if (!bound || truncate) return;
  inputs.forEach((x, i) => {
    const over = typeof x === 'string' ? needsMoreThan([x], bound, bound.contextLength) : x.length > bound.contextLength;
    if (over) {
      throw errors.contextLength(
        `Invalid input[${i}]: it is more than ${bound.contextLength} tokens long; this model takes at most ${bound.contextLength}. Shorten it, or register the model with --truncate.`,
        'input',
      );
    }
  });
}

/** Choices one request may ask for in all (OpenAI's `n` goes up to 128; legacy completions multiply it by the prompts). */
export const MAX_CHOICES = 128;

/** The texts of a chat prompt that every chat template renders in full: all but assistant turns. */
export function promptTexts(prompt: { messages: readonly { role: string; content: string }[] }): string[] {
  return prompt.messages.flatMap((m) => (m.role === 'assistant' ? [] : [m.content]));
}
