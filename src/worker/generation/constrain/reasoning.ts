import type { ConstraintSpec } from '../../../protocol/chat.js';
import type { ReasoningFormat } from '../../../protocol/reasoning.js';
import type { TokenConstraint, Vocabulary } from './index.js';

/**
 * A constraint that starts after the reasoning section a model's template opened: the section
 * is free text (except the end token: a reply that stops while thinking would never give the
 * value asked for), then its end marker, then the inner constraint (the forced call, the JSON).
 * The section may use at most half of the sequence's token budget; then the end marker is
 * forced, token by token (the longest vocabulary text that continues it), so the value still
 * fits in what is left. The inner constraint is built when the section ends, with the budget
 * that remains. Used only when the template opens the section (`opened_by_prompt`): then the
 * serving layer reads the same split.
 */
export class AfterReasoning implements TokenConstraint {
  private text = '';
  private used = 0;
  private inner: TokenConstraint | null = null;
  private readonly budget: number;

  constructor(
    private readonly format: ReasoningFormat,
    private readonly spec: ConstraintSpec,
    private readonly vocab: Vocabulary,
    private readonly create: (spec: ConstraintSpec) => TokenConstraint,
  ) {
    // Compiled now, so a schema it cannot enforce fails before the request starts.
    create(spec);
    this.budget = spec.maxTokens === null ? Infinity : Math.floor(spec.maxTokens / 2);
  }

  get done(): boolean {
    return this.inner?.done ?? false;
  }

  /** How much of the end marker the text has written so far (its longest suffix that begins the marker). */
  private written(): number {
    const end = this.format.end;
    for (let n = Math.min(end.length - 1, this.text.length); n > 0; n--) if (end.startsWith(this.text.slice(-n))) return n;
    return 0;
  }

  /** The token whose text continues the end marker furthest. */
  private forceEnd(): number {
    const rest = this.format.end.slice(this.written());
    let best = -1;
    let bestLen = 0;
    const { texts } = this.vocab;
    for (let id = 0; id < this.vocab.size; id++) {
      const t = texts[id]!;
      if (t.length > bestLen && rest.startsWith(t)) {
        best = id;
        bestLen = t.length;
      }
    }
    if (best < 0) throw new Error(`no token continues the reasoning end marker '${this.format.end}'`);
    return best;
  }

  choose(logits: Float32Array, draw: (logits: Float32Array) => number): number {
    if (this.inner) return this.inner.choose(logits, draw);
    if (this.used >= this.budget) return this.forceEnd();
    const free = logits.slice();
    for (const id of this.vocab.eos) if (id < free.length) free[id] = -Infinity;
    const token = draw(free);
    const text = token < this.vocab.size ? this.vocab.texts[token]! : '';
    // A token that would close the section and run on into the value: close it exactly instead.
    const joined = this.text + text;
    const at = joined.indexOf(this.format.end);
    if (at >= 0 && joined.length > at + this.format.end.length) return this.forceEnd();
    return token;
  }

  accept(token: number): void {
    if (this.inner) return this.inner.accept(token);
    this.used++;
    this.text += token < this.vocab.size ? this.vocab.texts[token]! : '';
    if (this.text.includes(this.format.end)) {
      const left = this.spec.maxTokens === null ? null : Math.max(1, this.spec.maxTokens - this.used);
      this.inner = this.create({ ...this.spec, maxTokens: left });
    }
    // Only the tail that could still be part of the marker matters.
    else if (this.text.length > 4 * this.format.end.length) this.text = this.text.slice(-2 * this.format.end.length);
  }
}
