import { readFile } from 'node:fs/promises';
import { AutoModel, AutoModelForCausalLM, AutoTokenizer, env, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import { InferenceSession } from 'onnxruntime-node';
import type { EmbedModel } from './embedding/embed.js';
import type { ChatModel } from './generation/generate.js';
import { ThreadError } from './generation/thread-error.js';
import { groupAttention } from './generation/grouped-attention.js';
import { keepLogitRows } from './generation/logits-rows.js';
import { inputBoundOf, wordPieceShortener } from './input-bound.js';
import type { InputBound } from '../protocol/limits.js';
import { onnxFileFor, pointEnvAt, type ModelSpec, type ResolvedSource } from './models-source.js';

export interface LoadedChatModel extends ChatModel {
  spec: ModelSpec;
  /** When a text certainly cannot fit, known without tokenizing it (null: no sound rule for this tokenizer). */
  inputBound: InputBound | null;
  /** Attention products the load rewrote to grouped KV heads (grouped-attention.ts); 0: the graph as exported. */
  groupedAttention: number;
  /** Cache outputs that hold only the step's new keys and values (grouped-attention.ts, `split`). */
  splitCache: number;
}

export type ProgressFn = (file: string, percent: number) => void;

function ids(value: unknown): number[] {
  if (typeof value === 'number') return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === 'number');
  return [];
}

function explain(spec: ModelSpec, where: ResolvedSource, err: unknown): ThreadError {
  const detail = err instanceof Error ? err.message : String(err);
  const hint =
    where.kind === 'local'
      ? `Check that ${where.dir} holds config.json, tokenizer.json, tokenizer_config.json and ${onnxFileFor(spec.dtype)} (dtype ${spec.dtype}).`
      : `It could not be fetched from the model hub. On an offline machine, download the ONNX export ` +
        `(transformers.js layout, ${onnxFileFor(spec.dtype)} for dtype ${spec.dtype}) elsewhere and either put it under ` +
        `SWITCHYARD_MODELS_DIR as ${spec.source}/ or register the folder: switchyard models add ${spec.name} --task ${spec.task} --source /path/to/folder. ` +
        `Gated models need HF_TOKEN.`;
  return ThreadError.server(`Could not load model '${spec.name}' from '${spec.source}': ${detail}. ${hint}`, 'model_load_failed', 503);
}

/**
 * A model's tokenizer alone (no graph), for work outside the model thread: the vectorizer's
 * token splitter. Callers in one thread serialise loads, as for loadFiles.
 */
export async function loadTokenizer(spec: ModelSpec, modelsDir: string | undefined): Promise<PreTrainedTokenizer> {
  const where = pointEnvAt(env, spec.source, modelsDir);
  try {
    return await AutoTokenizer.from_pretrained(where.id, { revision: spec.revision });
  } catch (err) {
    throw explain(spec, where, err);
  }
}

/**
 * Loads a model's tokenizer and graph with transformers.js. Its `env` (local path, remote
 * switch) is process-global, so loads are serialised by the caller.
 */
export async function loadFiles(
  spec: ModelSpec,
  modelsDir: string | undefined,
  onProgress: ProgressFn,
  auto: { from_pretrained: typeof AutoModel.from_pretrained },
): Promise<{ where: ResolvedSource; tokenizer: PreTrainedTokenizer; model: PreTrainedModel }> {
  const where = pointEnvAt(env, spec.source, modelsDir);
  const opts = {
    revision: spec.revision,
    progress_callback: (info: { status: string; file?: string; progress?: number }) => {
      // Local files "load" in milliseconds; progress only means something for downloads.
      if (where.kind === 'hub' && info.status === 'progress' && info.file) onProgress(info.file, info.progress ?? 0);
    },
  };
  try {
    const tokenizer = await AutoTokenizer.from_pretrained(where.id, opts);
    const model = await auto.from_pretrained(where.id, {
      ...opts,
      dtype: spec.dtype as 'fp32',
      device: spec.device,
      session_options: sessionOptions(),
    });
    return { where, tokenizer, model };
  } catch (err) {
    throw explain(spec, where, err);
  }
}

