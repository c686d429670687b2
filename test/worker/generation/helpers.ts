import { inject } from 'vitest';
import type { Tensor } from '@huggingface/transformers';
import type { SamplingParams } from '../../../src/protocol/chat.js';
import { loadChatModel, type LoadedChatModel } from '../../../src/worker/loader.js';
import { BatchScheduler, type BatchLimits } from '../../../src/worker/generation/scheduler.js';
import type { ChoiceResult } from '../../../src/worker/generation/generate.js';
import { makeRng } from '../../../src/worker/generation/sampler.js';

/** What the scheduler's tests share: the tiny synthetic chat model, prompts, and a staggered submit. */

export const LIMITS: BatchLimits = { maxSequences: 16, maxTokens: 65_536, prefillChunk: 128 };

export async function loadTiny(): Promise<LoadedChatModel> {
  const spec = {
    name: 'tiny-chat', task: 'chat' as const, source: 'tiny-chat', revision: 'main', dtype: 'fp32', device: 'cpu' as const,
    chatTemplate: null, contextLength: null, pooling: 'mean' as const, normalize: true, truncate: false,
  };
  return loadChatModel(spec, inject('modelsDir' as never) as string, () => {});
}

export const params = (over: Partial<SamplingParams> = {}): SamplingParams => ({
  maxTokens: 12, temperature: 0, topP: 1, n: 1, stop: [], seed: null,
  frequencyPenalty: 0, presencePenalty: 0, logprobs: null, echo: false, constraint: null, ...over,
});

/** Prompts of different lengths (token ids drawn from the vocabulary, seeded). */
export function prompts(count: number, seed = 7): number[][] {
  const rng = makeRng(seed);
  return Array.from({ length: count }, (_, i) => Array.from({ length: 3 + i * 5 + Math.floor(rng() * 4) }, () => 100 + Math.floor(rng() * 40_000)));
}

export const never = new AbortController().signal;
export const noop = () => {};

/** One request on a scheduler of its own (no prefix cache: LIMITS leaves it off). */
export async function alone(m: LoadedChatModel, prompt: number[], p: SamplingParams): Promise<ChoiceResult[]> {
  return new BatchScheduler(m, LIMITS).submit(prompt, p, { signal: never, onDelta: noop });
}

/**
 * Submits request i+1 once request i has produced `gap` tokens: each joins a batch that is
 * already decoding, at a different step.
 */
export async function staggered(s: BatchScheduler, ps: number[][], p: (i: number) => SamplingParams, gap = 2, signals: AbortSignal[] = []) {
  const results: Promise<ChoiceResult[]>[] = [];
  const submit = (i: number) => {
    let deltas = 0;
    let next = false;
    // A delta may carry no text (a token that ends mid-character): count calls, and go on at
    // the latest when request i finishes.
    const go = () => {
      if (!next && i + 1 < ps.length) submit(i + 1);
      next = true;
    };
    results[i] = s.submit(ps[i]!, p(i), {
      signal: signals[i] ?? never,
      onDelta: (_index, _text, finish) => {
        if (++deltas >= gap || finish) go();
      },
    });
    void results[i].finally(go);
  };
  submit(0);
  // Every request has been submitted by the time the first one can finish its gap.
  const settled: (ChoiceResult[] | Error)[] = [];
  for (let i = 0; i < ps.length; i++) {
    while (!results[i]) await new Promise((r) => setTimeout(r, 5));
    settled[i] = await results[i]!.catch((e: Error) => e);
  }
  return settled;
}

/** A forward's inputs as the tests read them: tensors, and `past_key_values`' tensors by name. */
export type ForwardInputs = Record<string, Tensor & Record<string, Tensor>>;

/**
 * Runs `body` with the model's forward replaced by `around`, which is handed each call's inputs
 * and the real forward (to see the calls, or to act between them); the real one is back after
 * `body`, whatever happens.
 */
export async function aroundForward<T>(
  m: LoadedChatModel,
  around: (inputs: ForwardInputs, forward: (inputs: ForwardInputs) => Promise<unknown>) => Promise<unknown>,
  body: () => Promise<T>,
): Promise<T> {
  const forward = m.model.forward.bind(m.model);
  m.model.forward = ((inputs: ForwardInputs) => around(inputs, forward)) as typeof m.model.forward;
  try {
    return await body();
  } finally {
    m.model.forward = forward;
  }
}

/** The fixtures' ONNX graph builder (fixtures/models/generator/onnx-builder.mjs), typed as far as the tests use it. */
export interface GraphBuilder {
  input(name: string, type: number, shape: (number | string)[]): string;
  output(name: string, type: number, shape: (number | string)[]): void;
  op(type: string, inputs: string[], attrs?: Record<string, unknown>, outputs?: string[]): string;
  floatInit(name: string, dims: number[], data: number[]): string;
  int64Init(name: string, values: number[], dims?: number[]): string;
  toModelBytes(): Uint8Array;
}

export async function graphBuilder(): Promise<{
  GraphBuilder: new (name: string) => GraphBuilder;
  DT: { FLOAT: number; INT64: number };
  constTensor(type: number, dims: number[], values: number[]): unknown;
}> {
  const path = '../../../fixtures/models/generator/onnx-builder.mjs';
  return (await import(path)) as Awaited<ReturnType<typeof graphBuilder>>;
}
