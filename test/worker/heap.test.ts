import { describe, expect, it } from 'vitest';
import { heapGrowthPercent } from '../../src/worker/heap.js';

describe('SWITCHYARD_HEAP_GROWTH', () => {
  it('defaults to 100 % (twice the live heap) and takes whole percentages up to 1000', () => {
    expect(heapGrowthPercent({})).toBe(100);
    expect(heapGrowthPercent({ SWITCHYARD_HEAP_GROWTH: ' ' })).toBe(100);
    expect(heapGrowthPercent({ SWITCHYARD_HEAP_GROWTH: '250' })).toBe(250);
    expect(heapGrowthPercent({ SWITCHYARD_HEAP_GROWTH: '0' })).toBe(0);
  });

  it('ignores values V8 would misread (fractions, negatives, words, absurd sizes)', () => {
    for (const bad of ['1.5', '-20', 'lots', '100000']) expect(heapGrowthPercent({ SWITCHYARD_HEAP_GROWTH: bad })).toBe(100);
  });
});
