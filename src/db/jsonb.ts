/**
 * JSON text that PostgreSQL's jsonb accepts. jsonb refuses two things JSON.stringify can write:
 * the escape \u0000 and a lone UTF-16 surrogate. Neither can come from a user (the HTTP layer
 * refuses them with a 400) but both can come from elsewhere: a model can generate byte 0x00,
 * and an error message can quote a template cut in the middle of an emoji. Such a write would
 * fail on every attempt and leave the request unanswered, so strings are made storable here:
 * a lone surrogate and NUL become U+FFFD, as a UTF-8 decoder does with a byte it cannot use.
 */
export function toJsonb(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'string' ? storable(v) : v));
}

/** `toJsonb`, with undefined as SQL NULL. */
export function toJsonbOrNull(value: unknown): string | null {
  return value === undefined ? null : toJsonb(value);
}

export function storable(s: string): string {
  const wellFormed = s.isWellFormed() ? s : s.toWellFormed();
  return wellFormed.includes('\0') ? wellFormed.replaceAll('\0', '\uFFFD') : wellFormed;
}
