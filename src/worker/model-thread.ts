/**
 * Runs inside a worker_thread. Model calls block the event loop for their whole duration
 * (0.6 s for 256 embeddings, 2.4 s for a 1000-token prefill on these machines), so they live
 * here, away from the loop that keeps the job queue, LISTEN and event publishing responsive.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { BatchScheduler } from './generation/scheduler.js';
import { batchLimitsFromEnv } from './generation/limits.js';
import { createConstraint, SchemaError, vocabularyOf, type ConstraintSpec, type TokenConstraint } from './generation/constrain/index.js';
import { ThreadError } from './generation/thread-error.js';
import { loadChatModel, loadEmbedModel, type LoadedChatModel, type LoadedEmbedModel } from './loader.js';
import { embed } from './embedding/embed.js';
import { loadRerankModel, rerank, type RerankModel } from './rerank/score.js';
import { TemplateSandbox } from './generation/template-sandbox.js';
import type { ModelSpec } from './models-source.js';
import type { FromThread, ToThread } from './thread-protocol.js';
import type { WorkerBatchStats } from '../db/workers-repo.js';
import type { Prompt, SamplingParams } from '../protocol/chat.js';
import { needsMoreThan, promptTexts } from '../protocol/limits.js';

const port = parentPort!;
const modelsDir = (workerData as { modelsDir?: string } | undefined)?.modelsDir;
/**
 * Messages posted in one turn of this thread's event loop travel together, as one array, once
 * the turn ends: each postMessage wakes the worker's main thread, and on a machine whose cores
 * are shared that wake-up, not the copy, is the cost (a CPU profile put the thread's
 * postMessage at about 1 ms per 1-token request, three messages each). A decode step's deltas
 * for every stream, and a request's last delta with its `done`, are one message.
 */
let outbox: FromThread[] | null = null;
function post(msg: FromThread): void {
  if (outbox) {
    outbox.push(msg);
    return;
  }
  outbox = [msg];
  setImmediate(() => {
    const batch = outbox!;
    outbox = null;
    port.postMessage(batch.length === 1 ? batch[0] : batch);
  });
}

type Loaded = LoadedChatModel | LoadedEmbedModel | RerankModel;
const models = new Map<string, Promise<Loaded>>();
let loading: Promise<unknown> = Promise.resolve();
const running = new Map<string, AbortController>();

const specKey = (s: ModelSpec) => JSON.stringify(s);

function getModel(spec: ModelSpec & { task: 'chat' }): Promise<LoadedChatModel>;
function getModel(spec: ModelSpec & { task: 'embedding' }): Promise<LoadedEmbedModel>;
function getModel(spec: ModelSpec & { task: 'rerank' }): Promise<RerankModel>;
function getModel(spec: ModelSpec): Promise<Loaded>;
function getModel(spec: ModelSpec): Promise<Loaded> {
  const key = specKey(spec);
  let entry = models.get(key);
  if (!entry) {
    const lastShown = new Map<string, number>();
    // One load at a time: transformers.js' env (local path, remote switch) is global.
    const progress = (file: string, percent: number) => {
      const bucket = Math.floor(percent / 10);
      if (lastShown.get(file) === bucket) return;
      lastShown.set(file, bucket);
      post({ type: 'progress', model: spec.name, file, percent: Math.round(percent) });
    };
    entry = loading.then((): Promise<Loaded> =>
      spec.task === 'chat'
        ? loadChatModel(spec, modelsDir, progress).then((m) => {
            vocabularyOf(m.tokenizer, m.eosIds); // built now (~0.2 s), not on the first constrained request
            return m;
          })
        : spec.task === 'rerank'
          ? loadRerankModel(spec, modelsDir, progress)
          : loadEmbedModel(spec, modelsDir, progress),
    );
    loading = entry.catch(() => {});
    models.set(key, entry);
    // A failed load is not cached: the next request tries again (the file may have appeared).
    entry.catch(() => models.delete(key));
  }
  return entry;
}

const sandbox = new TemplateSandbox();
/** One decode loop per loaded chat model: its concurrent requests share each step. */
const schedulers = new Map<LoadedChatModel, BatchScheduler>();
function schedulerFor(m: LoadedChatModel): BatchScheduler {
  let s = schedulers.get(m);
  if (!s) schedulers.set(m, (s = new BatchScheduler(m, batchLimitsFromEnv(m.spec.device))));
  return s;
}
setInterval(() => {
  if (schedulers.size === 0) return;
  const stats: Record<string, WorkerBatchStats> = {};
  for (const [m, s] of schedulers) stats[m.spec.name] = { ...s.stats, ...s.load };
  post({ type: 'stats', stats });
}, 1000).unref();

