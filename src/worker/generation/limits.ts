/** Bounds of a model's decode batch (see scheduler.ts); read by the worker process too. */
export interface BatchLimits {
  /** Most sequences decoding at once (a request with n choices is n sequences). */
  maxSequences: number;
  /** Most KV-cache tokens reserved at once: Σ n × (prompt + max new tokens). Bounds memory. */
  maxTokens: number;
  /** Most prompt tokens prefilled between two decode steps: a long prompt is prefilled in chunks. */
  prefillChunk: number;
}

const positive = (name: string, fallback: number): number => {
  const v = Number(process.env[name]);
  return Number.isInteger(v) && v > 0 ? v : fallback;
};

/** SWITCHYARD_MAX_BATCH, SWITCHYARD_MAX_BATCH_TOKENS and SWITCHYARD_PREFILL_CHUNK. */
export function batchLimitsFromEnv(): BatchLimits {
  return {
    maxSequences: positive('SWITCHYARD_MAX_BATCH', 16),
    maxTokens: positive('SWITCHYARD_MAX_BATCH_TOKENS', 65_536),
    prefillChunk: positive('SWITCHYARD_PREFILL_CHUNK', 128),
  };
}
