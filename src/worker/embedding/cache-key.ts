import { createHash } from 'node:crypto';
import type { ModelSpec } from '../models-source.js';
import type { EmbedInput } from './embed.js';

/**
 * Embedding cache keys, identical to SQL's (sql/020_embeddings.sql): ai.embed reads the cache
 * without a worker, so both sides must compute the same bytes. test/worker/embedding/cache-key.test.ts
 * compares them.
 */

/**
 * ai.embedding_model_fingerprint: SHA-256 over the configuration a vector is computed under,
 * each field as its UTF-8 length, ':' and itself. A vector cached under another source,
 * revision, dtype, pooling, normalization, truncation or context length is never returned.
 */
export function modelFingerprint(spec: Pick<ModelSpec, 'source' | 'revision' | 'dtype' | 'pooling' | 'normalize' | 'truncate' | 'contextLength'>): Buffer {
  const fields = [spec.source, spec.revision, spec.dtype, spec.pooling, String(spec.normalize), String(spec.truncate), spec.contextLength === null ? '-' : String(spec.contextLength)];
  return createHash('sha256')
    .update(fields.map((f) => `${Buffer.byteLength(f, 'utf8')}:${f}`).join(''), 'utf8')
    .digest();
}

const TEXT = Buffer.from([1]);
const IDS = Buffer.from([2]);

/**
 * ai.embedding_cache_key: SHA-256 of the fingerprint, a kind byte (1 text, 2 token ids) and the
 * input: a text as UTF-8, ids as Postgres prints a jsonb list ("[1, 2, 3]").
 */
export function cacheKey(fingerprint: Buffer, input: EmbedInput): Buffer {
  const h = createHash('sha256').update(fingerprint);
  if (typeof input === 'string') h.update(TEXT).update(input, 'utf8');
  else h.update(IDS).update(`[${input.join(', ')}]`, 'utf8');
  return h.digest();
}