/**
 * onnxruntime's CPU threading. SWITCHYARD_THREADS: intra-op threads per model (default:
 * onnxruntime's own, which on Linux is half the logical CPUs, at least one: one thread on the
 * 2-vCPU machines this project runs on, where a forward keeps 1.00 core busy; 2 threads kept
 * 1.65, 2026-12-01). SWITCHYARD_ORT_SPINNING:
 * whether those threads spin while waiting for work (`session.intra_op.allow_spinning`); 0
 * (no spinning) for every model unless set to 1.
 * onnxruntime spins by default; a spinning thread keeps its core busy between
 * operators and after each call, the time serve, Postgres and the worker's own event loop need
 * when they share the cores. Measured on 2 cores (`SWITCHYARD_ORT_SPINNING=0|1 npm run bench --
 * --quick --only sql`, issue 14): an ai.embed per row spent a median 9.0 ms claimed→finished
 * without spinning against 39.2 ms with it (13.2 against 24.3 ms in a second, busier pair of
 * runs), 52.7 against 12.9 rows/s. In-process alone (3 rounds of a 256-input batch and 64 calls
 * of one input, twice per setting, on a machine at load 3–6): the same work took 7.7–8.4 CPU-s
 * without spinning against 10.4–10.8 with it, and was no slower (batch 256: 99–381 against
 * 58–165 inputs/s; one input: 6.1–9.1 against 5.7–14.7 ms). Chat models (issue 13): 1-token
 * chat completions of the fixture model through two stacks side by side, 300 pairs in a random
 * order at load 3 (a scratch A/B of serve + worker with the setting at 0 and at 1), p50 13.1 ms
 * without spinning against 16.9 ms with it, p90 25.6 against 42.0 ms; decode of the
 * SmolLM2-shaped model in-process, 6 interleaved rounds of 32 tokens, 39.2 tokens/s without
 * against 38.7 with: spinning bought the decode loop nothing and cost the gateway's own work
 * its cores. Both the worker and the bench's in-process side load models with these options.
 * Embeddings gain from a second thread: SWITCHYARD_THREADS=1 embedded a burst of 256 at 136
 * inputs/s in two quick runs, against 173–225 with 2 (`SWITCHYARD_THREADS=1|2 npm run bench --
 * --quick --only embeddings`, issue 14). Chat is a trade (`SWITCHYARD_THREADS=2 npm run bench --
 * --only prefix,sampling,int8,context` against the default, back to back, 2026-12-01): with 2
 * threads a cold 1,000-token prefill took 1,615 against 2,124 ms and 8 streams decoded 167
 * against 146 tokens/s, fp32 at batch 1 was unchanged (33 tokens/s), but int8 at batch 1, the
 * CPU default, fell to 56 from 88 tokens/s (a second pair, `--only int8`: 44 against 69):
 * without spinning, each of a step's small operators wakes the second thread. So the default
 * stays onnxruntime's; a machine that serves mostly long prompts or many streams, with cores to
 * spare, sets SWITCHYARD_THREADS.
 */
export function sessionOptions(): Record<string, unknown> {
  const threads = Number(process.env.SWITCHYARD_THREADS);
  const spinning = process.env.SWITCHYARD_ORT_SPINNING === '1' ? '1' : '0';
  return {
    ...(Number.isInteger(threads) && threads > 0 ? { intraOpNumThreads: threads } : {}),
    extra: { session: { intra_op: { allow_spinning: spinning } } },
  };
}

/**
 * SWITCHYARD_GROUPED_ATTENTION (default 1; 0 loads graphs as exported): whether a chat model's
 * graph is rewritten at load so that its attention reads the grouped KV heads in place instead
 * of repeating them per query head (grouped-attention.ts; outputs bit-identical). Measured with
 * onnxruntime alone on the SmolLM2-shaped bench model (issue 15, 2 cores, load 2, median of 6
 * interleaved): a decode step at batch 1 × 1,023 tokens 57 against 71 ms (40 tokens: 38 against
 * 40), and 8 rows × 16 tokens over a 992-token past 1,027 against 1,455 ms (load 4).
 */
export function groupedAttentionOn(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.SWITCHYARD_GROUPED_ATTENTION !== '0';
}

/**
 * SWITCHYARD_SPLIT_ATTENTION (default 1; 0 keeps the exported Concat of past and new keys and
 * values): with the grouping, whether each layer attends to the cache it is given and to the
 * step's new keys and values apart, so that `present.*` holds only the new ones and the
 * scheduler keeps the cache in place (generate.ts, issue 15). Outputs close to the exported
 * graph's, not bit-identical (about 1e-5 on logits of magnitude ~5). Measured with onnxruntime
 * alone on the SmolLM2-shaped bench model (2 cores, median of 16 interleaved, two runs): a decode
 * step at batch 1 over 1,024 tokens 30.3 and 31.3 ms against 41.7–49.0 grouped only, at 40
 * tokens 23.3 and 24.4 against 24.9–32.2 (`npx tsx bench/kv-copy.ts` measures the copy it removes).
 */
export function splitAttentionOn(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.SWITCHYARD_SPLIT_ATTENTION !== '0';
}

/**
 * SWITCHYARD_KEEP_LOGITS (default 1; 0 leaves the projection onto the vocabulary as exported):
 * whether a chat model's graph is rewritten at load to compute logits only for the positions the
 * scheduler reads (logits-rows.ts): a prefill's last position, not all of them. Kept rows
 * bit-identical. Measured with onnxruntime alone on the SmolLM2-shaped bench model (2 cores): see
 * BENCHMARKS.md, "The compute path (issue 15)".
 */
