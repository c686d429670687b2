import { compileValidator, type Schema } from './validate.js';
import { errors } from './errors.js';

/**
 * POST /v1/moderations (issue 22): OpenAI's request and response shapes, and how a registered
 * classifier's label scores become OpenAI's categories (a pure function the worker runs, so that
 * HTTP, the SDK and ai.moderate() answer alike).
 */

/** OpenAI's categories (omni-moderation), in the order its responses list them. */
export const MODERATION_CATEGORIES = [
  'harassment',
  'harassment/threatening',
  'hate',
  'hate/threatening',
  'illicit',
  'illicit/violent',
  'self-harm',
  'self-harm/intent',
  'self-harm/instructions',
  'sexual',
  'sexual/minors',
  'violence',
  'violence/graphic',
] as const;
export type ModerationCategory = (typeof MODERATION_CATEGORIES)[number];

/** Inputs per request: as for embeddings, the worker batches them into model calls. */
export const MAX_MODERATION_INPUTS = 2048;

export interface ModerationRequest {
  input: string | string[] | ({ type: 'text'; text: string } | { type: 'image_url'; image_url: unknown })[];
  model?: string;
}

export const moderationRequestSchema: Schema = {
  type: 'object',
  required: ['input'],
  additionalProperties: false,
  properties: {
    input: {
      anyOf: [
        { type: 'string' },
        { type: 'array', minItems: 1, maxItems: MAX_MODERATION_INPUTS, items: { type: 'string' } },
        {
          type: 'array',
          minItems: 1,
          maxItems: MAX_MODERATION_INPUTS,
          items: {
            type: 'object',
            required: ['type'],
            properties: { type: { enum: ['text', 'image_url'] }, text: { type: 'string' }, image_url: {} },
            additionalProperties: false,
          },
        },
      ],
      'x-expect': `a string, a list of up to ${MAX_MODERATION_INPUTS} strings, or a list of {"type": "text", "text": ...} parts`,
    },
    model: { type: 'string', minLength: 1 },
  },
};

const checkShape = compileValidator<ModerationRequest>(moderationRequestSchema);

/**
 * The request's texts, in order; an image part is a 400 (the classifiers here read text only).
 * NUL and lone surrogates are refused by compileValidator, as for every endpoint.
 */
export function parseModerationRequest(body: unknown): { model: string | undefined; texts: string[] } {
  const req = checkShape(body);
  const texts: string[] = [];
  const list = typeof req.input === 'string' ? [req.input] : req.input;
  list.forEach((item, i) => {
    if (typeof item === 'string') texts.push(item);
    else if (item.type === 'text') {
      if (typeof item.text !== 'string') throw errors.invalid(`input[${i}].text must be a string.`, `input[${i}].text`);
      texts.push(item.text);
    } else throw errors.invalid('Image inputs are not supported: the moderation models served here classify text only.', `input[${i}]`, 'unsupported_input_type');
  });
  return { model: req.model, texts };
}

/**
 * Names a client may send meaning "OpenAI's moderation model": when no model of that name is
 * registered, the request goes to the registered moderation model instead (the SDKs and old
 * applications send these without being asked).
 */
export const isOpenAIModerationName = (name: string): boolean => /^(omni|text)-moderation(-|$)/.test(name);

export interface ModerationResult {
  flagged: boolean;
  categories: Record<ModerationCategory, boolean>;
  category_scores: Record<ModerationCategory, number>;
  /** Per category, the input types it was judged on: `[]` for a category the classifier does not cover. */
  category_applied_input_types: Record<ModerationCategory, ('text' | 'image')[]>;
}

export interface ModerationResponse {
  id: string;
  model: string;
  results: ModerationResult[];
}

/** ai.models.moderation: how a classifier's labels map to OpenAI's categories, and thresholds. */
export interface ModerationMapping {
  /** Label → the categories it scores (a category's score is the highest of its labels'). */
  labels: Record<string, ModerationCategory[]>;
  thresholds: Partial<Record<ModerationCategory, number>>;
  /** For categories without a threshold of their own (default 0.5). */
  threshold: number;
}

/**
 * Labels of well-known moderation classifiers, for models registered without a mapping: the
 * Jigsaw toxicity labels (unitary/toxic-bert and its kind) and the codes of OpenAI's own
 * moderation dataset (KoalaAI/Text-Moderation). A label spelt as a category maps to it.
 */
const KNOWN_LABELS: Record<string, ModerationCategory[]> = {
  toxic: ['harassment'],
  toxicity: ['harassment'],
  severe_toxic: ['harassment'],
  severe_toxicity: ['harassment'],
  obscene: ['sexual'],
  sexual_explicit: ['sexual'],
  threat: ['harassment/threatening', 'violence'],
  insult: ['harassment'],
  identity_hate: ['hate'],
  identity_attack: ['hate'],
  s: ['sexual'],
  h: ['hate'],
  v: ['violence'],
  hr: ['harassment'],
  sh: ['self-harm'],
  s3: ['sexual/minors'],
  h2: ['hate/threatening'],
  v2: ['violence/graphic'],
};

const isCategory = (c: unknown): c is ModerationCategory => (MODERATION_CATEGORIES as readonly unknown[]).includes(c);
const isThreshold = (t: unknown): t is number => typeof t === 'number' && t >= 0 && t <= 1;

