import { errors } from '../../protocol/errors.js';

/**
 * Query-string parsing for the admin reads. Every refusal is a 400 in OpenAI's envelope naming
 * the parameter, and a parameter the route does not know is refused rather than ignored (a typo
 * in a filter must not silently widen the result).
 */
export type Query = Record<string, string | string[] | undefined>;

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class Params {
  constructor(
    private readonly q: Query,
    known: readonly string[],
  ) {
    for (const name of Object.keys(q)) if (!known.includes(name)) throw errors.unknownParam(name);
  }

  /** A parameter given at most once, as a non-empty string. */
  string(name: string): string | undefined {
    const v = this.q[name];
    if (v === undefined) return undefined;
    if (Array.isArray(v)) throw errors.invalid(`'${name}' may be given once.`, name);
    if (v === '') throw errors.invalid(`'${name}' must not be empty.`, name);
    if (v.length > 256) throw errors.invalid(`'${name}' is too long (at most 256 characters).`, name);
    return v;
  }

  /** A comma-separated list (or the parameter repeated), each item one of `allowed`, no repeats. */
  list<T extends string>(name: string, allowed: readonly T[]): T[] {
    const v = this.q[name];
    if (v === undefined) return [];
    const items = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(',')).map((s) => s.trim());
    for (const item of items) {
      if (!allowed.includes(item as T)) throw errors.invalid(`'${name}' must be a comma-separated list of ${allowed.join(', ')}; got '${item}'.`, name);
    }
    if (new Set(items).size !== items.length) throw errors.invalid(`'${name}' names a value twice.`, name);
    return items as T[];
  }

  oneOf<T extends string>(name: string, allowed: readonly T[]): T | undefined {
    const v = this.string(name);
    if (v !== undefined && !allowed.includes(v as T)) throw errors.invalid(`'${name}' must be one of ${allowed.join(', ')}; got '${v}'.`, name);
    return v as T | undefined;
  }

  uuid(name: string): string | undefined {
    const v = this.string(name);
    if (v !== undefined && !UUID.test(v)) throw errors.invalid(`'${name}' must be a UUID.`, name);
    return v;
  }

  /** An integer in [min, max]; `fallback` when absent. */
  int(name: string, min: number, max: number, fallback: number): number {
    const v = this.string(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!/^-?\d+$/.test(v) || n < min || n > max) throw errors.invalid(`'${name}' must be an integer from ${min} to ${max}.`, name);
    return n;
  }

  /** A time as an ISO 8601 date or date-time, or Unix seconds (OpenAI's `created` unit). */
  time(name: string): Date | undefined {
    const v = this.string(name);
    if (v === undefined) return undefined;
    const d = /^\d{1,12}(\.\d+)?$/.test(v) ? new Date(Number(v) * 1000) : /^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(v) ? new Date(v) : null;
    if (!d || Number.isNaN(d.getTime()) || d.getUTCFullYear() < 1970 || d.getUTCFullYear() > 9999) {
      throw errors.invalid(`'${name}' must be an ISO 8601 time (2026-01-31T12:00:00Z) or Unix seconds.`, name);
    }
    return d;
  }

  /** `since` before `until` when both are given. */
  range(): { since: Date | undefined; until: Date | undefined } {
    const since = this.time('since');
    const until = this.time('until');
    if (since && until && since >= until) throw errors.invalid("'since' must be before 'until'.", 'since');
    return { since, until };
  }
}
