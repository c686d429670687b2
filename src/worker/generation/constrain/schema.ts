/**
 * JSON Schema → grammar (`Node`s of grammar.ts). Supports the subset OpenAI's strict structured
 * outputs accept: objects (properties, required, additionalProperties), arrays (items, minItems,
 * maxItems), enum, const, string, number, integer, boolean, null, anyOf, type lists, and
 * $ref/$defs (recursion included). Anything else is refused with a SchemaError naming the
 * keyword and where it is, so the request fails with a 400 instead of the output silently not
 * matching the schema.
 *
 * Pure: no tokenizer here, so the protocol layer uses it to check requests.
 */
import { MAX_INT_DIGITS, type Node, type ObjNode, type Prop } from './grammar.js';

export class SchemaError extends Error {
  constructor(
    message: string,
    readonly keyword: string | null,
    readonly path: string,
  ) {
    super(message);
    this.name = 'SchemaError';
  }
}

/** Annotations: allowed anywhere, and ignored. */
const ANNOTATIONS = ['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly'];
const STRUCTURAL = ['type', 'properties', 'required', 'additionalProperties', 'items', 'minItems', 'maxItems', 'enum', 'const', 'anyOf', '$ref', '$defs', 'definitions'];
const ALLOWED = new Set([...ANNOTATIONS, ...STRUCTURAL]);
const TYPES = new Set(['object', 'array', 'string', 'number', 'integer', 'boolean', 'null']);

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type SchemaObj = Record<string, unknown>;

/** Every integer the decoder writes has at most MAX_INT_DIGITS digits. */
const INT_LIMIT = 10 ** MAX_INT_DIGITS - 1;

/**
 * Integer bounds no generated integer can break (zod's .int() writes ±MAX_SAFE_INTEGER): they
 * are accepted, since they hold by construction. Any other bound is refused.
 */
function alwaysMet(schema: Record<string, unknown>, key: string): boolean {
  const v = schema[key];
  if (schema.type !== 'integer' || typeof v !== 'number') return false;
  return (key === 'minimum' && v <= -INT_LIMIT) || (key === 'maximum' && v >= INT_LIMIT);
}

const isObj = (v: unknown): v is SchemaObj => typeof v === 'object' && v !== null && !Array.isArray(v);

const STR: Node = { t: 'str', min: 2 };
const NUM: Node = { t: 'num', integer: false, min: 1 };
const INT: Node = { t: 'num', integer: true, min: 1 };
const BOOL: Node = { t: 'lit', values: ['true', 'false'], min: 4 };
const NULL: Node = { t: 'lit', values: ['null'], min: 4 };

/** Any JSON value (objects with any keys, arrays of anything, strings, numbers, literals). */
export const ANY: Node = (() => {
  const any: Node & { t: 'alt' } = { t: 'alt', alts: [], min: 1 };
  any.alts.push({ t: 'fobj', values: any, min: 2 }, { t: 'arr', items: any, minItems: 0, maxItems: Infinity, min: 2 }, STR, NUM, {
    t: 'lit',
    values: ['true', 'false', 'null'],
    min: 4,
  });
  return any;
})();

/** `{...}` with any keys: what `response_format: {type: "json_object"}` asks for. */
export const ANY_OBJECT: Node = { t: 'fobj', values: ANY, min: 2 };

/**
 * The JSON text a fixed value (a key, an enum or const member) is written as: every non-ASCII
 * character as a \\u escape. The value parses the same, and the text is made only of characters
 * every tokenizer has as tokens of their own, whereas a byte-level vocabulary has most non-ASCII
 * characters only as byte pieces (not text), or inside longer tokens: written as is, a key such
 * as "名前" could be impossible to produce.
 */
