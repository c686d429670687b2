import type { Prompt, SamplingParams } from '../protocol/chat.js';
import type { FinishReason } from '../protocol/shared.js';
import type { ErrorBody } from '../protocol/errors.js';
import type { TokenLogprob } from './generation/logprobs.js';
import type { ChoiceResult } from './generation/generate.js';
import type { ModelSpec } from './models-source.js';
import type { EmbedInput } from './embedding/embed.js';
import type { WorkerBatchStats } from '../db/workers-repo.js';
import type { InputBound } from '../protocol/limits.js';
import type { RerankInput, RerankOutput } from './rerank/score.js';

/** Messages between a worker process and its model thread (structured-clone safe). */
export type ToThread =
  | { type: 'load'; spec: ModelSpec }
  | { type: 'generate'; id: string; spec: ModelSpec; prompt: Prompt; params: SamplingParams; background?: boolean; cacheScope?: string }
  | { type: 'embed'; id: string; spec: ModelSpec; inputs: EmbedInput[] }
  | { type: 'rerank'; id: string; spec: ModelSpec; inputs: RerankInput[] }
  | { type: 'cancel'; id: string };

export interface ThreadErrorData {
  kind: 'user' | 'cancelled' | 'server';
  status: number;
  body: ErrorBody;
  generatedTokens?: number;
}

export type FromThread =
  | { type: 'progress'; model: string; file: string; percent: number }
  | { type: 'loaded'; model: string; contextLength: number; dimensions: number | null; inputBound: InputBound | null; ms: number; groupedAttention: number; splitCache: number; keepsLogits: boolean }
  | { type: 'load-failed'; model: string; error: ThreadErrorData }
  | { type: 'started'; id: string; promptTokens: number }
  | { type: 'delta'; id: string; index: number; text: string; finishReason: FinishReason | null; logprobs?: TokenLogprob[]; stopSequence?: string }
  | { type: 'done'; id: string; promptTokens: number; choices: ChoiceResult[] }
  | { type: 'embedded'; id: string; vectors: (Float32Array | null)[]; tokens: number[]; errors: (ThreadErrorData['body'] | null)[]; dimensions: number }
  | { type: 'reranked'; id: string; outputs: RerankOutput[] }
  | { type: 'error'; id: string; error: ThreadErrorData }
  /** Every second while a chat model is loaded: its decode batch's counters and load. */
  | { type: 'stats'; stats: Record<string, WorkerBatchStats> };