const SPECIAL_TOKENS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token', 'additional_special_tokens'];

/** The variables transformers.js gives a chat template besides the messages. */
function specialTokens(m: LoadedChatModel): Record<string, unknown> {
  const config = (m.tokenizer as unknown as { config?: Record<string, unknown> }).config ?? {};
  const out: Record<string, unknown> = {};
  for (const key of SPECIAL_TOKENS) {
    const v = config[key];
    const value = v && typeof v === 'object' && 'content' in (v as object) ? (v as { content: unknown }).content : v;
    if (value) out[key] = value;
  }
  return out;
}

/**
 * Refuses, before tokenizing, a text that certainly cannot fit with the completion asked for
 * (protocol/limits.ts): tokenizing a 6 MiB word takes a byte-level BPE tokenizer about 40 s, on
 * this thread, during which no other request to any model here advances.
 */
function checkFits(m: LoadedChatModel, texts: string[], params: Pick<SamplingParams, 'maxTokens'>): void {
  if (!m.inputBound || !needsMoreThan(texts, m.inputBound, m.contextLength - (params.maxTokens ?? 1))) return;
  throw ThreadError.user(
    400,
    `This model's maximum context length is ${m.contextLength} tokens. However, your messages are longer than that ` +
      `with ${params.maxTokens ?? 1} tokens for the completion (their length alone shows it). Please reduce the length of the messages or completion.`,
    'context_length_exceeded',
    'messages',
  );
}

async function renderPrompt(m: LoadedChatModel, prompt: Prompt, params: Pick<SamplingParams, 'maxTokens'>): Promise<number[]> {
  if ('ids' in prompt) {
    const vocab = (m.model.config as unknown as { vocab_size?: number }).vocab_size ?? Infinity;
    const bad = prompt.ids.find((id) => id >= vocab);
    if (bad !== undefined) throw ThreadError.user(400, `Token id ${bad} is outside the model's vocabulary of ${vocab}.`, 'invalid_token', 'prompt');
    return prompt.ids;
  }
  // A raw prompt is encoded as the tokenizer would for the model (with its BOS, if it adds one).
  if ('text' in prompt) {
    checkFits(m, [prompt.text], params);
    return encodeBounded(() => m.tokenizer.encode(prompt.text), 'prompt');
  }
  // Before rendering too. Assistant turns are left out: some templates drop parts of them
  // (Qwen3's drop earlier reasoning); the other messages every template renders in full.
  checkFits(m, promptTexts(prompt), params);
  let text: string;
  if (prompt.chatTemplate) {
    // The request's own template: untrusted code, rendered on the sandbox thread with a time limit.
    text = await sandbox.render(prompt.chatTemplate, {
      messages: prompt.messages,
      add_generation_prompt: true,
      ...(prompt.tools ? { tools: prompt.tools } : {}),
      ...specialTokens(m),
    });
  } else {
    try {
      text = m.tokenizer.apply_chat_template(prompt.messages, {
        tokenize: false,
        add_generation_prompt: true,
        // transformers' templates take OpenAI-shaped tools ({type: 'function', function: {...}}).
        ...(prompt.tools ? { tools: prompt.tools as unknown as Record<string, unknown>[] } : {}),
        ...(m.spec.chatTemplate ? { chat_template: m.spec.chatTemplate } : {}),
      }) as string;
    } catch (err) {
      throw ThreadError.user(400, `The chat template could not be applied: ${(err as Error).message}`, 'invalid_chat_template', 'messages');
    }
  }
  checkFits(m, [text], params);
  // The template already wrote the special tokens (e.g. <|im_start|>), so none are added here.
  return encodeBounded(() => m.tokenizer.encode(text, { add_special_tokens: false }), 'messages');
}

/**
 * The tokenizers' regular expressions recurse: a long enough run of some characters overflows
 * the stack (a text the input bound could not refuse, for a tokenizer it has no rule for). That
 * is the request's doing, so it is the request's error, not the server's.
 */
function encodeBounded(encode: () => number[], param: string): number[] {
  try {
    return encode();
  } catch (err) {
    if (err instanceof RangeError) throw ThreadError.user(400, 'The input is too long to tokenize. Please reduce its length.', 'context_length_exceeded', param);
    throw err;
  }
}

/**
 * Structured outputs and forced tool calls: one token filter per choice. Compiled here, before
 * `started`, so a schema the engine cannot enforce is a 400 (the gateway checks it first, too).
 */
