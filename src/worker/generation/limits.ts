import { maxBatchSequences, maxBatchTokens, positiveSetting } from '../../protocol/limits.js';

/** Bounds of a model's decode batch (see scheduler.ts); read by the worker process too. */
export interface BatchLimits {
  /** Most sequences decoding at once (a request with n choices is n sequences). */
  maxSequences: number;
  /** Most KV-cache tokens reserved at once: Σ n × (prompt + max new tokens). Bounds memory; one request may take all of it, no more. */
  maxTokens: number;
  /** Most prompt tokens prefilled between two decode steps: a long prompt is prefilled in chunks. */
  prefillChunk: number;
}

/** SWITCHYARD_MAX_BATCH, SWITCHYARD_MAX_BATCH_TOKENS and SWITCHYARD_PREFILL_CHUNK. */
export function batchLimitsFromEnv(): BatchLimits {
  return {
    maxSequences: maxBatchSequences(),
    maxTokens: maxBatchTokens(),
    prefillChunk: positiveSetting(process.env, 'SWITCHYARD_PREFILL_CHUNK', 128),
  };
}
