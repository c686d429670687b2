import type pg from 'pg';
import type { LogFn } from '../../log.js';
import type { ErrorBody } from '../../protocol/errors.js';
import { resolveMapping, toModerationResult, type ModerationMapping } from '../../protocol/moderations.js';
import { retryWhileUnavailable } from '../../db/errors.js';
import { toJsonb } from '../../db/jsonb.js';
import { ThreadError } from '../generation/thread-error.js';
import type { ModelSpec } from '../models-source.js';
import type { ModerationHost } from './host.js';
import { BatchClaimer } from '../batch-claimer.js';

export interface ModerationClaimerDeps {
  pool: pg.Pool;
  spec: ModelSpec;
  workerId: string;
  host: ModerationHost;
  /** The model's labels and mapping (moderationLoader: shared by the worker's shifts). */
  load: () => Promise<LoadedModeration>;
  log: { info: LogFn; warn: LogFn; error: LogFn };
}

export interface LoadedModeration {
  /** The model's labels, in logit order. */
  labels: string[];
  mapping: ModerationMapping;
}

/**
 * Loads a moderation model (once; again after a failure) and resolves its label mapping: a model
 * none of whose labels maps to a category fails here, and its requests say why.
 */
export function moderationLoader(host: ModerationHost, spec: ModelSpec): () => Promise<LoadedModeration> {
  let loaded: Promise<LoadedModeration> | null = null;
  return () => {
    if (!loaded) {
      const p = host.load(spec).then((info) => {
        try {
          return { labels: info.labels, mapping: resolveMapping(spec.moderation ?? null, info.labels, spec.name) };
        } catch (err) {
          throw ThreadError.server((err as Error).message, 'model_load_failed', 503);
        }
      });
      p.catch(() => {
        if (loaded === p) loaded = null;
      });
      loaded = p;
    }
    return loaded;
  };
}

/** Requests per claim: a few model calls' worth of single-input requests. */
const CLAIM_LIMIT = 64;

interface Claimed {
  id: string;
  input: unknown;
  attempt: number;
}

interface Outcome {
  id: string;
  attempt: number;
  status: 'completed' | 'failed';
  output: unknown;
  usage: unknown;
  error: ErrorBody | null;
  event: unknown;
}

/** A stored request can outlive the code that stored it: check its shape at run time. */
function readTexts(input: unknown): string[] | null {
  const list = (input as { input?: unknown } | null)?.input;
  return Array.isArray(list) && list.length > 0 && list.every((x) => typeof x === 'string') ? (list as string[]) : null;
}

const failed = (r: Claimed, status: number, error: ErrorBody): Outcome => ({
  id: r.id, attempt: r.attempt, status: 'failed', output: null, usage: null, error, event: { type: 'error', status, error },
});

/**
 * Serves one moderation model's queue: claims queued requests in batches (ai.claim_moderations,
 * FOR UPDATE SKIP LOCKED, so workers share the queue), classifies every text of the batch in one
 * call to the moderation thread, maps label scores to OpenAI's categories with the model's
 * mapping, and finishes the batch in one statement. One batch at a time: a classifier call of a
 * batch is milliseconds, so overlapping the database work (as the embedding claimer does) would
 * buy little.
 */
export class ModerationClaimer extends BatchClaimer<Claimed> {
  constructor(private readonly deps: ModerationClaimerDeps) {
    super(deps, `${deps.spec.name} moderation`);
  }

  protected async claim(): Promise<Claimed[]> {
    const { pool, spec, workerId } = this.deps;
    return (await pool.query<Claimed>('select id::text, input, attempt from ai.claim_moderations($1, $2, $3)', [spec.name, workerId, CLAIM_LIMIT])).rows;
  }

  protected async run(rows: Claimed[]): Promise<void> {
    await this.finish(await this.process(rows));
  }

  private async process(rows: Claimed[]): Promise<Outcome[]> {
    const requests = rows.map((r) => ({ row: r, texts: readTexts(r.input) }));
    const texts = requests.flatMap((r) => r.texts ?? []);
    let model: LoadedModeration;
    let out: { scores: number[][]; tokens: number[] };
    try {
      model = await this.deps.load();
      out = await this.deps.host.classify(this.deps.spec, texts);
    } catch (err) {
      // The model cannot run (not loadable, no usable mapping, its thread died mid-call): every
      // request of the batch fails saying why. Not re-queued: a claim re-takes queued rows without
      // counting their attempts out, so a batch that fails every time would loop.
      const e = ThreadError.from(err);
      return rows.map((r) => failed(r, e.status, e.body));
    }
    let at = 0;
    return requests.map(({ row, texts: own }): Outcome => {
      if (!own) {
        return failed(row, 500, { message: 'Stored request is invalid: input.input is not a list of texts.', type: 'server_error', param: null, code: 'invalid_stored_request' });
      }
      const results = own.map((_, k) => {
        const probs = out.scores[at + k]!;
        return { scores: Object.fromEntries(probs.map((p, i) => [model.labels[i] ?? `LABEL_${i}`, p])), tokens: out.tokens[at + k]! };
      });
      at += own.length;
      const promptTokens = results.reduce((s, r) => s + r.tokens, 0);
      const moderated = results.map((r) => toModerationResult(model.mapping, r.scores));
      return {
        id: row.id,
        attempt: row.attempt,
        status: 'completed',
        output: { results: moderated, label_scores: results.map((r) => r.scores) },
        usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
        error: null,
        event: { type: 'moderated', results: moderated, promptTokens },
      };
    });
  }

  /** Every outcome, its final event and notification, in one statement (ai.finish_request per row). */
  private async finish(outcomes: Outcome[]): Promise<void> {
    await retryWhileUnavailable(() =>
      this.deps.pool.query(
        `select ai.finish_request(d.id, $1, d.attempt, d.status, d.output, d.usage, d.error, null,
                  coalesce((select max(e.seq) + 1 from ai.request_events e where e.request_id = d.id), 0), d.event)
           from unnest($2::uuid[], $3::int[], $4::text[], $5::jsonb[], $6::jsonb[], $7::jsonb[], $8::jsonb[])
             as d(id, attempt, status, output, usage, error, event)`,
        [
          this.deps.workerId,
          outcomes.map((o) => o.id),
          outcomes.map((o) => o.attempt),
          outcomes.map((o) => o.status),
          outcomes.map((o) => toJsonb(o.output)),
          outcomes.map((o) => toJsonb(o.usage)),
          outcomes.map((o) => toJsonb(o.error)),
          outcomes.map((o) => toJsonb(o.event)),
        ],
      ),
    );
  }
}