export function keepLogitsOn(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.SWITCHYARD_KEEP_LOGITS !== '0';
}

interface Rewrites {
  rewritten: number;
  split: number;
  keepsLogits: boolean;
}

/**
 * Runs `load` with onnxruntime's session creation rewriting each .onnx file it is given by path
 * (transformers.js passes paths on Node): the only way in, as transformers.js takes no graph
 * bytes. Loads in a thread are serialised (see loadFiles), so the swap covers this load only.
 */
async function withRewrites<T>(load: () => Promise<T>, grouped: boolean, keep: boolean): Promise<{ loaded: T } & Rewrites> {
  const done: Rewrites = { rewritten: 0, split: 0, keepsLogits: false };
  if (!grouped && !keep) return { loaded: await load(), ...done };
  const create = InferenceSession.create;
  const call = (arg: unknown, rest: unknown[]) => (create as (...a: unknown[]) => Promise<InferenceSession>).call(InferenceSession, arg, ...rest);
  const rewriting = async (arg: unknown, ...rest: unknown[]): Promise<InferenceSession> => {
    if (typeof arg === 'string' && arg.endsWith('.onnx')) {
      const bytes = await readFile(arg);
      const out = grouped ? groupAttention(bytes, { split: splitAttentionOn() }) : null;
      if (out) {
        done.rewritten += out.rewritten;
        done.split += out.split;
      }
      const kept = keep ? keepLogitRows(out?.bytes ?? bytes) : null;
      if (kept) done.keepsLogits = true;
      if (out || kept) return call(kept ?? out!.bytes, rest);
    }
    return call(arg, rest);
  };
  InferenceSession.create = rewriting as typeof create;
  try {
    return { loaded: await load(), ...done };
  } finally {
    InferenceSession.create = create;
  }
}

/** Loads a causal LM and its tokenizer for chat. */
export async function loadChatModel(spec: ModelSpec, modelsDir: string | undefined, onProgress: ProgressFn): Promise<LoadedChatModel> {
  const load = () => loadFiles(spec, modelsDir, onProgress, AutoModelForCausalLM);
  const { loaded, rewritten, split, keepsLogits } = await withRewrites(load, groupedAttentionOn(), keepLogitsOn());
  const { where, tokenizer, model } = loaded;
  const config = model.config as unknown as Record<string, unknown>;
  const generation = (model.generation_config ?? {}) as Record<string, unknown>;
  const eosIds = new Set([...ids(generation.eos_token_id), ...ids(config.eos_token_id), ...ids(tokenizer.eos_token_id)]);
  if (eosIds.size === 0) throw explain(spec, where, new Error('no end-of-sequence token in config.json or generation_config.json'));
  const contextLength =
    spec.contextLength ?? (config.max_position_embeddings as number | undefined) ?? (tokenizer.model_max_length as number | undefined) ?? 2048;
  const cacheInputs = ((model as unknown as { sessions: Record<string, { inputNames: string[] }> }).sessions.model?.inputNames ?? []).filter((n) => n.startsWith('past_key_values')).length;
  return {
    spec, model, tokenizer, eosIds, contextLength, inputBound: inputBoundOf(tokenizer, contextLength), groupedAttention: rewritten, splitCache: split,
    sharedPast: cacheInputs > 0 && split === cacheInputs, keepsLogits,
  };
}

export interface LoadedEmbedModel extends EmbedModel {
  spec: ModelSpec;
  inputBound: InputBound | null;
}

/** Loads an encoder (BERT-like) and its tokenizer for embeddings. */
export async function loadEmbedModel(spec: ModelSpec, modelsDir: string | undefined, onProgress: ProgressFn): Promise<LoadedEmbedModel> {
  const { tokenizer, model } = await loadFiles(spec, modelsDir, onProgress, AutoModel);
  const config = model.config as unknown as Record<string, unknown>;
  const positions = (config.max_position_embeddings as number | undefined) ?? 512;
  const tokMax = tokenizer.model_max_length as number | undefined;
  const maxTokens = spec.contextLength ?? Math.min(positions, tokMax && tokMax < 1e6 ? tokMax : positions);
  const inputNames = (model as unknown as { sessions: Record<string, { inputNames: string[] }> }).sessions.model?.inputNames ?? [];
  return {
    spec,
    model,
    tokenizer,
    dimensions: (config.hidden_size as number | undefined) ?? 0,
    maxTokens,
    vocabSize: (config.vocab_size as number | undefined) ?? Number.MAX_SAFE_INTEGER,
    pooling: spec.pooling,
    normalize: spec.normalize,
    truncate: spec.truncate,
    typeIds: inputNames.includes('token_type_ids'),
    inputBound: inputBoundOf(tokenizer, maxTokens),
    shorten: wordPieceShortener(tokenizer),
  };
}
