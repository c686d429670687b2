import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { errors, type ApiError } from './errors.js';

/**
 * One Ajv instance for every endpoint schema. Ajv is told not to coerce types or strip
 * unknown properties: a client that sends `"max_tokens": "5"` or a misspelt parameter gets a
 * 400 naming it, never a silent reinterpretation.
 */
const ajv = new Ajv({ allErrors: false, coerceTypes: false, removeAdditional: false, useDefaults: false, strict: true, verbose: true });
// `x-expect`: the human wording for a union ("a string or an array of content parts").
ajv.addKeyword({ keyword: 'x-expect', schemaType: 'string' });
// `x-unsupported`: known OpenAI parameters this server does not implement yet; they get a
// precise "not supported" 400 instead of "unrecognized".
ajv.addKeyword({ keyword: 'x-unsupported', schemaType: 'array' });

export interface Schema {
  [key: string]: unknown;
}

/** `/messages/0/content` → `messages[0].content`, the way OpenAI names nested params. */
export function pointerToParam(pointer: string, extra?: string): string {
  const parts = pointer.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (extra !== undefined) parts.push(extra);
  let out = '';
  for (const p of parts) out += /^\d+$/.test(p) ? `[${p}]` : out ? `.${p}` : p;
  return out;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `${typeof value} ${JSON.stringify(value)}`.slice(0, 60);
}

function toApiError(err: ErrorObject, unsupported: ReadonlySet<string>): ApiError {
  const param = pointerToParam(err.instancePath);
  switch (err.keyword) {
    case 'additionalProperties': {
      const name = (err.params as { additionalProperty: string }).additionalProperty;
      const full = pointerToParam(err.instancePath, name);
      return unsupported.has(full) ? errors.unsupported(full) : errors.unknownParam(full);
    }
    case 'required': {
      const name = (err.params as { missingProperty: string }).missingProperty;
      return errors.invalid(`Missing required parameter: '${pointerToParam(err.instancePath, name)}'.`, pointerToParam(err.instancePath, name));
    }
    case 'anyOf':
    case 'oneOf': {
      const expect = (err.parentSchema as Schema | undefined)?.['x-expect'] ?? 'one of the allowed shapes';
      return errors.invalid(`Invalid value for '${param}': expected ${expect}.`, param);
    }
    case 'enum': {
      const allowed = (err.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ');
      return errors.invalid(`Invalid value for '${param}': must be one of ${allowed}.`, param);
    }
    case 'type':
      return errors.invalid(`Invalid type for '${param}': expected ${(err.params as { type: string }).type}, got ${describe(err.data)}.`, param);
    case 'const':
      return errors.invalid(`Invalid value for '${param}': must be ${JSON.stringify((err.params as { allowedValue: unknown }).allowedValue)}.`, param);
    default:
      return errors.invalid(`Invalid value for '${param}': ${err.message ?? 'invalid'}.`, param);
  }
}

/**
 * The first string (key or value) Postgres cannot store, with its param path: jsonb refuses
 * U+0000 and unpaired surrogates, text refuses NUL. Requests are logged, so such input is a
 * 400 naming where it is, not a database error.
 */
export function findUnstorable(value: unknown, path = ''): string | null {
  const bad = (s: string) => s.includes('\u0000') || !s.isWellFormed();
  const at = (key: string | number) => (typeof key === 'number' ? `${path}[${key}]` : path ? `${path}.${key}` : key);
  if (typeof value === 'string') return bad(value) ? path || 'body' : null;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const hit = findUnstorable(value[i], at(i));
      if (hit) return hit;
    }
  } else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (bad(k)) return at(k);
      const hit = findUnstorable(v, at(k));
      if (hit) return hit;
    }
  }
  return null;
}

/** Deeper than any valid request: checked without recursion, before anything recursive runs. */
const MAX_DEPTH = 32;

function tooDeep(value: unknown): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth >= MAX_DEPTH) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return false;
}

export interface Validator<T> {
  (body: unknown): T;
}

/** Compiles a request schema into a function that returns the typed body or throws ApiError. */
export function compileValidator<T>(schema: Schema): Validator<T> {
  const check: ValidateFunction = ajv.compile(schema);
  const unsupported = new Set<string>((schema['x-unsupported'] as string[] | undefined) ?? []);
  return (body: unknown): T => {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw errors.invalid('The request body must be a JSON object.');
    }
    if (tooDeep(body)) throw errors.invalid(`The request body is nested more than ${MAX_DEPTH} levels deep.`, null, 'too_deep');
    const unstorable = findUnstorable(body);
    if (unstorable) {
      throw errors.invalid(`Invalid value for '${unstorable}': text may not contain NUL characters or unpaired UTF-16 surrogates.`, unstorable, 'invalid_string');
    }
    if (!check(body)) {
      // A failed union reports its branches' errors first and itself last: name the union.
      const errs = check.errors ?? [];
      // Prefer the branch error that says what is wrong with a value of the right kind
      // (`n: 0` → "must be >= 1", not "expected integer or null").
      const union = errs.find((e) => e.keyword === 'anyOf' || e.keyword === 'oneOf');
      // A branch whose value had the right type but broke a constraint explains best; then a
      // wrong type deeper inside (an element of a list); else the union itself.
      const inside = union ? errs.filter((e) => e !== union && e.instancePath.startsWith(union.instancePath)) : [];
      const specific =
        inside.find((e) => e.keyword !== 'type') ?? inside.find((e) => e.instancePath !== union!.instancePath);
      const chosen = specific ?? union ?? errs[0];
      throw chosen ? toApiError(chosen, unsupported) : errors.invalid('Invalid request body.');
    }
    return body as T;
  };
}
