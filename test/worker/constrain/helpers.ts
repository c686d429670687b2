import { AutoModelForCausalLM, AutoTokenizer, Tensor, env, type PreTrainedModel, type PreTrainedTokenizer } from '@huggingface/transformers';
import { ensureFixtureModels } from '../../../fixtures/models/index.mjs';
import { createConstraint, vocabularyOf, type ConstraintSpec, type TokenConstraint, type Vocabulary } from '../../../src/worker/generation/constrain/index.js';
import { makeRng, sampleToken, type Sampling } from '../../../src/worker/generation/sampler.js';

let dir: Promise<string> | null = null;
async function fixtureDir(): Promise<string> {
  dir ??= ensureFixtureModels().then((r: { dir: string }) => r.dir);
  return dir;
}

export async function loadTokenizer(name = 'tiny-chat'): Promise<PreTrainedTokenizer> {
  env.localModelPath = `${await fixtureDir()}/`;
  env.allowRemoteModels = false;
  return AutoTokenizer.from_pretrained(name);
}

export async function loadModel(name = 'tiny-chat'): Promise<PreTrainedModel> {
  env.localModelPath = `${await fixtureDir()}/`;
  env.allowRemoteModels = false;
  return AutoModelForCausalLM.from_pretrained(name, { dtype: 'fp32', device: 'cpu' });
}

export const spec = (s: Partial<ConstraintSpec> & Pick<ConstraintSpec, 'kind'>): ConstraintSpec =>
  ({ maxTokens: null, lazy: true, ...s }) as ConstraintSpec;

export const sampling = (over: Partial<Sampling> = {}): Sampling => ({ temperature: 1, topP: 1, frequencyPenalty: 0, presencePenalty: 0, ...over });

export interface RunResult {
  text: string;
  tokens: number[];
  done: boolean;
  ended: 'done' | 'eos' | 'length';
  /** Milliseconds spent in choose() + accept(), per token. */
  msPerToken: number;
}

/**
 * A decode loop over a logits source (random numbers, or the model), with the constraint in
 * the place the worker's loop gives it: choose() with the sampler as `draw`, then accept().
 */
export async function run(
  vocab: Vocabulary,
  constraint: TokenConstraint,
  nextLogits: (tokens: number[]) => Float32Array | Promise<Float32Array>,
  opts: { maxTokens: number; sampling?: Sampling; seed?: number },
): Promise<RunResult> {
  const rng = makeRng(opts.seed ?? 1);
  const p = opts.sampling ?? sampling();
  const tokens: number[] = [];
  let spent = 0;
  let ended: RunResult['ended'] = 'length';
  while (tokens.length < opts.maxTokens) {
    const logits = await nextLogits(tokens);
    const t0 = performance.now();
    const token = constraint.choose(logits, (l) => sampleToken(l, new Map(), p, rng));
    constraint.accept(token);
    spent += performance.now() - t0;
    tokens.push(token);
    if (vocab.eos.includes(token)) {
      ended = 'eos';
      break;
    }
    if (constraint.done) {
      ended = 'done';
      break;
    }
  }
  const text = tokens.filter((t) => !vocab.eos.includes(t)).map((t) => vocab.texts[t]).join('');
  return { text, tokens, done: constraint.done, ended, msPerToken: spent / Math.max(1, tokens.length) };
}

/** Random logits (a seeded normal-ish spread), the shape of a random-weight model's. */
export function randomLogits(size: number, seed: number): (tokens: number[]) => Float32Array {
  const rng = makeRng(seed, 7);
  return () => {
    const l = new Float32Array(size);
    for (let i = 0; i < size; i++) l[i] = (rng() + rng() + rng() - 1.5) * 6;
    return l;
  };
}

/** Greedy or sampled logits from the fixture model, recomputing the whole sequence each step (short runs only). */
export function modelLogits(model: PreTrainedModel, promptIds: number[]): (tokens: number[]) => Promise<Float32Array> {
  const int64 = (values: number[], dims: number[]) => new Tensor('int64', BigInt64Array.from(values, BigInt), dims);
  let past: Record<string, Tensor> | null = null;
  let fed = 0;
  return async (tokens) => {
    const all = [...promptIds, ...tokens];
    const input = all.slice(fed);
    const out = (await model.forward({
      input_ids: int64(input, [1, input.length]),
      attention_mask: int64(new Array(all.length).fill(1), [1, all.length]),
      position_ids: int64(input.map((_, i) => fed + i), [1, input.length]),
      ...(past ? { past_key_values: past } : {}),
    })) as Record<string, Tensor>;
    past = {};
    for (const [name, t] of Object.entries(out)) if (name.startsWith('present')) past[name.replace('present', 'past_key_values')] = t;
    fed = all.length;
    const { data, dims } = out.logits!;
    const V = dims[2]!;
    return (data as Float32Array).slice((input.length - 1) * V, input.length * V);
  };
}

export { createConstraint, vocabularyOf };
