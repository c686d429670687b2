import type { PreTrainedTokenizer } from '@huggingface/transformers';
import type { InputBound } from '../protocol/limits.js';

interface TokenizerJson {
  normalizer?: unknown;
  model?: { type?: string; byte_fallback?: boolean; vocab?: Record<string, number> | [string, number][] };
  added_tokens?: { content?: string }[];
  pre_tokenizer?: unknown;
  decoder?: unknown;
}

/**
 * The cheap "cannot fit" rule for a model's tokenizer (see InputBound in protocol/limits.ts),
 * read from its tokenizer.json; null for a tokenizer the rules are not sound for.
 */
export function inputBoundOf(tokenizer: PreTrainedTokenizer, contextLength: number): InputBound | null {
  const json = (tokenizer as unknown as { _tokenizerJSON?: TokenizerJson })._tokenizerJSON;
  const type = json?.model?.type;
  let kind: InputBound['kind'];
  if (type === 'WordPiece') kind = 'words';
  else if (type === 'BPE' && (json!.model!.byte_fallback === true || /"ByteLevel"/.test(JSON.stringify([json!.pre_tokenizer, json!.decoder])))) kind = 'chars';
  else return null;
  const vocab = json!.model!.vocab;
  const pieces = Array.isArray(vocab) ? vocab.map(([piece]) => piece) : Object.keys(vocab ?? {});
  // Added tokens (<|im_start|>, ...) are matched in the text as they are: as long as they are.
  for (const t of json!.added_tokens ?? []) if (typeof t.content === 'string') pieces.push(t.content);
  const tokenChars = pieces.reduce((most, p) => Math.max(most, p.length), 0);
  if (tokenChars === 0) return null;
  return {
    kind, contextLength, tokenChars,
    ...(kind === 'words' && isBertPreTokenizer(json!) ? { punctuation: true } : {}),
    ...(kind === 'chars' && keepsBlanks(json!.normalizer) ? { blanks: true } : {}),
    ...(kind === 'chars' && (json!.normalizer === null || json!.normalizer === undefined) ? { raw: true } : {}),
  };
}

/** Normalizers that never remove a blank (Unicode normal forms may map one to a space: still one). */
const KEEPS_BLANKS = new Set(['NFC', 'NFD', 'NFKC', 'NFKD', 'Lowercase', 'Prepend']);
function keepsBlanks(normalizer: unknown): boolean {
  if (normalizer === null || normalizer === undefined) return true;
  const n = normalizer as { type?: string; normalizers?: unknown[] };
  if (n.type === 'Sequence') return (n.normalizers ?? []).every(keepsBlanks);
  return KEEPS_BLANKS.has(n.type ?? '');
}

const isBertPreTokenizer = (json: TokenizerJson) => (json.pre_tokenizer as { type?: string } | null)?.type === 'BertPreTokenizer';

const BLANK = /[ \t\n\r]+/g;
/** Letters and digits that BERT keeps inside one word (CJK ideographs are words of their own). */
const WORD_RUN = /(?:(?!\p{Script=Han})[\p{L}\p{N}])+/gu;

/**
 * For a WordPiece tokenizer behind BERT's pre-tokenizer: a shorter text that tokenizes the
 * same, or null. A fitting text can still be megabytes (one 6 MiB word is one [UNK], 6 MiB of
 * blanks nothing) and tokenizing it holds the model thread for seconds. Blank runs only
 * separate words, so one blank does; a run of letters and digits lies within one word, and a
 * word longer than max_input_chars_per_word is [UNK] whatever its length, so such a run is cut
 * to just over that (normalizing never shortens letters or digits: marks and controls are
 * what it removes).
 */
export function wordPieceShortener(tokenizer: PreTrainedTokenizer): ((text: string) => string) | null {
  const json = (tokenizer as unknown as { _tokenizerJSON?: TokenizerJson & { model?: { max_input_chars_per_word?: number } } })._tokenizerJSON;
  const most = json?.model?.max_input_chars_per_word;
  if (json?.model?.type !== 'WordPiece' || !isBertPreTokenizer(json) || typeof most !== 'number') return null;
  // Code units: two per code point at most, so the cut keeps more than `most` characters.
  const keep = 2 * most + 2;
  return (text) => {
    if (text.length < 4 * keep) return text;
    return text.replace(BLANK, ' ').replace(WORD_RUN, (run) => {
      if (run.length <= keep) return run;
      const cut = run.slice(0, keep);
      // Never end on half a surrogate pair.
      return /[\ud800-\udbff]$/.test(cut) ? cut.slice(0, -1) + run.slice(keep - 1, keep + 1) : cut;
    });
  };
}
