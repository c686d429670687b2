import type { PreTrainedTokenizer } from '@huggingface/transformers';
import type { InputBound } from '../protocol/limits.js';

interface TokenizerJson {
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
  return tokenChars > 0 ? { kind, contextLength, tokenChars } : null;
}
