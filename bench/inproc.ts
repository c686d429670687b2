/**
 * The in-process limit: the same models called directly with transformers.js in the bench
 * process, no queue, no HTTP, no database. The chat loop is the plainest one possible (prefill,
 * then one forward pass per token over the KV cache, greedy), as an application embedding
 * transformers.js would write it; embeddings go through the worker's own `embed` (tokenise,
 * forward, pool, normalise), which is what the gateway runs for each batch.
 */
import { AutoModelForCausalLM, AutoTokenizer, Tensor, env, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import { embed as embedTexts } from '../src/worker/embedding/embed.js';
import { loadEmbedModel, sessionOptions, type LoadedEmbedModel } from '../src/worker/loader.js';

type Feeds = Record<string, Tensor>;
export interface Message {
  role: string;
  content: string;
}

const int64 = (values: number[], dims: number[]) => new Tensor('int64', BigInt64Array.from(values, BigInt), dims);

export interface GenerationTiming {
  /** Prefill forward pass alone (ms). */
  prefillMs: number;
  /** From the call to the first token's text (prefill, sampling, detokenising). */
  firstTokenMs: number;
  /** Each decode step (one forward pass for the whole batch, plus sampling), ms. */
  stepMs: number[];
  totalMs: number;
  /** Tokens generated per row. */
  tokens: number;
  batch: number;
}

export class InProcessChat {
  private constructor(
    readonly model: PreTrainedModel,
    readonly tokenizer: PreTrainedTokenizer,
  ) {}

  static async load(modelsDir: string, id: string): Promise<InProcessChat> {
    env.allowLocalModels = true;
    env.allowRemoteModels = false;
    env.localModelPath = `${modelsDir}/`;
    const tokenizer = await AutoTokenizer.from_pretrained(id);
    // The worker's session options (threads, no spinning: loader.ts), so both sides run alike.
    const model = await AutoModelForCausalLM.from_pretrained(id, { dtype: 'fp32', device: 'cpu', session_options: sessionOptions() });
    return new InProcessChat(model, tokenizer);
  }

  /** Token ids of a chat prompt, rendered the way the worker renders it (template, no extra specials). */
  promptIds(messages: Message[]): number[] {
    const text = this.tokenizer.apply_chat_template(messages as never, { tokenize: false, add_generation_prompt: true }) as string;
    return this.tokenizer.encode(text, { add_special_tokens: false });
  }

  /**
   * `generate` timed from the messages: the chat template and tokenization are inside
   * `firstTokenMs` and `totalMs`, as they are inside the gateway's time to first token.
   */
  async generateChat(messages: Message[], maxNew: number, batch = 1): Promise<GenerationTiming & { templateMs: number; promptTokens: number }> {
    const t0 = performance.now();
    const ids = this.promptIds(messages);
    const templateMs = performance.now() - t0;
    const t = await this.generate(ids, maxNew, batch);
    return { ...t, templateMs, promptTokens: ids.length, firstTokenMs: t.firstTokenMs + templateMs, totalMs: t.totalMs + templateMs };
  }

  /**
   * Greedy decoding of `maxNew` tokens for `batch` copies of one prompt in one forward pass per
   * step (batch 1: the single-stream limit; batch 8: what batching concurrent requests could give).
   */
  async generate(prompt: number[], maxNew: number, batch = 1): Promise<GenerationTiming> {
    const P = prompt.length;
    const t0 = performance.now();
    let outputs = (await this.model.forward({
      input_ids: int64(Array.from({ length: batch }, () => prompt).flat(), [batch, P]),
      attention_mask: int64(new Array(batch * P).fill(1), [batch, P]),
      position_ids: int64(Array.from({ length: batch }, () => prompt.map((_, i) => i)).flat(), [batch, P]),
    })) as Feeds;
    const prefillMs = performance.now() - t0;
    const rows = Array.from({ length: batch }, () => [] as number[]);
    let text = '';
    let firstTokenMs = 0;
    const stepMs: number[] = [];
    for (let step = 0; ; step++) {
      const ts = performance.now();
      const logits = outputs.logits!;
      const [, S, V] = logits.dims as [number, number, number];
      const data = logits.data as Float32Array;
      const next: number[] = [];
      for (let b = 0; b < batch; b++) {
        const off = (b * S + S - 1) * V;
        let best = 0;
        for (let v = 1; v < V; v++) if (data[off + v]! > data[off + best]!) best = v;
        rows[b]!.push(best);
        next.push(best);
      }
      // What a streaming application does with each token: turn it into text.
      text += this.tokenizer.decode([next[0]!], { skip_special_tokens: true });
      if (step === 0) firstTokenMs = performance.now() - t0;
      else stepMs[stepMs.length - 1]! += performance.now() - ts;
      if (rows[0]!.length >= maxNew) break;
      const total = P + step + 1;
      const past: Feeds = {};
      for (const [name, t] of Object.entries(outputs)) if (name.startsWith('present')) past[name.replace('present', 'past_key_values')] = t;
      const tf = performance.now();
      outputs = (await this.model.forward({
        input_ids: int64(next, [batch, 1]),
        attention_mask: int64(new Array(batch * total).fill(1), [batch, total]),
        position_ids: int64(new Array(batch).fill(total - 1), [batch, 1]),
        past_key_values: past,
      })) as Feeds;
      stepMs.push(performance.now() - tf);
    }
    void text;
    return { prefillMs, firstTokenMs, stepMs, totalMs: performance.now() - t0, tokens: rows[0]!.length, batch };
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
  }
}

export async function loadInProcessEmbed(modelsDir: string, id: string): Promise<LoadedEmbedModel> {
  const spec = {
    name: 'bench-embed', task: 'embedding' as const, source: id, revision: 'main', dtype: 'fp32', device: 'cpu' as const,
    chatTemplate: null, contextLength: null, pooling: 'mean' as const, normalize: true, truncate: false,
  };
  return loadEmbedModel(spec, modelsDir, () => {});
}

export async function embedInProcess(m: LoadedEmbedModel, texts: string[]): Promise<void> {
  await embedTexts(m, texts);
}
