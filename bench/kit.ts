/**
 * What every section shares: the row and context types, the inputs (prompts, sentences, request
 * bodies), and small helpers for figures.
 */
import type { LoadedEmbedModel } from '../src/worker/loader.js';
import { makeRng } from '../src/worker/generation/sampler.js';
import { CHAT, type Stack, type StreamResult } from './gateway.js';
import type { InProcessChat, Message } from './inproc.js';
import { median, sleep, type Stat } from './lib.js';

export interface Row {
  /** Stable id for tooling (and the hooks issues 8 and 9 fill in). */
  id: string;
  figure: string;
  unit: string;
  gateway: Stat | null;
  inproc: Stat | null;
  /** Gateway against in-process: a difference (same unit) or a ratio (×). */
  compare: { kind: 'minus' | 'ratio'; value: number; unit: string } | null;
  target: string | null;
  met: boolean | null;
  note?: string;
  /** A figure that could not be taken (e.g. a parameter the gateway refuses). */
  unsupported?: string;
}

export interface SectionResult {
  rows: Row[];
  raw: Record<string, unknown>;
}

export interface Ctx {
  stack: Stack;
  /** The SmolLM2-shaped chat model, in-process. */
  chat: InProcessChat;
  /** The tiny fixture chat model (the gateway's TINY), in-process. */
  tiny: InProcessChat;
  embed: LoadedEmbedModel;
  quick: boolean;
}

// ---------------------------------------------------------------- inputs

const WORDS = ('the of and to in is that for it as with was on be by this are from at or an have not which but they you were his her ' +
  'one all can their there been if more when will would who so light house keeper river stone winter market').split(' ');
/** Realistic short sentences of varied length (5–25 words), unique by tag. */
export const sentence = (i: number, tag: string) =>
  `${Array.from({ length: 5 + ((i * 7) % 21) }, (_, k) => WORDS[(i * 31 + k * 17) % WORDS.length]).join(' ')} ${tag}${i}`;
export const sentences = (n: number, tag: string) => Array.from({ length: n }, (_, i) => sentence(i, tag));

/** A chat prompt of fixed shape (about 40 tokens with the template's system turn); `i` varies the text. */
export const prompt = (i: number): Message[] => [{ role: 'user', content: `Write a long story about lighthouse keeper number ${i} and the winter storm.` }];
/** A short prompt (about 15 tokens): the queue's overhead is measured against as little compute as possible. */
export const shortPrompt = (i: number): Message[] => [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: `Hi ${i}` }];
export const chatBody = (i: number, maxTokens: number, extra: Record<string, unknown> = {}, messages = prompt(i)) => ({
  model: CHAT, messages, max_tokens: maxTokens, temperature: 0, ...extra,
});

export const num = (v: number) => (Number.isFinite(v) ? v.toFixed(Math.abs(v) >= 100 ? 0 : 1) : 'n/a');
export const perSec = (n: number, ms: number) => n / (ms / 1000);
export const minus = (a: Stat, b: Stat, unit = 'ms') => ({ kind: 'minus' as const, value: a.median - b.median, unit });
export const ratio = (a: Stat, b: Stat) => ({ kind: 'ratio' as const, value: a.median / b.median, unit: '×' });
/** The median over rounds of each round's a / b (rounds where either side has no figure are left out of the median, not hidden: their NaN stays in the raw numbers). */
export const roundRatio = (a: number[], b: number[], unit = '×') => {
  const v = a.map((x, i) => x / b[i]!).filter((x) => Number.isFinite(x));
  return { kind: 'ratio' as const, value: v.length ? median(v) : NaN, unit };
};
export const decodeRate = (r: StreamResult) =>
  r.firstTokenAt !== null && r.lastTokenAt !== null && r.completionTokens > 1 ? perSec(r.completionTokens - 1, r.lastTokenAt - r.firstTokenAt) : NaN;
/** Streams that failed: any error, a stall or a missed deadline included (a cancel on purpose is not one). */
export const failed = (rs: StreamResult[]) => rs.filter((r) => r.error !== null);
/** Fails the section on any failed stream: its figure would be meaningless. */
export function assertOk(rs: StreamResult[], what: string) {
  const bad = failed(rs);
  if (bad.length) throw new Error(`${what}: ${bad.length} failed, e.g. ${bad[0]!.error} ${bad[0]!.body ?? ''}`);
}


// ---------------------------------------------------------------- fair rounds

/** Pause between the two sides of a round and between rounds, so one side's tail (GC, flushes, the worker's bookkeeping) does not land on the other's clock. */
export const SETTLE_GAP_MS = 500;

/** A fixed-seed generator (the sampler's): the order of sides is random, and the same in every run. */
export const seeded = (seed: number): (() => number) => makeRng(seed);

/** Runs the gateway side and the in-process side in a random order, with `gapMs` between them. */
export async function bothSides<G, P>(rand: () => number, gateway: () => Promise<G>, inproc: () => Promise<P>, gapMs = SETTLE_GAP_MS): Promise<{ g: G; p: P; gatewayFirst: boolean }> {
  const gatewayFirst = rand() < 0.5;
  if (gatewayFirst) {
    const g = await gateway();
    if (gapMs) await sleep(gapMs);
    return { g, p: await inproc(), gatewayFirst };
  }
  const p = await inproc();
  if (gapMs) await sleep(gapMs);
  return { g: await gateway(), p, gatewayFirst };
}

/** `n` failed of `total`, for a note ('' when none failed). */
export const errorsNote = (n: number, total: number, examples: string[]) =>
  n ? `; ${n} of ${total} failed (${[...new Set(examples)].slice(0, 2).join('; ')}), counted as errors: target missed` : '';
