/** Wire types shared by several endpoints. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export type FinishReason = 'stop' | 'length';

/** One token's log-probability, as the engine reports it (endpoints shape it their own way). */
export interface TokenLogprob {
  id: number;
  token: string;
  /** null for the first prompt token of an echoed prompt (nothing predicts it). */
  logprob: number | null;
  top: { id: number; token: string; logprob: number }[];
}

export const nullable = (schema: Record<string, unknown>) => ({ anyOf: [schema, { type: 'null' }], 'x-expect': `${schema['x-expect'] ?? schema.type} or null` });

/** OpenAI ids look like `chatcmpl-<alnum>`; ours embed the request's uuid so logs can be joined. */
export function wireId(prefix: string, requestId: string): string {
  return `${prefix}-${requestId.replaceAll('-', '')}`;
}