export function jsonLiteral(value: Json): string {
  return JSON.stringify(value).replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export const lit = (values: string[]): Node => ({ t: 'lit', values: [...new Set(values)], min: Math.min(...values.map((v) => v.length)) });

function decodePointer(root: unknown, ref: string, path: string): { schema: unknown; pointer: string } {
  if (!ref.startsWith('#')) throw new SchemaError(`Only local references ('#/...') are supported, not '${ref}' (at ${path}).`, '$ref', path);
  let cur: unknown = root;
  const parts = ref.length <= 1 ? [] : ref.slice(ref.startsWith('#/') ? 2 : 1).split('/');
  for (const raw of parts) {
    const key = decodeURIComponent(raw).replaceAll('~1', '/').replaceAll('~0', '~');
    cur = isObj(cur) ? cur[key] : Array.isArray(cur) ? cur[Number(key)] : undefined;
    if (cur === undefined) throw new SchemaError(`The reference '${ref}' (at ${path}) points to nothing.`, '$ref', path);
  }
  return { schema: cur, pointer: ref === '#' ? '#' : ref };
}

/** Compiles one schema document; `$ref`s resolve against its root. */
class Compiler {
  private readonly refs = new Map<string, Node & { t: 'alt' }>();
  constructor(private readonly root: unknown) {}

  compile(schema: unknown, path: string): Node {
    if (schema === true) return ANY;
    if (schema === false) throw new SchemaError(`The schema at ${path} is 'false': no value can match it.`, null, path);
    if (!isObj(schema)) throw new SchemaError(`The schema at ${path} must be an object.`, null, path);
    for (const key of Object.keys(schema)) {
      if (!ALLOWED.has(key) && !alwaysMet(schema, key)) {
        throw new SchemaError(`The JSON Schema keyword '${key}' (at ${path}) is not supported for structured outputs; supported: ${STRUCTURAL.join(', ')}.`, key, path);
      }
    }
    for (const defs of ['$defs', 'definitions']) {
      if (schema[defs] !== undefined && !isObj(schema[defs])) throw new SchemaError(`'${defs}' (at ${path}) must be an object.`, defs, path);
    }
    if (schema.$ref !== undefined) {
      if (typeof schema.$ref !== 'string') throw new SchemaError(`'$ref' (at ${path}) must be a string.`, '$ref', path);
      return this.ref(schema.$ref, path);
    }
    if (schema.anyOf !== undefined) {
      if (!Array.isArray(schema.anyOf) || schema.anyOf.length === 0) throw new SchemaError(`'anyOf' (at ${path}) must be a non-empty array.`, 'anyOf', path);
      return alt(schema.anyOf.map((s, i) => this.compile(s, `${path}/anyOf/${i}`)));
    }
    if (schema.const !== undefined) return lit([jsonLiteral(schema.const as Json)]);
    if (schema.enum !== undefined) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0) throw new SchemaError(`'enum' (at ${path}) must be a non-empty array.`, 'enum', path);
      return lit(schema.enum.map((v) => jsonLiteral(v as Json)));
    }
    let types: string[];
    if (schema.type === undefined) {
      if (schema.properties !== undefined || schema.required !== undefined || schema.additionalProperties !== undefined) types = ['object'];
      else if (schema.items !== undefined || schema.minItems !== undefined || schema.maxItems !== undefined) types = ['array'];
      else return ANY;
    } else {
      types = Array.isArray(schema.type) ? (schema.type as unknown[]).map(String) : [String(schema.type)];
      if (types.length === 0 || types.some((t) => !TYPES.has(t)) || (typeof schema.type !== 'string' && !Array.isArray(schema.type))) {
        throw new SchemaError(`'type' (at ${path}) must be one of ${[...TYPES].join(', ')}, or a list of them.`, 'type', path);
      }
    }
    return alt(types.map((t) => this.typed(t, schema, path)));
  }

  private ref(ref: string, path: string): Node {
    let node = this.refs.get(ref);
    if (!node) {
      // A placeholder first, so recursive references find it.
      node = { t: 'alt', alts: [], min: Infinity };
      placeholders.add(node);
      this.refs.set(ref, node);
      const target = decodePointer(this.root, ref, path);
      node.alts.push(this.compile(target.schema, target.pointer));
    }
    return node;
  }

  private typed(type: string, schema: SchemaObj, path: string): Node {
    switch (type) {
      case 'string':
        return STR;
      case 'number':
        return NUM;
      case 'integer':
        return INT;
      case 'boolean':
        return BOOL;
      case 'null':
        return NULL;
      case 'array': {
        if (Array.isArray(schema.items)) throw new SchemaError(`Tuple 'items' (an array, at ${path}) are not supported.`, 'items', path);
        const count = (k: 'minItems' | 'maxItems', fallback: number): number => {
          const v = schema[k];
          if (v === undefined) return fallback;
          if (!Number.isInteger(v) || (v as number) < 0) throw new SchemaError(`'${k}' (at ${path}) must be a non-negative integer.`, k, path);
          return v as number;
        };
        const minItems = count('minItems', 0);
        const maxItems = count('maxItems', Infinity);
        if (maxItems < minItems) throw new SchemaError(`'maxItems' (at ${path}) is below 'minItems'.`, 'maxItems', path);
        const items = schema.items === undefined ? ANY : this.compile(schema.items, `${path}/items`);
        return { t: 'arr', items, minItems, maxItems, min: Infinity };
      }
      case 'object': {
        const props = schema.properties ?? {};
        if (!isObj(props)) throw new SchemaError(`'properties' (at ${path}) must be an object.`, 'properties', path);
        const required = schema.required ?? [];
        if (!Array.isArray(required) || required.some((r) => typeof r !== 'string')) {
          throw new SchemaError(`'required' (at ${path}) must be an array of property names.`, 'required', path);
        }
        const extra = schema.additionalProperties;
        if (extra !== undefined && typeof extra !== 'boolean' && !isObj(extra)) {
          throw new SchemaError(`'additionalProperties' (at ${path}) must be a boolean or a schema.`, 'additionalProperties', path);
        }
        const keys = Object.keys(props);
        if (keys.length === 0 && required.length === 0 && extra !== false) {
          // A free-form object: any keys, values of additionalProperties' schema.
          return { t: 'fobj', values: isObj(extra) ? this.compile(extra, `${path}/additionalProperties`) : ANY, min: 2 };
        }
        const list: Prop[] = keys.map((key) => ({
          key,
          lit: jsonLiteral(key),
          node: this.compile(props[key], `${path}/properties/${key}`),
          required: required.includes(key),
        }));
        for (const key of required as string[]) {
          if (!keys.includes(key)) list.push({ key, lit: jsonLiteral(key), node: ANY, required: true });
        }
        // Where a key may start, every optional property up to the next required one is a
        // candidate: compiling costs (optional)² and decoding follows each candidate at once.
        const optional = list.filter((p) => !p.required).length;
        if (optional > MAX_OPTIONAL) {
          throw new SchemaError(`The object at ${path} has ${optional} optional properties; at most ${MAX_OPTIONAL} are supported (required ones are not limited).`, 'properties', path);
        }
        return objectNode(list);
      }
      default:
        throw new SchemaError(`Unknown type '${type}' (at ${path}).`, 'type', path);
    }
  }
}