function constraintsFor(m: LoadedChatModel, requested: ConstraintSpec | null, maxNew: number): (() => TokenConstraint) | null {
  if (!requested) return null;
  // The constraint closes the value within the tokens the sequence may have, even without max_tokens.
  const spec = { ...requested, maxTokens: Math.min(requested.maxTokens ?? Infinity, maxNew) };
  const vocab = vocabularyOf(m.tokenizer, m.eosIds);
  try {
    createConstraint(spec, vocab);
  } catch (err) {
    if (err instanceof SchemaError) throw ThreadError.user(400, err.message, 'invalid_schema', spec.kind === 'tool_calls' ? 'tools' : 'response_format');
    throw err;
  }
  return () => createConstraint(spec, vocab);
}

async function runGenerate(msg: Extract<ToThread, { type: 'generate' }>): Promise<void> {
  const abort = new AbortController();
  running.set(msg.id, abort);
  try {
    const m = await getModel({ ...msg.spec, task: 'chat' });
    if (abort.signal.aborted) throw ThreadError.cancelled();
    const promptIds = await renderPrompt(m, msg.prompt, msg.params);
    // Checked before `started`: the first event decides the HTTP status, so a prompt that does
    // not fit (the context, or the worker's memory budget) is a 400 for streams too, not a 200
    // stream carrying an error.
    const maxNew = schedulerFor(m).check(promptIds.length, msg.params);
    const constraints = constraintsFor(m, msg.params.constraint, maxNew);
    post({ type: 'started', id: msg.id, promptTokens: promptIds.length });
    const choices = await schedulerFor(m).submit(promptIds, msg.params, {
      ...(constraints ? { constraints } : {}),
      ...(msg.background ? { background: true } : {}),
      ...(msg.cacheScope ? { cacheScope: msg.cacheScope } : {}),
      signal: abort.signal,
      onDelta: (index, text, finishReason, logprobs, stopSequence) =>
        post({ type: 'delta', id: msg.id, index, text, finishReason, ...(logprobs ? { logprobs } : {}), ...(stopSequence !== undefined ? { stopSequence } : {}) }),
    });
    post({ type: 'done', id: msg.id, promptTokens: promptIds.length, choices });
  } catch (err) {
    post({ type: 'error', id: msg.id, error: ThreadError.from(err).toJSON() });
  } finally {
    running.delete(msg.id);
  }
}

async function runEmbed(msg: Extract<ToThread, { type: 'embed' }>): Promise<void> {
  try {
    const m = await getModel({ ...msg.spec, task: 'embedding' });
    const out = await embed(m, msg.inputs);
    const buffers = out.vectors.flatMap((v) => (v ? [v.buffer as ArrayBuffer] : []));
    port.postMessage({ type: 'embedded', id: msg.id, ...out, dimensions: m.dimensions } satisfies FromThread, buffers);
  } catch (err) {
    post({ type: 'error', id: msg.id, error: ThreadError.from(err).toJSON() });
  }
}

async function runRerank(msg: Extract<ToThread, { type: 'rerank' }>): Promise<void> {
  try {
    const m = await getModel({ ...msg.spec, task: 'rerank' });
    post({ type: 'reranked', id: msg.id, outputs: await rerank(m, msg.inputs) });
  } catch (err) {
    post({ type: 'error', id: msg.id, error: ThreadError.from(err).toJSON() });
  }
}

port.on('message', (msg: ToThread) => {
  switch (msg.type) {
    case 'load': {
      const started = performance.now();
      getModel(msg.spec).then(
        (m) =>
          post({
            type: 'loaded',
            model: msg.spec.name,
            contextLength: 'contextLength' in m ? m.contextLength : m.maxTokens,
            dimensions: 'dimensions' in m ? m.dimensions : null,
            inputBound: m.inputBound,
            ms: Math.round(performance.now() - started),
            groupedAttention: 'groupedAttention' in m ? m.groupedAttention : 0,
            splitCache: 'splitCache' in m ? m.splitCache : 0,
            keepsLogits: 'keepsLogits' in m ? m.keepsLogits === true : false,
          }),
        (err) => post({ type: 'load-failed', model: msg.spec.name, error: ThreadError.from(err).toJSON() }),
      );
      break;
    }
    case 'generate':
      void runGenerate(msg);
      break;
    case 'embed':
      void runEmbed(msg);
      break;
    case 'rerank':
      void runRerank(msg);
      break;
    case 'cancel':
      running.get(msg.id)?.abort();
      break;
  }
});
