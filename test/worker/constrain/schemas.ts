/**
 * Varied JSON schemas for structured-output tests, reproducible from a seed: nested objects
 * (required and optional properties), arrays (with and without item bounds), enums, const,
 * anyOf, type lists, numbers, integers, booleans, null, free-form objects, and $defs/$ref
 * (recursive ones too).
 */
import { makeRng } from '../../../src/worker/generation/sampler.js';

type Schema = Record<string, unknown>;

export function variedSchemas(count: number, seed = 9): Schema[] {
  const rng = makeRng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rng() * xs.length)]!;
  const int = (lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));
  const words = ['id', 'name', 'title', 'city', 'count', 'score', 'tags', 'items', 'owner', 'kind', 'active', 'note', 'ratio', 'level', 'data'];

  const leaf = (): Schema =>
    pick<() => Schema>([
      () => ({ type: 'string' }),
      () => ({ type: 'integer' }),
      () => ({ type: 'number', description: 'a number' }),
      () => ({ type: 'boolean' }),
      () => ({ type: 'null' }),
      () => ({ enum: ['red', 'green', 'blue', 'ultra violet'] }),
      () => ({ type: 'string', enum: ['a', 'ab', 'abc'] }),
      () => ({ enum: [1, 2, 3, 10, 'x', null, true] }),
      () => ({ const: 'fixed' }),
      () => ({ type: ['string', 'null'] }),
      () => ({ type: ['integer', 'boolean'] }),
      () => ({ anyOf: [{ type: 'string' }, { type: 'number' }] }),
    ])();

  const node = (depth: number, strict: boolean): Schema => {
    if (depth <= 0 || rng() < 0.35) return leaf();
    const r = rng();
    if (r < 0.45) return object(depth - 1, strict);
    if (r < 0.7) {
      const arr: Schema = { type: 'array', items: node(depth - 1, strict) };
      if (rng() < 0.4) Object.assign(arr, { minItems: int(0, 2), maxItems: int(2, 3) });
      return arr;
    }
    if (r < 0.85) return { anyOf: [object(depth - 1, strict), leaf()] };
    return rng() < 0.5 ? { type: 'object', additionalProperties: true } : { type: 'object', additionalProperties: { type: 'integer' } };
  };

  const object = (depth: number, strict: boolean): Schema => {
    const n = int(1, 4);
    const keys = [...new Set(Array.from({ length: n }, () => pick(words)))];
    const properties: Record<string, Schema> = {};
    for (const k of keys) properties[k] = node(depth, strict);
    const required = strict ? keys : keys.filter(() => rng() < 0.6);
    return { type: 'object', properties, required, additionalProperties: false };
  };

  const recursive = (): Schema => ({
    type: 'object',
    properties: { root: { $ref: '#/$defs/node' } },
    required: ['root'],
    additionalProperties: false,
    $defs: {
      node: {
        type: 'object',
        properties: { label: { type: 'string' }, children: { type: 'array', items: { $ref: '#/$defs/node' }, maxItems: 2 } },
        required: ['label', 'children'],
        additionalProperties: false,
      },
    },
  });

  const linkedList = (): Schema => ({
    $defs: { item: { type: 'object', properties: { value: { type: 'integer' }, next: { anyOf: [{ $ref: '#/$defs/item' }, { type: 'null' }] } }, required: ['value', 'next'], additionalProperties: false } },
    $ref: '#/$defs/item',
  });

  return Array.from({ length: count }, (_, i) => {
    if (i % 10 === 3) return recursive();
    if (i % 10 === 7) return linkedList();
    return object(int(1, 3), rng() < 0.7);
  });
}

/** Schemas with keywords structured outputs do not enforce: each must be refused, naming the keyword. */
export const UNSUPPORTED_SCHEMAS: { schema: Schema; keyword: string }[] = [
  { schema: { type: 'object', properties: { age: { type: 'integer', minimum: 0 } }, required: ['age'] }, keyword: 'minimum' },
  { schema: { type: 'object', properties: { age: { type: 'number', maximum: 10 } } }, keyword: 'maximum' },
  { schema: { type: 'object', properties: { s: { type: 'string', pattern: '^a+$' } } }, keyword: 'pattern' },
  { schema: { type: 'object', properties: { s: { type: 'string', format: 'date' } } }, keyword: 'format' },
  { schema: { type: 'object', properties: { s: { type: 'string', minLength: 2 } } }, keyword: 'minLength' },
  { schema: { type: 'object', properties: { x: { oneOf: [{ type: 'string' }] } } }, keyword: 'oneOf' },
  { schema: { type: 'object', allOf: [{ type: 'object' }] }, keyword: 'allOf' },
  { schema: { type: 'object', patternProperties: { '^x': { type: 'string' } } }, keyword: 'patternProperties' },
  { schema: { type: 'object', properties: { n: { type: 'number', multipleOf: 2 } } }, keyword: 'multipleOf' },
];
