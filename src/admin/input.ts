import { errors } from '../protocol/errors.js';
import type { BudgetPeriod } from '../db/types.js';

/**
 * Reading an admin request's fields: each wrong one is a 400 naming it (`param`), in OpenAI's
 * envelope. The CLI builds the same objects from its flags, so both are checked alike.
 */
export type Body = Record<string, unknown>;

export function asBody(v: unknown): Body {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw errors.invalid('The request body must be a JSON object.');
  return v as Body;
}

/** Refuses fields the operation does not know (a typo must not silently do nothing). */
export function only(body: Body, allowed: readonly string[]): void {
  for (const k of Object.keys(body)) {
    if (!allowed.includes(k)) throw errors.invalid(`Unknown field '${k}'; expected one of ${allowed.join(', ')}.`, k, 'unknown_field');
  }
}

export function text(body: Body, k: string, required: true, max?: number): string;
export function text(body: Body, k: string, required?: false, max?: number): string | undefined;
export function text(body: Body, k: string, required = false, max = 200): string | undefined {
  const v = body[k];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string' || v.trim() === '' || v.length > max || v.includes('\u0000')) {
    throw errors.invalid(`'${k}' must be a non-empty string of at most ${max} characters.`, k);
  }
  return v.trim();
}

export function flag(body: Body, k: string): boolean | undefined {
  const v = body[k];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw errors.invalid(`'${k}' must be true or false.`, k);
  return v;
}

/** A positive integer, or null (no limit); undefined when absent. */
export function limit(body: Body, k: string, max = Number.MAX_SAFE_INTEGER): number | null | undefined {
  const v = body[k];
  if (v === undefined || v === null) return v;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < (k === 'budget_tokens' ? 0 : 1) || v > max) {
    throw errors.invalid(`'${k}' must be ${k === 'budget_tokens' ? 'a non-negative' : 'a positive'} integer, or null for no limit.`, k);
  }
  return v;
}

export function period(body: Body, k = 'budget_period'): BudgetPeriod | undefined {
  const v = body[k];
  if (v === undefined) return undefined;
  if (v !== 'day' && v !== 'month' && v !== 'total') throw errors.invalid(`'${k}' must be 'day', 'month' or 'total'.`, k);
  return v;
}

export function names(body: Body, k: string): string[] | null | undefined {
  const v = body[k];
  if (v === undefined || v === null) return v;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x.trim() === '')) throw errors.invalid(`'${k}' must be a list of names, or null.`, k);
  return v.map((x: string) => x.trim());
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The budget and limit fields keys and teams share, as a column patch (absent fields left out). */
export function limitsPatch(body: Body) {
  const patch: { budget_tokens?: number | null; budget_period?: BudgetPeriod; rpm_limit?: number | null; tpm_limit?: number | null } = {};
  const b = limit(body, 'budget_tokens');
  if (b !== undefined) patch.budget_tokens = b;
  const p = period(body);
  if (p !== undefined) patch.budget_period = p;
  const r = limit(body, 'rpm_limit', 2_147_483_647);
  if (r !== undefined) patch.rpm_limit = r;
  const t = limit(body, 'tpm_limit');
  if (t !== undefined) patch.tpm_limit = t;
  return patch;
}
export const LIMIT_FIELDS = ['budget_tokens', 'budget_period', 'rpm_limit', 'tpm_limit'] as const;
