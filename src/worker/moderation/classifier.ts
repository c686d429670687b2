import { AutoModelForSequenceClassification, AutoTokenizer, env, type PreTrainedModel, type PreTrainedTokenizer, type Tensor } from '@huggingface/transformers';
import { ThreadError } from '../generation/thread-error.js';
import { sessionOptions } from '../loader.js';
import { onnxFileFor, pointEnvAt, type ModelSpec } from '../models-source.js';

/** A text classifier loaded for moderation (runs in the moderation thread, thread.ts). */
export interface LoadedClassifier {
  spec: ModelSpec;
  tokenizer: PreTrainedTokenizer;
  model: PreTrainedModel;
  /** The model's labels, in logit order (config.json id2label). */
  labels: string[];
  /** Tokens per input; longer texts are cut (a moderation verdict on the start of a long text beats a refusal). */
  maxTokens: number;
  /** multi_label_classification: a sigmoid per label; otherwise a softmax over them, as transformers.js' pipeline. */
  multiLabel: boolean;
}

/**
 * Inputs per forward pass: a MiniLM-sized encoder is at its best from 32 up on these machines
 * (src/worker/embedding/embed.ts); more only pads more.
 */
const SUB_BATCH = 32;

/**
 * A WordPiece token covers at most 100 characters of a word (BERT's max_input_chars_per_word),
 * so a text cut at 100 characters per token of context tokenizes to the same first tokens
 * (only long runs of whitespace go further). Cutting first bounds the tokenizer's time: it runs
 * on this thread, and a 16 MiB body would hold it for seconds.
 */
const CHARS_PER_TOKEN = 100;

export async function loadClassifier(spec: ModelSpec, modelsDir: string | undefined): Promise<LoadedClassifier> {
  const where = pointEnvAt(env, spec.source, modelsDir);
  try {
    const tokenizer = await AutoTokenizer.from_pretrained(where.id, { revision: spec.revision });
    const model = await AutoModelForSequenceClassification.from_pretrained(where.id, {
      revision: spec.revision,
      dtype: spec.dtype as 'fp32',
      device: spec.device,
      session_options: sessionOptions(),
    });
    const config = model.config as unknown as { id2label?: Record<string, string>; problem_type?: string; max_position_embeddings?: number };
    const count = Object.keys(config.id2label ?? {}).length;
    if (count === 0) throw new Error('config.json has no id2label: it is not a text classifier');
    const labels = Array.from({ length: count }, (_, i) => config.id2label![String(i)] ?? `LABEL_${i}`);
    const positions = config.max_position_embeddings ?? 512;
    const tokMax = tokenizer.model_max_length as number | undefined;
    const maxTokens = spec.contextLength ?? Math.min(positions, tokMax && tokMax < 1e6 ? tokMax : positions);
    return { spec, tokenizer, model, labels, maxTokens, multiLabel: config.problem_type === 'multi_label_classification' };
  } catch (err) {
    const hint = where.kind === 'local' ? ` Check that ${where.dir} holds config.json (with id2label), tokenizer.json and ${onnxFileFor(spec.dtype)}.` : '';
    throw ThreadError.server(`Could not load moderation model '${spec.name}' from '${spec.source}': ${(err as Error).message}.${hint}`, 'model_load_failed', 503);
  }
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

function softmax(row: Float32Array): number[] {
  const max = Math.max(...row);
  const exps = Array.from(row, (x) => Math.exp(x - max));
  const sum = exps.reduce((s, x) => s + x, 0);
  return exps.map((x) => x / sum);
}

/** Label probabilities per text (in the model's label order) and the tokens each text used. */
export async function classify(m: LoadedClassifier, texts: string[]): Promise<{ scores: number[][]; tokens: number[] }> {
  const scores: number[][] = [];
  const tokens: number[] = [];
  for (let start = 0; start < texts.length; start += SUB_BATCH) {
    const part = texts.slice(start, start + SUB_BATCH).map((t) => t.slice(0, m.maxTokens * CHARS_PER_TOKEN));
    const inputs = m.tokenizer(part, { padding: true, truncation: true, max_length: m.maxTokens }) as Record<string, Tensor>;
    const mask = inputs.attention_mask!;
    const width = mask.dims[1]!;
    const maskData = mask.data as BigInt64Array;
    for (let i = 0; i < part.length; i++) {
      let n = 0;
      for (let j = 0; j < width; j++) n += Number(maskData[i * width + j]);
      tokens.push(n);
    }
    const { logits } = (await m.model(inputs)) as { logits: Tensor };
    const data = logits.data as Float32Array;
    const k = logits.dims[1]!;
    for (let i = 0; i < part.length; i++) {
      const row = data.subarray(i * k, (i + 1) * k);
      scores.push(m.multiLabel ? Array.from(row, sigmoid) : softmax(row));
    }
  }
  return { scores, tokens };
}
