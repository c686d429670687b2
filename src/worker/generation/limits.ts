import { maxBatchSequences, maxBatchTokens, positiveSetting } from '../../protocol/limits.js';

/** Bounds of a model's decode batch (see scheduler.ts); read by the worker process too. */
export interface BatchLimits {
  /** Most sequences decoding at once (a request with n choices is n sequences). */
  maxSequences: number;
  /** Most KV-cache tokens reserved at once: Σ n × (prompt + max new tokens). Bounds memory; one request may take all of it, no more. */
  maxTokens: number;
  /** Most prompt tokens prefilled between two decode steps: a long prompt is prefilled in chunks. */
  prefillChunk: number;
  /** Bytes of KV the prefix cache may hold (prefix-cache.ts); absent or 0: no prefix cache. */
  prefixCacheBytes?: number;
}

/**
 * SWITCHYARD_PREFIX_CACHE_MB (default 256; 0 turns the cache off): per chat model, on top of the
 * batch's own cache. 256 MiB holds about 5,700 tokens of a SmolLM2-135M-shaped model (46 KiB a
 * token: 30 layers × keys and values × 3 heads × 64 × 4 bytes).
 */
export function prefixCacheBytes(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.SWITCHYARD_PREFIX_CACHE_MB;
  const mb = raw === undefined || raw.trim() === '' ? 256 : Number(raw);
  return Number.isFinite(mb) && mb >= 0 ? Math.floor(mb * 1024 * 1024) : 256 * 1024 * 1024;
}

/** SWITCHYARD_MAX_BATCH, SWITCHYARD_MAX_BATCH_TOKENS, SWITCHYARD_PREFILL_CHUNK and SWITCHYARD_PREFIX_CACHE_MB. */
export function batchLimitsFromEnv(): BatchLimits {
  return {
    maxSequences: maxBatchSequences(),
    maxTokens: maxBatchTokens(),
    prefillChunk: positiveSetting(process.env, 'SWITCHYARD_PREFILL_CHUNK', 128),
    prefixCacheBytes: prefixCacheBytes(),
  };
}
