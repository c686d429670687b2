/**
 * Turns generated token ids into text deltas, and applies stop strings to the text (not to
 * tokens: a stop string may span tokens or end inside one).
 *
 * Detokenization is incremental in the way TGI does it: decode a short window of ids with
 * some left context and emit only what the newest ids added, so decoding cost stays constant
 * per token and byte-level BPE pieces that are not yet valid UTF-8 are held back.
 */
export class TextStream {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  /** Decoded text not yet emitted: it could be the start of a stop string. */
  private pending = '';
  private readonly maxStop: number;
  text = '';
  stopped = false;
  /** The stop string that ended the text (Anthropic's `stop_sequence`, vLLM's `stop_reason`). */
  matched: string | null = null;

  constructor(
    private readonly decode: (ids: number[]) => string,
    private readonly stop: readonly string[],
  ) {
    this.maxStop = Math.max(0, ...stop.map((s) => s.length));
  }

  /** Adds one token; returns the text that may be shown now (possibly ''). */
  push(id: number): string {
    if (this.stopped) return '';
    this.ids.push(id);
    const before = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const after = this.decode(this.ids.slice(this.prefixOffset));
    if (after.length <= before.length || after.endsWith('\uFFFD')) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return this.release(after.slice(before.length));
  }

  /** The generation ended for another reason: whatever was held back is real output. */
  finish(): string {
    if (this.stopped) return '';
    const rest = this.pending;
    this.pending = '';
    this.text += rest;
    return rest;
  }

  private release(delta: string): string {
    this.pending += delta;
    if (this.maxStop === 0) return this.emit(this.pending.length);
    let hit = -1;
    for (const s of this.stop) {
      const at = this.pending.indexOf(s);
      if (at !== -1 && (hit === -1 || at < hit)) {
        hit = at;
        this.matched = s;
      }
    }
    if (hit !== -1) {
      const out = this.emit(hit);
      this.stopped = true;
      this.pending = '';
      return out;
    }
    return this.emit(this.pending.length - this.heldBack());
  }

  /** Length of the longest suffix of `pending` that is a proper prefix of some stop string. */
  private heldBack(): number {
    const tail = this.pending.slice(-this.maxStop);
    for (let k = Math.min(tail.length, this.maxStop - 1); k > 0; k--) {
      const suffix = tail.slice(tail.length - k);
      if (this.stop.some((s) => s.length > k && s.startsWith(suffix))) return k;
    }
    return 0;
  }

  private emit(n: number): string {
    const out = this.pending.slice(0, n);
    this.pending = this.pending.slice(n);
    this.text += out;
    return out;
  }
}