/** An object with these properties, in this order (tails are filled in by finish()). */
export function objectNode(props: Prop[]): ObjNode {
  const node: ObjNode = { t: 'obj', props, tail: [], keyCands: [], min: Infinity };
  for (let k = 0; k <= props.length; k++) {
    const cands: number[] = [];
    for (let j = k; j < props.length; j++) {
      cands.push(j);
      if (props[j]!.required) break;
    }
    node.keyCands.push(cands);
  }
  return node;
}

/** `$ref` targets, filled in after they are first referenced: never flattened into an anyOf. */
const placeholders = new WeakSet<Node>();

function alt(nodes: Node[]): Node {
  const flat: Node[] = [];
  for (const n of nodes) {
    for (const m of n.t === 'alt' && !placeholders.has(n) ? n.alts : [n]) if (!flat.includes(m)) flat.push(m);
  }
  return flat.length === 1 ? flat[0]! : { t: 'alt', alts: flat, min: Infinity };
}

function children(n: Node): Node[] {
  switch (n.t) {
    case 'obj':
      return n.props.map((p) => p.node);
    case 'fobj':
      return [n.values];
    case 'arr':
      return [n.items];
    case 'alt':
      return n.alts;
    case 'seq':
      return n.parts;
    case 'rep':
      return [n.item, n.sep];
    default:
      return [];
  }
}

