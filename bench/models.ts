/**
 * The benchmark's models: random weights in real shapes, generated at run time into
 * .cache/bench-models (git-ignored) and reused while the shape and the generator stay the same.
 *
 * - chat: SmolLM2-135M's shape (vocab 49152, hidden 576, 30 layers, 9 heads, 3 KV heads,
 *   intermediate 1536), the real SmolLM2 tokenizer and chat template; about 540 MB of fp32.
 *   No end-token steering: a random model practically never picks `<|im_end|>`, so replies run
 *   to max_tokens (the bench reports the token counts it actually got).
 * - embed: all-MiniLM-L6-v2's shape (hidden 384, 6 layers, 12 heads, intermediate 1536) with the
 *   real MiniLM tokenizer.
 * - tiny: the test suite's tiny-chat fixture (hidden 64, 2 layers): used where the model's speed
 *   is not the point (1,000 open streams), so the run finishes in reasonable time.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { ensureFixtureModels } from '../fixtures/models/index.mjs';

export const BENCH_MODELS_DIR = resolve(fileURLToPath(new URL('..', import.meta.url)), '.cache/bench-models');
const GENERATOR = fileURLToPath(new URL('../fixtures/models/generator/', import.meta.url));

export const CHAT_SHAPE = { vocab: 49152, hidden: 576, layers: 30, heads: 9, kvHeads: 3, inter: 1536, seed: 135 };
export const EMBED_SHAPE = { vocab: 30522, hidden: 384, layers: 6, heads: 12, inter: 1536, seed: 7 };

export interface BenchModels {
  /** Folder to give workers as SWITCHYARD_MODELS_DIR; the model sources below are folder names in it. */
  dir: string;
  chat: string;
  embed: string;
  /** Absolute folder of the tiny fixture chat model (registered by path). */
  tiny: string;
  generated: string[];
}

/** Hash of the shape and the generator's code: a changed generator regenerates the model. */
function keyOf(kind: string, shape: object, files: string[]): string {
  const h = createHash('sha256').update(kind).update(JSON.stringify(shape));
  for (const f of files) h.update(readFileSync(join(GENERATOR, f)));
  return h.digest('hex').slice(0, 10);
}

/** Writes a model folder next to its final place, then renames it in (readers never see half). */
async function ensureFolder(name: string, write: (dir: string) => Promise<void>): Promise<boolean> {
  const final = join(BENCH_MODELS_DIR, name);
  if (existsSync(join(final, '.complete'))) return false;
  const tmp = join(BENCH_MODELS_DIR, `.tmp-${name}-${randomBytes(4).toString('hex')}`);
  await mkdir(join(tmp, 'onnx'), { recursive: true });
  try {
    await write(tmp);
    await writeFile(join(tmp, '.complete'), `${new Date().toISOString()}\n`);
    await rm(final, { recursive: true, force: true });
    await rename(tmp, final);
    return true;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function copyTokenizer(from: string, to: string): Promise<void> {
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt']) {
    if (existsSync(join(from, f))) await copyFile(join(from, f), join(to, f));
  }
}

/** Removes stale versions of our models (other keys), which are hundreds of MB each. */
async function sweep(keep: string[]): Promise<void> {
  for (const entry of await readdir(BENCH_MODELS_DIR).catch(() => [] as string[])) {
    if (/^(smollm2|minilm)-shape/.test(entry) && !keep.includes(entry)) await rm(join(BENCH_MODELS_DIR, entry), { recursive: true, force: true });
  }
}

/**
 * The int8 export beside a generated model's fp32 one (onnx/model_quantized.onnx, dtype q8), as
 * the hub's transformers.js repositories ship it: what `models add` picks on CPU by default.
 */
async function ensureQuantized(name: string, progress: (msg: string) => void): Promise<boolean> {
  const dir = join(BENCH_MODELS_DIR, name, 'onnx');
  if (existsSync(join(dir, 'model_quantized.onnx'))) return false;
  progress(`quantizing ${name} to int8 (once)`);
  const { quantizeQ8 } = (await import(pathToFileURL(join(GENERATOR, 'quantize-q8.mjs')).href)) as { quantizeQ8(bytes: Uint8Array): Uint8Array };
  const tmp = join(dir, `.model_quantized-${randomBytes(4).toString('hex')}.onnx`);
  await writeFile(tmp, quantizeQ8(readFileSync(join(dir, 'model.onnx'))));
  await rename(tmp, join(dir, 'model_quantized.onnx'));
  return true;
}

export async function ensureBenchModels(progress: (msg: string) => void = () => {}): Promise<BenchModels> {
  await mkdir(BENCH_MODELS_DIR, { recursive: true });
  const fixtures = await ensureFixtureModels();
  const chat = `smollm2-shape-${keyOf('llama', CHAT_SHAPE, ['make-tiny-llama.mjs', 'onnx-builder.mjs'])}`;
  const embed = `minilm-shape-${keyOf('bert', EMBED_SHAPE, ['make-tiny-bert.mjs', 'onnx-builder.mjs'])}`;
  const generated: string[] = [];
  const t0 = performance.now();
  const wroteChat = await ensureFolder(chat, async (dir) => {
    progress(`generating the SmolLM2-shaped chat model (about 540 MB, once) into ${BENCH_MODELS_DIR}/${chat}`);
    const { buildLlama } = (await import(pathToFileURL(join(GENERATOR, 'make-tiny-llama.mjs')).href)) as {
      buildLlama(spec: typeof CHAT_SHAPE): Uint8Array;
    };
    await copyTokenizer(fixtures.models['tiny-chat'], dir);
    const c = CHAT_SHAPE;
    await writeFile(join(dir, 'config.json'), JSON.stringify({
      architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: c.vocab, hidden_size: c.hidden,
      intermediate_size: c.inter, num_hidden_layers: c.layers, num_attention_heads: c.heads, num_key_value_heads: c.kvHeads,
      head_dim: c.hidden / c.heads, hidden_act: 'silu', max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 100000,
      tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2, pad_token_id: 2, use_cache: true, torch_dtype: 'float32',
    }, null, 1));
    await writeFile(join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: 2, pad_token_id: 2 }));
    await writeFile(join(dir, 'onnx/model.onnx'), buildLlama(c));
  });
  if (wroteChat) generated.push(chat);
  const wroteEmbed = await ensureFolder(embed, async (dir) => {
    progress('generating the MiniLM-shaped embedding model');
    const { buildBert } = await import('../fixtures/models/generator/make-tiny-bert.mjs');
    await copyTokenizer(fixtures.models['tiny-embed'], dir);
    const e = EMBED_SHAPE;
    await writeFile(join(dir, 'config.json'), JSON.stringify({
      architectures: ['BertModel'], model_type: 'bert', vocab_size: e.vocab, hidden_size: e.hidden, num_hidden_layers: e.layers,
      num_attention_heads: e.heads, intermediate_size: e.inter, hidden_act: 'gelu', max_position_embeddings: 512,
      type_vocab_size: 2, layer_norm_eps: 1e-12, pad_token_id: 0, torch_dtype: 'float32',
    }, null, 1));
    await writeFile(join(dir, 'onnx/model.onnx'), buildBert(e));
  });
  if (wroteEmbed) generated.push(embed);
  for (const name of [chat, embed]) if (await ensureQuantized(name, progress)) generated.push(`${name} (int8)`);
  if (generated.length) {
    progress(`generated ${generated.join(', ')} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await sweep([chat, embed]);
  }
  return { dir: BENCH_MODELS_DIR, chat, embed, tiny: fixtures.models['tiny-chat'], generated };
}
