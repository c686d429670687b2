/**
 * What constrained decoding costs per token, outside the model: choose() + accept() against a
 * plain draw from the same logits. Logits are random (like the fixture models'), the worst case
 * for the lazy check: the unconstrained draw is rarely allowed, so most steps build the mask.
 *
 *   npx tsx scripts/constrain-cost.ts [tokenizer dir, default .cache/fixture-models/tiny-chat]
 */
import { AutoTokenizer, env } from '@huggingface/transformers';
import path from 'node:path';
import { createConstraint, vocabularyOf, type ConstraintSpec } from '../src/worker/generation/constrain/index.js';
import { compileSchema } from '../src/worker/generation/constrain/schema.js';
import { makeRng, sampleToken, type Sampling } from '../src/worker/generation/sampler.js';
import { HERMES_TOOL_FORMAT } from '../src/protocol/tools.js';

const dir = path.resolve(process.argv[2] ?? '.cache/fixture-models/tiny-chat');
env.localModelPath = `${path.dirname(dir)}/`;
env.allowRemoteModels = false;
const tokenizer = await AutoTokenizer.from_pretrained(path.basename(dir));
let t0 = performance.now();
const vocab = vocabularyOf(tokenizer);
console.log(`vocabulary: ${vocab.size} tokens, built in ${(performance.now() - t0).toFixed(0)} ms`);

const schema = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    age: { type: 'integer' },
    email: { type: ['string', 'null'] },
    tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, maxItems: 3 },
    address: { type: 'object', properties: { city: { type: 'string' }, zip: { type: 'string' } }, required: ['city', 'zip'], additionalProperties: false },
    score: { type: 'number' },
  },
  required: ['name', 'age', 'email', 'tags', 'address', 'score'],
  additionalProperties: false,
};
const specs: [string, Omit<ConstraintSpec, 'maxTokens' | 'lazy'>][] = [
  ['json_schema', { kind: 'json_schema', schema }],
  ['json_object', { kind: 'json_object' }],
  ['tool_calls', { kind: 'tool_calls', format: HERMES_TOOL_FORMAT, tools: [{ name: 'fill', parameters: schema }], parallel: false }],
];
const modes: [string, Sampling][] = [
  ['greedy', { temperature: 0, topP: 1, frequencyPenalty: 0, presencePenalty: 0 }],
  ['t=1', { temperature: 1, topP: 1, frequencyPenalty: 0, presencePenalty: 0 }],
  ['t=0.7 top_p=0.9', { temperature: 0.7, topP: 0.9, frequencyPenalty: 0, presencePenalty: 0 }],
];
const V = vocab.size;
const noise = makeRng(5);
const pool = Array.from({ length: 64 }, () => Float32Array.from({ length: V }, () => (noise() + noise() + noise() - 1.5) * 6));
const maxTokens = compileSchema(schema).min + 60;

for (const [label, base] of specs) {
  for (const [mode, p] of modes) {
    const rng = makeRng(1);
    let plain = 0;
    let constrained = 0;
    let tokens = 0;
    let worst = 0;
    let own = 0;
    for (let run = 0; run < 8; run++) {
      const c = createConstraint({ ...base, maxTokens, lazy: p.temperature === 0 || p.topP >= 1 } as ConstraintSpec, vocab);
      for (let step = 0; step < maxTokens && !c.done; step++) {
        const logits = pool[(run * 7 + step) % pool.length]!;
        t0 = performance.now();
        sampleToken(logits.slice(), new Map(), p, rng);
        plain += performance.now() - t0;
        let inDraw = 0;
        t0 = performance.now();
        const token = c.choose(logits, (l) => {
          const a = performance.now();
          const t = sampleToken(l, new Map(), p, rng);
          inDraw += performance.now() - a;
          return t;
        });
        c.accept(token);
        const dt = performance.now() - t0;
        constrained += dt;
        own += dt - inDraw;
        worst = Math.max(worst, dt - inDraw);
        tokens++;
        if (vocab.eos.includes(token)) break;
      }
    }
    console.log(
      `${label.padEnd(12)} ${mode.padEnd(16)} plain draw ${(plain / tokens).toFixed(2)} ms/token, constrained ${(constrained / tokens).toFixed(2)} ms/token ` +
        `(the constraint's own work ${(own / tokens).toFixed(2)} ms/token, worst step ${worst.toFixed(1)} ms; the rest is the sampler's draws) over ${tokens} tokens`,
    );
  }
}
