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
  /**
   * The share of the time batch work alone may keep the model busy (0 < duty ≤ 1; absent: 1):
   * after a decode step in which every sequence is batch work (ai.submit_chat, Batch API lines),
   * the scheduler rests (1 − duty) / duty of that step, and an interactive request ends the rest.
   */
  batchDuty?: number;
  /** Bytes of free KV arrays kept for reuse (kv-pool.ts); absent: DEFAULT_KV_POOL_BYTES, 0: none. */
  kvPoolBytes?: number;
}

export const DEFAULT_KV_POOL_BYTES = 1024 * 1024 * 1024;

/**
 * SWITCHYARD_KV_POOL_MB (default 1024; 0: every cache array is new): see BatchLimits.kvPoolBytes.
 * 1 GiB holds the arrays of a batch of 8 over a 1,000-token prompt of the SmolLM2-shaped model
 * (~500 MB with the size classes) and those the prefills around it give back.
 */
export function kvPoolBytes(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.SWITCHYARD_KV_POOL_MB;
  const mb = raw === undefined || raw.trim() === '' ? NaN : Number(raw);
  return Number.isFinite(mb) && mb >= 0 ? Math.floor(mb * 1024 * 1024) : DEFAULT_KV_POOL_BYTES;
}

/**
 * SWITCHYARD_BATCH_DUTY (default 0.5 on CPU, 1 on CUDA): see BatchLimits.batchDuty. On CPU the
 * model's threads take the cores that serve, Postgres and the worker's own event loop need to
 * answer an interactive request; a rest after each batch-only step leaves them room.
 */
export function batchDuty(device: string, env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.SWITCHYARD_BATCH_DUTY);
  if (env.SWITCHYARD_BATCH_DUTY && Number.isFinite(v) && v > 0 && v <= 1) return v;
  return device === 'cpu' ? 0.5 : 1;
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

/** SWITCHYARD_MAX_BATCH, SWITCHYARD_MAX_BATCH_TOKENS, SWITCHYARD_PREFILL_CHUNK, SWITCHYARD_PREFIX_CACHE_MB, SWITCHYARD_BATCH_DUTY and SWITCHYARD_KV_POOL_MB. */
export function batchLimitsFromEnv(device = 'cpu'): BatchLimits {
  return {
    maxSequences: maxBatchSequences(),
    maxTokens: maxBatchTokens(),
    prefillChunk: positiveSetting(process.env, 'SWITCHYARD_PREFILL_CHUNK', 128),
    prefixCacheBytes: prefixCacheBytes(),
    batchDuty: batchDuty(device),
    kvPoolBytes: kvPoolBytes(),
  };
}
