/**
 * Splitting a row's text into chunks for a chunking vectorizer (sql/040_vectorizers.sql:
 * ai.chunking_recursive, ai.chunking_tokens, ai.chunking_none), and the formatting template.
 * The configuration is stored jsonb that can outlive this code, so it is checked at runtime.
 */

export type Chunking =
  | { implementation: 'none' }
  | { implementation: 'recursive'; chunk_size: number; chunk_overlap: number; separators: string[] }
  | { implementation: 'tokens'; chunk_size: number; chunk_overlap: number };

/** What the token splitter needs of a tokenizer (transformers.js's PreTrainedTokenizer has it). */
export interface ChunkTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): number[];
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
}

export function readChunking(value: unknown): Chunking {
  const c = value as Record<string, unknown> | null;
  const int = (v: unknown, min: number) => typeof v === 'number' && Number.isInteger(v) && v >= min;
  if (c?.implementation === 'none') return { implementation: 'none' };
  if ((c?.implementation === 'recursive' || c?.implementation === 'tokens') && int(c.chunk_size, 1) && int(c.chunk_overlap, 0)) {
    const size = c.chunk_size as number;
    const overlap = c.chunk_overlap as number;
    if (overlap < size) {
      if (c.implementation === 'tokens') return { implementation: 'tokens', chunk_size: size, chunk_overlap: overlap };
      const seps = c.separators;
      if (Array.isArray(seps) && seps.length > 0 && seps.every((s) => typeof s === 'string')) {
        return { implementation: 'recursive', chunk_size: size, chunk_overlap: overlap, separators: seps as string[] };
      }
    }
  }
  throw new Error(`not a chunking configuration: ${JSON.stringify(value)}`);
}

/**
 * The recursive character splitter (after LangChain's, which pgai uses), with exact offsets:
 * every chunk is a substring of the text, at most `chunk_size` characters; neighbours share at
 * most `chunk_overlap` characters and leave no gap, so the chunks, overlaps removed, spell the
 * text. Nothing is trimmed.
 *
 * 1. Pieces: the text is cut after each occurrence of the first separator it contains (the
 *    separator stays with the piece before it); a piece still longer than chunk_size is cut by
 *    the next separator, and so on; the empty separator cuts anywhere.
 * 2. Chunks: consecutive pieces are merged while they fit. The next chunk starts at the earliest
 *    piece boundary within chunk_overlap of the previous chunk's end from which its first new
 *    piece still fits (else at that end: no overlap).
 */
export function splitRecursive(text: string, size: number, overlap: number, separators: string[]): string[] {
  if (text.length === 0) return [];
  // Piece boundaries: ends[i] is the end offset of piece i.
  const ends: number[] = [];
  const cut = (from: number, to: number, level: number): void => {
    if (to - from <= size) return void ends.push(to);
    let k = level;
    while (k < separators.length && separators[k] !== '' && text.slice(from, to).indexOf(separators[k]!) < 0) k++;
    const sep = separators[k];
    if (sep === undefined || sep === '') {
      for (let at = from; at < to; at += size) ends.push(Math.min(at + size, to));
      return;
    }
    let start = from;
    for (;;) {
      const hit = text.indexOf(sep, start);
      const end = hit < 0 || hit + sep.length > to ? to : hit + sep.length;
      cut(start, end, k + 1);
      if (end >= to) return;
      start = end;
    }
  };
  cut(0, text.length, 0);

  const chunks: string[] = [];
  const starts = [0, ...ends.slice(0, -1)];
  let first = 0; // the first piece of the current chunk
  for (;;) {
    let last = first;
    while (last + 1 < ends.length && ends[last + 1]! - starts[first]! <= size) last++;
    chunks.push(text.slice(starts[first], ends[last]));
    if (last === ends.length - 1) return chunks;
    // The next chunk's first piece: back over pieces that end within the overlap, as long as the
    // piece after this chunk (the next chunk's first new piece) still fits.
    let next = last + 1;
    const newEnd = ends[last + 1]!;
    while (next - 1 > first && ends[last]! - starts[next - 1]! <= overlap && newEnd - starts[next - 1]! <= size) next--;
    first = next;
  }
}

/**
 * The token splitter: windows of `size` tokens of the model's tokenizer, `size - overlap` apart,
 * each decoded back to text (as LangChain's TokenTextSplitter). Decoded text is the tokenizer's
 * normal form (a WordPiece tokenizer lowercases and spaces out punctuation).
 */
export function splitTokens(text: string, size: number, overlap: number, tokenizer: ChunkTokenizer): string[] {
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  const chunks: string[] = [];
  for (let at = 0; at < ids.length; at += size - overlap) {
    chunks.push(tokenizer.decode(ids.slice(at, at + size), { skip_special_tokens: true }));
    if (at + size >= ids.length) break;
  }
  return chunks;
}

export function split(text: string, chunking: Chunking, tokenizer: ChunkTokenizer | null): string[] {
  switch (chunking.implementation) {
    case 'none':
      return text.length > 0 ? [text] : [];
    case 'recursive':
      return splitRecursive(text, chunking.chunk_size, chunking.chunk_overlap, chunking.separators);
    case 'tokens':
      if (!tokenizer) throw new Error('the token splitter needs the model tokenizer');
      return splitTokens(text, chunking.chunk_size, chunking.chunk_overlap, tokenizer);
  }
}

/**
 * A formatting template: `$chunk` is the chunk, `$name` a column of the source row (its text
 * form; '' for null). ai.create_vectorizer checked that every name is one of these; a column
 * dropped since then is left as written.
 */
export function format(template: string, chunk: string, row: Record<string, unknown> | null): string {
  return template.replace(/\$([A-Za-z_][A-Za-z0-9_]*)/g, (whole, name: string) => {
    if (name === 'chunk') return chunk;
    if (!row || !(name in row)) return whole;
    const v = row[name];
    return v === null || v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v);
  });
}
