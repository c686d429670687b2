import { env, pipeline } from '@huggingface/transformers';
import { beforeAll, expect, it } from 'vitest';
import { classify, loadClassifier, type LoadedClassifier } from '../../../src/worker/moderation/classifier.js';
import type { ModelSpec } from '../../../src/worker/models-source.js';
import { modelsDir } from '../../helpers/stack.js';

/**
 * The moderation thread's classifier (src/worker/moderation/classifier.ts), in-process, against
 * transformers.js' own text-classification pipeline on the tiny-moderation fixture: sub-batches,
 * padding and truncation must not change a text's scores.
 */
let m: LoadedClassifier;
let reference: (texts: string[]) => Promise<Record<string, number>[]>;

const spec: ModelSpec = {
  name: 'guard', task: 'moderation', source: 'tiny-moderation', revision: 'main', dtype: 'fp32', device: 'cpu',
  chatTemplate: null, contextLength: null, pooling: 'cls', normalize: false, truncate: true,
};

beforeAll(async () => {
  m = await loadClassifier(spec, modelsDir());
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
  const p = await pipeline('text-classification', 'tiny-moderation', { dtype: 'fp32' });
  reference = async (texts) => {
    const out = (await p(texts, { top_k: null })) as unknown as { label: string; score: number }[][];
    return out.map((labels) => Object.fromEntries(labels.map((l) => [l.label, l.score])));
  };
});

it('reads the labels and the multi-label head from config.json', () => {
  expect(m.labels).toEqual(['toxic', 'severe_toxic', 'obscene', 'threat', 'insult', 'identity_hate']);
  expect(m.multiLabel).toBe(true);
  expect(m.maxTokens).toBe(512);
});

it('scores 40 texts of mixed length (two sub-batches) as the pipeline scores each alone', async () => {
  const texts = Array.from({ length: 40 }, (_, i) => `${'word '.repeat(i % 13)}text number ${i}`);
  texts[7] = '';
  const { scores, tokens } = await classify(m, texts);
  expect(scores).toHaveLength(40);
  for (let i = 0; i < texts.length; i += 3) {
    const [alone] = await reference([texts[i]!]);
    scores[i]!.forEach((s, k) => expect(Math.abs(s - alone![m.labels[k]!]!), `text ${i}, ${m.labels[k]}`).toBeLessThan(1e-5));
  }
  expect(tokens[7]).toBe(2); // [CLS] [SEP]
  expect(tokens[1]).toBe(m.tokenizer.encode(texts[1]!).length);
});

it('cuts a text longer than the context to it, as the pipeline does', async () => {
  const long = 'lighthouse keeper '.repeat(2000);
  const { scores, tokens } = await classify(m, [long, 'short']);
  expect(tokens[0]).toBe(512);
  const [ref] = await reference([long]);
  scores[0]!.forEach((s, k) => expect(Math.abs(s - ref![m.labels[k]!]!)).toBeLessThan(1e-5));
});
