import { env, pipeline } from '@huggingface/transformers';
import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODERATION_LABELS } from '../../fixtures/models/index.mjs';
import { MODERATION_CATEGORIES } from '../../src/protocol/moderations.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, modelsDir, query, startServe, startWorker, until, type Proc } from '../helpers/stack.js';

/**
 * POST /v1/moderations and ai.moderate() (issue 22) through serve and worker processes, with the
 * tiny-moderation fixture (a random-weight multi-label classifier with toxic-bert's labels),
 * checked against the same classifier run in-process by transformers.js' own pipeline.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc;
let client: OpenAI;
let key: string;
let chatOnlyKey: string;

const TEXTS = ['I will find you and hurt you', 'What a lovely afternoon for a walk', 'you are an idiot'];

/** toxic-bert's labels as the built-in mapping reads them (src/protocol/moderations.ts). */
const DEFAULT_MAP: Record<string, string[]> = {
  toxic: ['harassment'],
  severe_toxic: ['harassment'],
  obscene: ['sexual'],
  threat: ['harassment/threatening', 'violence'],
  insult: ['harassment'],
  identity_hate: ['hate'],
};

const post = (path: string, body: unknown, auth: string | null = key) =>
  fetch(`${serve.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(auth ? { authorization: `Bearer ${auth}` } : {}) },
    body: JSON.stringify(body),
  });

/** Each text's label probabilities from transformers.js' text-classification pipeline, in-process. */
async function localScores(texts: string[]): Promise<Record<string, number>[]> {
  env.localModelPath = `${modelsDir()}/`;
  env.allowRemoteModels = false;
  const classifier = await pipeline('text-classification', 'tiny-moderation', { dtype: 'fp32' });
  const out = (await classifier(texts, { top_k: null })) as unknown as { label: string; score: number }[][];
  return out.map((labels) => Object.fromEntries(labels.map((l) => [l.label, l.score])));
}

beforeAll(async () => {
  db = await createTestDatabase();
  const e = { DATABASE_URL: db.url };
  expect((await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat-eos'], e)).code).toBe(0);
  key = (await cli(['keys', 'create', '--name', 'mod'], e)).stdout.trim();
  chatOnlyKey = (await cli(['keys', 'create', '--name', 'chat-only', '--models', 'tiny'], e)).stdout.trim();
  // No --models: the worker picks up the moderation models registered below while it runs.
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: key, maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

describe('moderations', () => {
  it('answers 404 model_not_found naming what to register while no moderation model is registered', async () => {
    for (const body of [{ input: 'hello' }, { input: 'hello', model: 'omni-moderation-latest' }]) {
      const res = await post('/v1/moderations', body);
      expect(res.status).toBe(404);
      const { error } = (await res.json()) as { error: { code: string; message: string; param: string } };
      expect(error.code).toBe('model_not_found');
      expect(error.param).toBe('model');
      expect(error.message).toMatch(/--task moderation/);
    }
    // A model that is not a classifier is refused, not run as one.
    const res = await post('/v1/moderations', { input: 'hello', model: 'tiny' });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('model_not_supported');
  });

  it('registers moderation models while the worker runs; a bad mapping is refused at registration', async () => {
    const e = { DATABASE_URL: db.url };
    const bad = await cli(['models', 'add', 'x', '--task', 'moderation', '--source', 'tiny-moderation', '--moderation-map', '{"labels": {"toxic": ["rudeness"]}}'], e);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/rudeness.*not one of OpenAI's categories/);
    for (const args of [
      ['models', 'add', 'guard', '--task', 'moderation', '--source', 'tiny-moderation', '--alias', 'text-moderation-stable'],
      // Its own mapping and thresholds: threat alone scores violence; violence is flagged from 0
      // (always), hate never (1 is above any sigmoid of these logits), the rest at 0.5.
      ['models', 'add', 'strict', '--task', 'moderation', '--source', 'tiny-moderation', '--moderation-map',
        JSON.stringify({ labels: { threat: ['violence'], identity_hate: ['hate'], toxic: ['harassment'] }, thresholds: { violence: 0, hate: 1 } })],
      // A classifier none of whose labels means anything here (tiny-rerank: LABEL_0).
      ['models', 'add', 'mute', '--task', 'moderation', '--source', 'tiny-rerank'],
    ]) {
      const r = await cli(args, e);
      expect(r.code, r.stderr).toBe(0);
    }
    await until('the worker to serve guard', async () => worker.output().includes('moderation model guard ready'), 60_000);
  });

  it('scores equal transformers.js run in-process, and categories follow the default mapping (openai-node)', async () => {
    const res = await client.moderations.create({ model: 'guard', input: TEXTS });
    expect(res.id).toMatch(/^modr-/);
    expect(res.model).toBe('guard');
    expect(res.results).toHaveLength(TEXTS.length);
    const local = await localScores(TEXTS);
    res.results.forEach((r, i) => {
      expect(Object.keys(r.category_scores)).toEqual([...MODERATION_CATEGORIES]);
      for (const cat of MODERATION_CATEGORIES) {
        const labels = MODERATION_LABELS.filter((l) => DEFAULT_MAP[l]!.includes(cat));
        const expected = labels.length ? Math.max(...labels.map((l) => local[i]![l]!)) : 0;
        expect(Math.abs(r.category_scores[cat] - expected), `${cat} of input ${i}`).toBeLessThan(1e-4);
        expect(r.categories[cat]).toBe(labels.length > 0 && expected >= 0.5);
        // Categories no label covers were not judged, and say so.
        expect(r.category_applied_input_types[cat]).toEqual(labels.length ? ['text'] : []);
      }
      expect(r.flagged).toBe(Object.values(r.categories).some(Boolean));
    });
  });

  it('takes a string, text parts, and OpenAI model names meaning the registered one', async () => {
    const list = await client.moderations.create({ model: 'guard', input: TEXTS });
    const one = await client.moderations.create({ input: TEXTS[1]! });
    expect(one.results).toHaveLength(1);
    expect(one.model).toBe('guard');
    for (const cat of MODERATION_CATEGORIES) expect(one.results[0]!.category_scores[cat]).toBeCloseTo(list.results[1]!.category_scores[cat], 5);
    const parts = await client.moderations.create({ model: 'omni-moderation-latest', input: [{ type: 'text', text: TEXTS[0]! }] });
    expect(parts.results[0]!.category_scores).toEqual(list.results[0]!.category_scores);
    // An alias is answered under the name the client used.
    expect((await client.moderations.create({ model: 'text-moderation-stable', input: 'x' })).model).toBe('text-moderation-stable');
  });

  it("applies a model's own mapping and thresholds", async () => {
    const res = await client.moderations.create({ model: 'strict', input: TEXTS });
    const local = await localScores(TEXTS);
    res.results.forEach((r, i) => {
      expect(r.category_scores.violence).toBeCloseTo(local[i]!.threat!, 4);
      expect(r.categories.violence).toBe(true);
      expect(r.category_scores.hate).toBeCloseTo(local[i]!.identity_hate!, 4);
      expect(r.categories.hate).toBe(false);
      expect(r.categories.harassment).toBe(local[i]!.toxic! >= 0.5);
      expect(r.category_applied_input_types.sexual).toEqual([]);
      expect(r.flagged).toBe(true);
    });
  });

  it('fails requests for a classifier whose labels map to nothing, saying how to map them', async () => {
    const res = await post('/v1/moderations', { model: 'mute', input: 'hello' });
    expect(res.status).toBe(503);
    const { error } = (await res.json()) as { error: { code: string; message: string } };
    expect(error.code).toBe('model_load_failed');
    expect(error.message).toMatch(/LABEL_0.*--moderation-map/);
  });

  it('refuses bad input with a 400 naming the param, and keys outside their scope', async () => {
    const cases: [unknown, string][] = [
      [{ model: 'guard' }, 'input'],
      [{ model: 'guard', input: [] }, 'input'],
      [{ model: 'guard', input: 5 }, 'input'],
      [{ model: 'guard', input: [{ type: 'image_url', image_url: { url: 'https://example.com/a.png' } }] }, 'input[0]'],
      [{ model: 'guard', input: 'x', temperature: 1 }, 'temperature'],
    ];
    for (const [body, param] of cases) {
      const res = await post('/v1/moderations', body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(((await res.json()) as { error: { param: string } }).error.param).toBe(param);
    }
    expect((await post('/v1/moderations', { model: 'guard', input: 'x' }, null)).status).toBe(401);
    expect((await post('/v1/moderations', { model: 'nope', input: 'x' })).status).toBe(404);
    for (const body of [{ model: 'guard', input: 'x' }, { input: 'x' }]) {
      const res = await post('/v1/moderations', body, chatOnlyKey);
      expect(res.status).toBe(403);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('model_not_allowed');
    }
  });

  it('logs each request with its key, input, results and token usage', async () => {
    const res = await post('/v1/moderations', { model: 'guard', input: ['log me', 'and me'] });
    expect(res.status).toBe(200);
    const id = res.headers.get('x-request-id');
    const [row] = await query<{ endpoint: string; model: string; key_id: string; input: unknown; output: { results: unknown[] }; usage: { prompt_tokens: number }; status: string }>(
      db.url,
      'select endpoint, model, key_id::text, input, output, usage, status from ai.requests where id = $1',
      [id],
    );
    const [k] = await query<{ id: string }>(db.url, "select id::text from ai.api_keys where name = 'mod'");
    expect(row).toMatchObject({ endpoint: 'moderations', model: 'guard', key_id: k!.id, status: 'completed', input: { input: ['log me', 'and me'] } });
    expect(row!.output.results).toEqual(((await res.json()) as { results: unknown[] }).results);
    // [CLS] log me [SEP] and [CLS] and me [SEP]
    expect(row!.usage.prompt_tokens).toBe(8);
  });
});

describe('ai.moderate', () => {
  it('returns the same result as the HTTP endpoint, and refuses what is not a moderation model', async () => {
    const sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
    try {
      const http = await client.moderations.create({ model: 'guard', input: TEXTS[0]! });
      const { rows } = await sql.query<{ r: typeof http.results[0] }>("select ai.moderate('guard', $1) as r", [TEXTS[0]]);
      expect(rows[0]!.r).toEqual(http.results[0]);
      const viaAlias = await sql.query<{ f: boolean }>("select (ai.moderate('text-moderation-stable', $1)->>'flagged')::boolean as f", [TEXTS[0]]);
      expect(viaAlias.rows[0]!.f).toBe(http.results[0]!.flagged);
      const notOne = await sql.query("select ai.moderate('tiny', 'x')").catch((e: pg.DatabaseError) => e);
      expect((notOne as pg.DatabaseError).message).toMatch(/not a moderation model/);
      const unknown = await sql.query("select ai.moderate('nope', 'x')").catch((e: pg.DatabaseError) => e);
      expect((unknown as pg.DatabaseError).hint).toMatch(/--task moderation/);
    } finally {
      await sql.end();
    }
  });
});
