export type { TokenLogprob } from '../../protocol/shared.js';

/**
 * log-softmax of one row of raw logits (before temperature, penalties or top_p: what the model
 * itself assigns, as OpenAI and vLLM report), for `token` and the `k` most likely tokens.
 */
export function logprobsOf(logits: Float32Array, token: number, k: number): { logprob: number; top: { id: number; logprob: number }[] } {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const logZ = max + Math.log(sum);
  const top: { id: number; logprob: number }[] = [];
  if (k > 0) {
    // Keep the k largest in a small sorted array: O(V·k) worst case, k ≤ 20, usually far less.
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i]!;
      if (top.length === k && v <= top[k - 1]!.logprob) continue;
      let at = top.length;
      while (at > 0 && top[at - 1]!.logprob < v) at--;
      top.splice(at, 0, { id: i, logprob: v });
      if (top.length > k) top.pop();
    }
    for (const t of top) t.logprob -= logZ;
  }
  return { logprob: logits[token]! - logZ, top };
}
