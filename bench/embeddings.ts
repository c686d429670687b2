/**
 * Embeddings through the gateway against the model called in-process, side by side:
 * 256 concurrent single-input HTTP requests vs one in-process call with batch 256, and vs 256
 * in-process calls of batch 1. The model has all-MiniLM-L6-v2's shape (hidden 384, 6 layers,
 * 12 heads, intermediate 1536, the real tokenizer) with random weights, generated at run time.
 *
 *   npx tsx bench/embeddings.ts [--runs 3]
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { buildBert } from '../fixtures/models/generator/make-tiny-bert.mjs';
import { ensureFixtureModels } from '../fixtures/models/index.mjs';
import { loadEmbedModel } from '../src/worker/loader.js';
import { embed } from '../src/worker/embedding/embed.js';
import { benchDatabase, cli, machine, median } from './lib.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' } } });
const RUNS = Number(values.runs);
const N = 256;
const DIR = resolve('.cache/bench-models');

async function ensureMiniLmShape(): Promise<string> {
  const target = join(DIR, 'minilm-shape');
  if (existsSync(join(target, 'onnx/model.onnx'))) return target;
  const { models } = await ensureFixtureModels();
  await mkdir(join(target, 'onnx'), { recursive: true });
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt']) {
    if (existsSync(join(models['tiny-embed'], f))) await copyFile(join(models['tiny-embed'], f), join(target, f));
  }
  await writeFile(join(target, 'config.json'), JSON.stringify({
    architectures: ['BertModel'], model_type: 'bert', vocab_size: 30522, hidden_size: 384, num_hidden_layers: 6,
    num_attention_heads: 12, intermediate_size: 1536, hidden_act: 'gelu', max_position_embeddings: 512,
    type_vocab_size: 2, layer_norm_eps: 1e-12, pad_token_id: 0, torch_dtype: 'float32',
  }));
  await writeFile(join(target, 'onnx/model.onnx'), buildBert({ vocab: 30522, hidden: 384, layers: 6, heads: 12, inter: 1536, seed: 7 }));
  return target;
}

// Realistic short sentences of varied length (5–25 words).
const words = 'the of and to in is that for it as with was on be by this are from at or an have not which but they you were his her one all can their there been if more when will would who so'.split(' ');
const sentence = (i: number) => Array.from({ length: 5 + ((i * 7) % 21) }, (_, k) => words[(i * 31 + k * 17) % words.length]).join(' ');
const inputs = (tag: string) => Array.from({ length: N }, (_, i) => `${sentence(i)} ${tag}${i}`);

const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const modelDir = await ensureMiniLmShape();
progress(`model ready in ${modelDir}`);
const spec = { name: 'b', task: 'embedding' as const, source: 'minilm-shape', revision: 'main', dtype: 'fp32', device: 'cpu' as const, chatTemplate: null, contextLength: null, pooling: 'mean' as const, normalize: true, truncate: false };
const m = await loadEmbedModel(spec, DIR, () => {});
await embed(m, inputs('warm'));

const db = await benchDatabase();
await cli(db.url, ['models', 'add', 'minilm', '--task', 'embedding', '--source', 'minilm-shape']).done;
const key = (await cli(db.url, ['keys', 'create', '--name', 'bench']).done).trim().split('\n').pop()!;
const serve = cli(db.url, ['serve'], { PORT: '0' }, /listening on (http:\/\/\S+)/);
const worker = cli(db.url, ['worker'], { SWITCHYARD_MODELS_DIR: DIR }, /(embeddings minilm: .*|ready in)/);
const base = await serve.done;
await worker.done;
progress(`gateway at ${base}`);

const post = (input: string) =>
  fetch(`${base}/v1/embeddings`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'minilm', input, encoding_format: 'base64' }),
  }).then(async (r) => {
    if (r.status !== 200) throw new Error(`${r.status} ${await r.text()}`);
    return r.json();
  });
await Promise.all(inputs('warmgw').slice(0, 32).map(post));

const rows: Record<string, number[]> = { inprocBatch: [], inprocSingle: [], gateway: [] };
for (let r = 0; r < RUNS; r++) {
  progress(`run ${r + 1}/${RUNS}`);
  // Fresh texts every run, so the gateway's cache never answers.
  const batch = inputs(`b${r}-`);
  let t = performance.now();
  await embed(m, batch);
  rows.inprocBatch!.push(N / ((performance.now() - t) / 1000));
  t = performance.now();
  for (const s of inputs(`s${r}-`)) await embed(m, [s]);
  rows.inprocSingle!.push(N / ((performance.now() - t) / 1000));
  const gw = inputs(`g${r}-`);
  t = performance.now();
  await Promise.all(gw.map(post));
  rows.gateway!.push(N / ((performance.now() - t) / 1000));
}
serve.stop();
worker.stop();
await new Promise((r) => setTimeout(r, 1500));
const calls = worker.output().match(/embeddings minilm: .*/g) ?? [];
await db.drop();

const fmt = (xs: number[]) => `${median(xs).toFixed(0)} /s (min ${Math.min(...xs).toFixed(0)}, max ${Math.max(...xs).toFixed(0)})`;
console.log(JSON.stringify({ machine: machine(), runs: RUNS, sentences_per_s: rows }, null, 1));
console.log(`\n| ${N} sentences, MiniLM-L6 shape | throughput |\n| --- | --- |`);
console.log(`| in-process, one call of batch ${N} | ${fmt(rows.inprocBatch!)} |`);
console.log(`| in-process, ${N} calls of batch 1 | ${fmt(rows.inprocSingle!)} |`);
console.log(`| gateway, ${N} concurrent single-input requests | ${fmt(rows.gateway!)} |`);
console.log(`\ngateway / in-process batch: ${(median(rows.gateway!) / median(rows.inprocBatch!)).toFixed(2)}×; gateway / in-process batch 1: ${(median(rows.gateway!) / median(rows.inprocSingle!)).toFixed(2)}×`);
console.log(`worker batching: ${calls.join(' | ') || '(no stats line yet)'}`);
