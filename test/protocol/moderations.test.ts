import { describe, expect, it } from 'vitest';
import { MODERATION_CATEGORIES, moderationMappingProblem, parseModerationRequest, resolveMapping, toModerationResult } from '../../src/protocol/moderations.js';
import { ApiError } from '../../src/protocol/errors.js';

/** How a classifier's label scores become OpenAI's moderation result (src/protocol/moderations.ts). */
describe('resolveMapping', () => {
  it("reads known classifiers' labels without a registered mapping", () => {
    const jigsaw = resolveMapping(null, ['toxic', 'severe_toxic', 'obscene', 'threat', 'insult', 'identity_hate'], 'm');
    expect(jigsaw.labels.threat).toEqual(['harassment/threatening', 'violence']);
    expect(jigsaw.labels.identity_hate).toEqual(['hate']);
    // OpenAI's own dataset codes (KoalaAI/Text-Moderation), and labels spelt as categories.
    const codes = resolveMapping(null, ['S', 'H', 'V', 'HR', 'SH', 'S3', 'H2', 'V2', 'OK'], 'm');
    expect(codes.labels).toMatchObject({ S: ['sexual'], S3: ['sexual/minors'], V2: ['violence/graphic'] });
    expect(codes.labels.OK).toBeUndefined();
    expect(resolveMapping(null, ['self_harm', 'Hate', 'spam'], 'm').labels).toEqual({ self_harm: ['self-harm'], Hate: ['hate'] });
    expect(codes.threshold).toBe(0.5);
  });

  it('refuses a classifier none of whose labels maps, and a mapping that names labels the model lacks', () => {
    expect(() => resolveMapping(null, ['LABEL_0', 'LABEL_1'], 'm')).toThrow(/LABEL_0, LABEL_1.*--moderation-map/);
    expect(() => resolveMapping({ labels: { nope: ['hate'] } }, ['toxic'], 'm')).toThrow(/does not have: nope/);
    expect(() => resolveMapping({ labels: { toxic: [] } }, ['toxic'], 'm')).toThrow(/maps to one of OpenAI's/);
  });

  it('checks registrations', () => {
    expect(moderationMappingProblem({ labels: { a: 'hate' }, thresholds: { hate: 0.2 }, threshold: 0.7 })).toBeNull();
    expect(moderationMappingProblem([])).toMatch(/JSON object/);
    expect(moderationMappingProblem({ label: {} })).toMatch(/unknown key/);
    expect(moderationMappingProblem({ labels: { a: ['hateful'] } })).toMatch(/"hateful" is not one of/);
    expect(moderationMappingProblem({ thresholds: { hate: 2 } })).toMatch(/from 0 to 1/);
    expect(moderationMappingProblem({ thresholds: { spam: 0.5 } })).toMatch(/not one of OpenAI's categories/);
    expect(moderationMappingProblem({ threshold: '0.5' })).toMatch(/from 0 to 1/);
  });
});

describe('toModerationResult', () => {
  const mapping = resolveMapping({ labels: { a: ['hate', 'violence'], b: ['violence'] }, thresholds: { violence: 0.9 }, threshold: 0.4 }, ['a', 'b'], 'm');

  it('scores a category by its highest label, flags it at its threshold, and marks uncovered categories unjudged', () => {
    const r = toModerationResult(mapping, { a: 0.45, b: 0.3 });
    expect(r.category_scores.hate).toBe(0.45);
    expect(r.category_scores.violence).toBe(0.45);
    expect(r.categories.hate).toBe(true);
    expect(r.categories.violence).toBe(false);
    expect(r.flagged).toBe(true);
    expect(Object.keys(r.categories)).toEqual([...MODERATION_CATEGORIES]);
    expect(r.category_applied_input_types.hate).toEqual(['text']);
    expect(r.category_applied_input_types.sexual).toEqual([]);
    expect(r.category_scores.sexual).toBe(0);
    expect(toModerationResult(mapping, { a: 0.1, b: 0.95 })).toMatchObject({ flagged: true, categories: { violence: true, hate: false } });
    expect(toModerationResult(mapping, { a: 0.1, b: 0.2 }).flagged).toBe(false);
  });
});

describe('parseModerationRequest', () => {
  it('takes a string, strings, or text parts; refuses images and other shapes with the param', () => {
    expect(parseModerationRequest({ input: 'x' })).toEqual({ model: undefined, texts: ['x'] });
    expect(parseModerationRequest({ input: ['a', ''], model: 'm' }).texts).toEqual(['a', '']);
    expect(parseModerationRequest({ input: [{ type: 'text', text: 't' }] }).texts).toEqual(['t']);
    const bad = (body: unknown) => {
      try {
        parseModerationRequest(body);
      } catch (e) {
        return (e as ApiError).param;
      }
      throw new Error('accepted');
    };
    expect(bad({ input: [{ type: 'image_url', image_url: { url: 'x' } }] })).toBe('input[0]');
    expect(bad({ input: [{ type: 'text' }] })).toBe('input[0].text');
    expect(bad({ input: [] })).toBe('input');
    expect(bad({ input: 'x', model: '' })).toBe('model');
  });
});
