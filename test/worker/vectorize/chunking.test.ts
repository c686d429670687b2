import { describe, expect, it } from 'vitest';
import { format, readChunking, splitRecursive } from '../../../src/worker/vectorize/chunking.js';

const SEPS = ['\n\n', '\n', ' ', ''];

/** Chunks spell the text with overlaps removed, each at most `size`, neighbours sharing at most `overlap`. */
function expectCover(text: string, chunks: string[], size: number, overlap: number): void {
  expect(chunks.length).toBeGreaterThan(0);
  for (const c of chunks) {
    expect(c.length).toBeGreaterThan(0);
    expect(c.length).toBeLessThanOrEqual(size);
  }
  // Where each chunk starts: some overlap o ≤ overlap before the previous one's end. A repetitive
  // text may fit more than one o, so every choice is tried.
  const fits = (i: number, end: number): boolean => {
    if (i === chunks.length) return end === text.length;
    const c = chunks[i]!;
    for (let o = i === 0 ? 0 : Math.min(overlap, c.length, end); o >= 0; o--) if (text.startsWith(c, end - o) && fits(i + 1, end - o + c.length)) return true;
    return false;
  };
  expect(fits(0, 0), 'the chunks, overlaps removed, do not spell the text').toBe(true);
}

describe('splitRecursive', () => {
  it('keeps a short text whole, and an empty one has no chunk', () => {
    expect(splitRecursive('hello world', 20, 5, SEPS)).toEqual(['hello world']);
    expect(splitRecursive('', 20, 5, SEPS)).toEqual([]);
  });

  it('cuts at paragraphs first, keeping the separator with the piece before it', () => {
    expect(splitRecursive('aaaa\n\nbbbb\n\ncccc', 8, 0, SEPS)).toEqual(['aaaa\n\n', 'bbbb\n\n', 'cccc']);
  });

  it('overlaps neighbours by whole pieces within chunk_overlap', () => {
    const chunks = splitRecursive('one two three four five six seven eight', 14, 6, SEPS);
    expect(chunks).toEqual(['one two three ', 'three four ', 'four five six ', 'six seven ', 'seven eight']);
  });

  it('cuts a text with no separator anywhere', () => {
    expect(splitRecursive('x'.repeat(25), 10, 3, SEPS)).toEqual(['x'.repeat(10), 'x'.repeat(10), 'x'.repeat(5)]);
  });

  it('keeps size, overlap and coverage on random texts', () => {
    let s = 7;
    const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    for (let n = 0; n < 300; n++) {
      const parts = Array.from({ length: 1 + Math.floor(r() * 200) }, () => 'abcdefghij'.slice(0, 1 + Math.floor(r() * 30)).repeat(1 + Math.floor(r() * 3)));
      const text = parts.map((p) => p + ['', ' ', '\n', '\n\n'][Math.floor(r() * 4)]).join('');
      const size = 1 + Math.floor(r() * 300);
      const overlap = Math.floor(r() * size);
      expectCover(text, splitRecursive(text, size, overlap, SEPS), size, overlap);
    }
  });
});

describe('format and readChunking', () => {
  it('fills $chunk and columns; null is empty; unknown names stay', () => {
    expect(format('$title ($year): $chunk $gone', 'text', { title: 'T', year: 2024, gone2: 1 })).toBe('T (2024): text $gone');
    expect(format('$title: $chunk', 'c', { title: null })).toBe(': c');
  });

  it('refuses a stored configuration it cannot use', () => {
    expect(readChunking({ implementation: 'tokens', chunk_size: 10, chunk_overlap: 2 })).toEqual({ implementation: 'tokens', chunk_size: 10, chunk_overlap: 2 });
    expect(() => readChunking({ implementation: 'recursive', chunk_size: 10, chunk_overlap: 10, separators: [' '] })).toThrow(/not a chunking configuration/);
    expect(() => readChunking({ implementation: 'words' })).toThrow(/not a chunking configuration/);
  });
});
