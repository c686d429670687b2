import { compileValidator, type Schema } from './validate.js';
import { errors } from './errors.js';

/** OpenAI's limit on inputs per request; the server splits them into model-sized batches. */
export const MAX_INPUTS = 2048;

export interface EmbeddingRequest {
  input: string | string[] | number[] | number[][];
  model: string;
  dimensions?: number | null;
  encoding_format?: 'float' | 'base64' | null;
  user?: string | null;
}

const tokenIds = { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0 } };

export const embeddingRequestSchema: Schema = {
  type: 'object',
  required: ['input', 'model'],
  additionalProperties: false,
  properties: {
    input: {
      anyOf: [
        { type: 'string', minLength: 1 },
        { type: 'array', minItems: 1, maxItems: MAX_INPUTS, items: { type: 'string', minLength: 1 } },
        { ...tokenIds },
        { type: 'array', minItems: 1, maxItems: MAX_INPUTS, items: tokenIds },
      ],
      'x-expect': `a non-empty string, a list of up to ${MAX_INPUTS} non-empty strings, a list of token ids, or a list of up to ${MAX_INPUTS} token-id lists`,
    },
    model: { type: 'string', minLength: 1 },
    dimensions: { anyOf: [{ type: 'integer', minimum: 1 }, { type: 'null' }], 'x-expect': 'a positive integer or null' },
    encoding_format: { anyOf: [{ enum: ['float', 'base64'] }, { type: 'null' }], 'x-expect': "'float' or 'base64'" },
    user: { anyOf: [{ type: 'string' }, { type: 'null' }], 'x-expect': 'a string or null' },
  },
};

const checkShape = compileValidator<EmbeddingRequest>(embeddingRequestSchema);

export function parseEmbeddingRequest(body: unknown): EmbeddingRequest {
  const req = checkShape(body);
  const list = toInputs(req);
  list.forEach((x, i) => {
    // Lone UTF-16 surrogates cannot be encoded as UTF-8, so no tokenizer can see them faithfully.
    if (typeof x === 'string' && !x.isWellFormed()) {
      throw errors.invalid(`input[${i}] is not valid Unicode (it contains a lone surrogate).`, 'input');
    }
  });
  return req;
}

/** Every accepted `input` shape as a list of inputs: texts, or token-id lists. */
export function toInputs(req: EmbeddingRequest): (string | number[])[] {
  const input = req.input;
  if (typeof input === 'string') return [input];
  if (input.length > 0 && typeof input[0] === 'number') return [input as number[]];
  return input as string[] | number[][];
}

export interface Embedding {
  object: 'embedding';
  index: number;
  /** float: the vector; base64: little-endian float32 bytes. */
  embedding: number[] | string;
}

export interface EmbeddingList {
  object: 'list';
  data: Embedding[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

/** `dimensions`: keep the first d components and re-normalise (Matryoshka-style truncation). */
export function truncateVector(v: ArrayLike<number>, dims: number | null | undefined): ArrayLike<number> {
  if (!dims || dims >= v.length) return v;
  const cut = Array.prototype.slice.call(v, 0, dims) as number[];
  const norm = Math.sqrt(cut.reduce((s, x) => s + x * x, 0)) || 1;
  return cut.map((x) => x / norm);
}

/** Little-endian float32, base64: a Float32Array's own bytes, without a copy. */
export function encodeBase64(v: ArrayLike<number>): string {
  const f = v instanceof Float32Array ? v : Float32Array.from(v);
  // Float32Array is little-endian on every platform Node runs on; check rather than assume.
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('big-endian hosts are not supported');
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength).toString('base64');
}

/** The float form: plain numbers (a Float32Array would serialise as an object). */
export const toNumbers = (v: ArrayLike<number>): number[] => Array.from(v);