/** Fewest characters of each node's values (a fixpoint: schemas may be recursive), then object tails. */
export function finish(root: Node, where: string): Node {
  const all: Node[] = [];
  const seen = new Set<Node>();
  const visit = (n: Node) => {
    if (seen.has(n)) return;
    seen.add(n);
    all.push(n);
    for (const c of children(n)) visit(c);
  };
  visit(root);
  const tailOf = (n: ObjNode): number[] => {
    const tail = new Array<number>(n.props.length + 1);
    tail[n.props.length] = 1;
    for (let j = n.props.length - 1; j >= 0; j--) {
      const p = n.props[j]!;
      tail[j] = tail[j + 1]! + (p.required ? 1 + p.lit.length + 1 + p.node.min : 0);
    }
    return tail;
  };
  const minOf = (n: Node): number => {
    switch (n.t) {
      case 'obj': {
        const tail = tailOf(n);
        return 1 + tail[0]! - (tail[0] === 1 ? 0 : 1);
      }
      case 'arr':
        return n.minItems === 0 ? 2 : 1 + n.minItems * n.items.min + n.minItems;
      case 'alt':
        return Math.min(...n.alts.map((a) => a.min));
      case 'seq':
        return n.parts.reduce((s, p) => s + p.min, 0);
      case 'rep':
        return n.item.min;
      default:
        return n.min;
    }
  };
  for (let pass = 0, changed = true; changed && pass < 1000; pass++) {
    changed = false;
    for (const n of all) {
      const m = minOf(n);
      if (m !== n.min) {
        n.min = m;
        changed = true;
      }
    }
  }
  if (!Number.isFinite(root.min)) throw new SchemaError(`The schema ${where} has no finite value: its required properties or items recurse without end.`, null, '#');
  for (const n of all) if (n.t === 'obj') n.tail = tailOf(n);
  return root;
}

/**
 * How big the schemas of one request may be, in all (response_format, or the parameters of the
 * tools a call is forced to): JSON values (objects, arrays, strings, numbers...), nesting, and
 * characters of keys and strings. Compiling is then bounded in time (a few ms at the limit),
 * since it runs on the model thread between decode steps. OpenAI's strict mode allows 5000
 * properties and 10 levels of nesting.
 */
export const SCHEMA_LIMITS = { values: 20_000, depth: 32, chars: 200_000 };
/** Optional properties per object (see Compiler.typed). */
export const MAX_OPTIONAL = 128;

/** What is left of SCHEMA_LIMITS for a request's further schemas. */
export interface SchemaBudget {
  values: number;
  chars: number;
}

export const schemaBudget = (): SchemaBudget => ({ values: SCHEMA_LIMITS.values, chars: SCHEMA_LIMITS.chars });

/** Walks the schema (without recursion: its depth is not known yet) and charges it to `budget`. */
export function chargeSchema(schema: unknown, budget: SchemaBudget): void {
  const stack: [unknown, number][] = [[schema, 1]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (depth > SCHEMA_LIMITS.depth) throw new SchemaError(`The schema nests deeper than ${SCHEMA_LIMITS.depth} levels.`, null, '#');
    if (--budget.values < 0) throw new SchemaError(`The schema is too large: more than ${SCHEMA_LIMITS.values} JSON values in all.`, null, '#');
    if (typeof v === 'string') budget.chars -= v.length;
    else if (Array.isArray(v)) for (const x of v) stack.push([x, depth + 1]);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        budget.chars -= k.length;
        stack.push([x, depth + 1]);
      }
    }
    if (budget.chars < 0) throw new SchemaError(`The schema is too large: more than ${SCHEMA_LIMITS.chars} characters of keys and strings in all.`, null, '#');
  }
}

/** A JSON schema's grammar (throws SchemaError for what is not supported, or too large). */
export function compileSchema(schema: unknown, budget: SchemaBudget = schemaBudget()): Node {
  chargeSchema(schema, budget);
  return finish(new Compiler(schema).compile(schema, '#'), '');
}

/** Throws SchemaError when the schema cannot be enforced; `budget` carries over to the request's next schema. */
export function checkSchema(schema: unknown, budget: SchemaBudget = schemaBudget()): void {
  compileSchema(schema, budget);
}