/**
 * Checks a registration's mapping (`switchyard models add --moderation-map`); returns what is
 * wrong, or null. Labels are checked against the model only when a worker loads it.
 */
export function moderationMappingProblem(value: unknown): string | null {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return 'it must be a JSON object';
  const v = value as Record<string, unknown>;
  const extra = Object.keys(v).filter((k) => !['labels', 'thresholds', 'threshold'].includes(k));
  if (extra.length) return `unknown key(s) ${extra.join(', ')} (expected labels, thresholds, threshold)`;
  if (v.labels !== undefined) {
    if (!v.labels || typeof v.labels !== 'object' || Array.isArray(v.labels)) return '"labels" must be an object of label → [category, ...]';
    for (const [label, cats] of Object.entries(v.labels)) {
      const list = typeof cats === 'string' ? [cats] : cats;
      if (!Array.isArray(list)) return `labels.${label} must be a category or a list of categories`;
      const bad = list.find((c) => !isCategory(c));
      if (bad !== undefined) return `labels.${label}: ${JSON.stringify(bad)} is not one of OpenAI's categories (${MODERATION_CATEGORIES.join(', ')})`;
    }
  }
  if (v.thresholds !== undefined) {
    if (!v.thresholds || typeof v.thresholds !== 'object' || Array.isArray(v.thresholds)) return '"thresholds" must be an object of category → number';
    for (const [cat, t] of Object.entries(v.thresholds)) {
      if (!isCategory(cat)) return `thresholds: ${JSON.stringify(cat)} is not one of OpenAI's categories`;
      if (!isThreshold(t)) return `thresholds.${cat} must be a number from 0 to 1`;
    }
  }
  if (v.threshold !== undefined && !isThreshold(v.threshold)) return '"threshold" must be a number from 0 to 1';
  return null;
}

/**
 * The mapping a model is served with: its registered one, else the known labels among the
 * model's own. Throws when no label of the model maps to a category (a classifier that would
 * never flag anything must be refused at load, not answer "not flagged" forever).
 */
export function resolveMapping(registered: unknown, modelLabels: string[], modelName: string): ModerationMapping {
  const given = (registered ?? {}) as { labels?: Record<string, ModerationCategory | ModerationCategory[]>; thresholds?: ModerationMapping['thresholds']; threshold?: number };
  const problem = registered == null ? null : moderationMappingProblem(registered);
  if (problem) throw new Error(`The moderation mapping of model '${modelName}' is invalid: ${problem}.`);
  const labels: Record<string, ModerationCategory[]> = {};
  if (given.labels) {
    for (const [label, cats] of Object.entries(given.labels)) labels[label] = typeof cats === 'string' ? [cats] : cats;
    const unknown = Object.keys(labels).filter((l) => !modelLabels.includes(l));
    if (unknown.length) throw new Error(`The moderation mapping of model '${modelName}' names label(s) the model does not have: ${unknown.join(', ')} (its labels: ${modelLabels.join(', ')}).`);
  } else {
    for (const label of modelLabels) {
      const key = label.toLowerCase();
      const cats = KNOWN_LABELS[key] ?? (isCategory(key) ? [key] : isCategory(key.replace(/_/g, '-')) ? [key.replace(/_/g, '-') as ModerationCategory] : null);
      if (cats) labels[label] = cats;
    }
  }
  if (!Object.values(labels).some((c) => c.length > 0)) {
    throw new Error(
      `No label of model '${modelName}' (${modelLabels.join(', ')}) maps to one of OpenAI's moderation categories. ` +
        `Register it with a mapping: switchyard models add ${modelName} --task moderation --source ... --moderation-map '{"labels": {"LABEL": ["harassment"]}}'.`,
    );
  }
  return { labels, thresholds: given.thresholds ?? {}, threshold: given.threshold ?? 0.5 };
}

/**
 * A result with its keys in OpenAI's order: results travel through jsonb (the event row), which
 * keeps keys in an order of its own, and clients that print or diff responses expect OpenAI's.
 */
export function inOpenAIOrder(r: ModerationResult): ModerationResult {
  const pick = <T>(o: Record<ModerationCategory, T>) => Object.fromEntries(MODERATION_CATEGORIES.map((c) => [c, o[c]])) as Record<ModerationCategory, T>;
  return {
    flagged: r.flagged,
    categories: pick(r.categories),
    category_scores: pick(r.category_scores),
    category_applied_input_types: pick(r.category_applied_input_types),
  };
}

/** One input's result from its label scores (`scores[label]`, probabilities in [0, 1]). */
export function toModerationResult(mapping: ModerationMapping, scores: Record<string, number>): ModerationResult {
  const categories = {} as Record<ModerationCategory, boolean>;
  const categoryScores = {} as Record<ModerationCategory, number>;
  const applied = {} as Record<ModerationCategory, ('text' | 'image')[]>;
  for (const cat of MODERATION_CATEGORIES) {
    const from = Object.entries(mapping.labels).filter(([, cats]) => cats.includes(cat)).map(([label]) => scores[label] ?? 0);
    const score = from.length ? Math.max(...from) : 0;
    categoryScores[cat] = score;
    categories[cat] = from.length > 0 && score >= (mapping.thresholds[cat] ?? mapping.threshold);
    applied[cat] = from.length ? ['text'] : [];
  }
  return { flagged: Object.values(categories).some(Boolean), categories, category_scores: categoryScores, category_applied_input_types: applied };
}
